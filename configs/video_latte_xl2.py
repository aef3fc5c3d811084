"""Latte-XL/2 (Ma et al. 2024): the video DiT at paper scale, class-conditional over
the latents of a frozen KL-VAE f8 of 16-frame 256x256 videos, (16, 32, 32, 4) (Latte
encodes each frame with SD's VAE; a causal video VAE gives (T', 32, 32, z) the same
way), with Latte's factorised attention (14 spatial + 14 temporal blocks), learned
variance and DDPM (``:objective=flow``: rectified flow).

For real hardware: ``jaxgen info --config configs/video_latte_xl2.py`` gives its
parameters and FLOPs without data. A run needs the latents, written by ``jaxgen
tokenize`` of the video tokenizer run (``--config.data.data_dir``), whose
``tokens.json`` names the classes (here, without it: ``source_dataset``'s, Moving
Fashion-MNIST's 10; UCF-101 has 101, 91 more rows of 1152 in the class table).
``:context=k`` turns it into frame prediction from k given latent frames;
``:attention=full`` into full spacetime attention (8192 tokens: shard them with
``--config.mesh.context``).
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.base_config()
  c.data = common.ml_collections.ConfigDict(dict(
      name="tokens", data_dir="", source_dataset="moving_fashion_mnist",
      code_shape=(16, 32, 32, 4), pp="", train_split="train", eval_split="test"))
  c.tokenizer = common.tokenizer_section()  # "" = the KL-VAE that wrote the latents
  c.model = common.ml_collections.ConfigDict(dict(
      name="video_dit", variant=arg.get("variant", "XL/2"),
      attention=arg.get("attention", "factorised"), temporal_patch=1, learn_sigma=True,
      remat=True, attn_impl="xla"))
  c.paradigm = common.diffusion_paradigm(schedule="linear", num_timesteps=1000,
                                         prediction="eps", vlb_weight=1.0,
                                         label_dropout=0.1)
  c.sample = common.sample_section("diffusion", steps=250, solver="ddpm", cfg_scale=7.0)
  context = int(arg.get("context", 0))
  if context:
    c.paradigm.context_frames = context
    c.paradigm.context_dropout = True
  if arg.get("objective", "ddpm") == "flow":
    c.paradigm = common.paradigm_section("flow", label_dropout=0.1,
                                         context_frames=c.paradigm.context_frames,
                                         context_dropout=c.paradigm.context_dropout)
    c.sample = common.sample_section("flow", steps=50, solver="heun", cfg_scale=7.0)
    c.model.learn_sigma = False
  c.optim.lr = 1e-4                 # Latte: AdamW 1e-4, no weight decay, EMA
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.ema_decay = 0.9999
  c.train.batch_size = 5 * 8        # Latte: 5 videos per GPU
  c.train.num_steps = 150_000
  c.train.compute_dtype = "bfloat16"
  c.train.sample_every = 10_000
  c.train.sample_grid = 16
  c.train.ckpt_every = 5_000
  c.mesh = common.section("mesh", data=-1, fsdp=1, context=1, tensor=1)
  return c
