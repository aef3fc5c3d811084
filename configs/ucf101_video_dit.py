"""Class-conditional video DiT on UCF-101 clips (16 frames, 64x64 or 128x128 pixels,
101 actions; class-conditional UCF-101 at 16x128x128 is MAGVIT's benchmark setting),
trained with rectified flow, with Latte's training choices (factorised space / time
attention, 16 frames 3 apart, AdamW 1e-4 without weight decay, EMA) but in pixels, not
in a VAE's latents; random horizontal flips. For real hardware; not trained here (no
UCF-101 on this machine).

  jaxgen info --config configs/ucf101_video_dit.py                 # shapes, no data
  jaxgen train --config configs/ucf101_video_dit.py --workdir runs/ucf101_vdit \\
      --config.data.data_dir=D
  jaxgen sample --workdir runs/ucf101_vdit --num 2048 --out runs/ucf101_vdit/s.npz
  jaxgen eval --workdir runs/ucf101_vdit --samples runs/ucf101_vdit/s.npz --fvd  # FVD-2048

Data (``config.data.name="tfds_video"``, jaxgen/data/tfds_video.py): TFDS
``ucf101/ucf101_1_256`` (split 1, frames scaled to 256x256) prepared once as
array_record into ``D`` on a machine with TensorFlow:

  python -c "import tensorflow_datasets as tfds; tfds.builder('ucf101/ucf101_1_256', \\
      data_dir='D', file_format='array_record').download_and_prepare()"

Train clips start where ``(data.seed, index)`` says, test clips in the middle; every
frame is centre-cropped and area-resized (256 -> 64: 4x4 means).

Arguments (``--config configs/ucf101_video_dit.py:size=128,variant=L/4``): ``size``
64 (default) | 128; ``variant`` a named size (default ``B/4``: 768 wide, 12 blocks
(6 spatial + 6 temporal), 4x4 patches: 16x16 tokens a frame at 64, 32x32 at 128, 16
frames of them); ``attention`` factorised (default) | full; ``runlocal`` a small
model, 8-frame 32x32 clips and 10 steps (a smoke test of the wiring on prepared data).
The sampling CFG scale is not tuned.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  size = int(arg.get("size", 64))
  if size not in (64, 128):
    raise ValueError(f"size={size}; use 64 or 128.")
  c = common.base_config()
  c.data = common.section("data", name="tfds_video", pp="flip_lr|scale(-1, 1)",
                          image_size=size, train_split="train", eval_split="test")
  c.data.tfds_name = "ucf101/ucf101_1_256:2.0.0"  # jaxgen.data.tfds_video's fields
  c.data.video_key = "video"
  c.data.label_key = "label"
  c.data.num_frames = 16
  c.data.frame_stride = 3           # Latte's UCF-101 frame interval
  c.data.num_classes = 101
  c.data.seed = 0                   # the train clips' starts
  c.model = common.ml_collections.ConfigDict(dict(
      name="video_dit", variant=arg.get("variant", "B/4"),
      attention=arg.get("attention", "factorised"), temporal_patch=1, learn_sigma=False,
      remat=True, attn_impl="xla"))
  c.paradigm = common.paradigm_section("flow", label_dropout=0.1)
  c.sample = common.sample_section("flow", steps=50, solver="heun", cfg_scale=1.5)
  c.optim.lr = 1e-4                 # Latte: AdamW 1e-4, no weight decay, EMA
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.ema_decay = 0.9999
  c.train.batch_size = 64
  c.train.num_steps = 200_000
  c.train.compute_dtype = "bfloat16"
  c.train.log_every = 100
  c.train.sample_every = 10_000
  c.train.sample_grid = 16
  c.train.ckpt_every = 5_000
  c.mesh = common.section("mesh", data=-1, fsdp=1, context=1, tensor=1)
  if arg.get("runlocal"):
    c.model.variant = "S/4"
    c.data.image_size = 32
    c.data.num_frames = 8
    c.train.batch_size = 4
    c.train.num_steps = 10
    c.train.compute_dtype = "float32"
    c.train.sample_every = 0
  return c
