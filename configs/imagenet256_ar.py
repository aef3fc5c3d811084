"""Raster AR transformer on ImageNet 256x256, for real hardware: a class-conditional
causal transformer (GPT-2 small's shape by default, ``:variant=base``) over the 16x16
codes (1024 entries) of the f16 VQGAN that configs/imagenet256_maskgit.py uses.

  jaxgen train --config configs/imagenet256_tokenizer.py:variant=vqgan --workdir gs://B/vq
  jaxgen tokenize --workdir gs://B/vq --out gs://B/vq_codes
  jaxgen train --config configs/imagenet256_ar.py --workdir gs://B/ar \\
      --config.data.data_dir=gs://B/vq_codes

A starting point, not a reproduction: the optimiser is MaskGIT's ImageNet recipe
(configs/imagenet256_maskgit.py) and nothing here was trained at this scale. Decoding
takes 256 steps (one per token) with a KV cache of 256 positions per layer.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("autoregressive")
  c.data.data_dir = ""
  c.data.source_dataset = "imagenet2012"
  c.model.variant = arg.get("variant", "base")
  c.model.grid_size = (16, 16)
  c.model.codebook_size = 1024
  c.model.attn_impl = "xla"         # "cudnn": fused attention on NVIDIA GPUs (untested here)
  c.train.batch_size = 256
  c.train.num_steps = 1_500_000
  c.train.compute_dtype = "bfloat16"
  c.train.sample_every = 10_000
  c.train.ckpt_every = 5_000
  c.optim.lr = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.96
  c.optim.weight_decay = 0.045
  c.optim.warmup_steps = 5_000
  c.optim.schedule = "cosine"
  c.optim.ema_decay = 0.9999
  c.sample.batch_size = 250
  return c
