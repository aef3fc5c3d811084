"""Raster-order autoregressive transformer on Fashion-MNIST: a causal transformer over the
8x8 codes (512 entries) of the VQGAN of configs/fmnist_vqgan.py (the same codes as
configs/fmnist_maskgit.py), class-conditional, CPU-sized.

  jaxgen train --config configs/fmnist_vqgan.py --workdir runs/vqgan
  jaxgen tokenize --workdir runs/vqgan --out runs/vqgan_codes
  jaxgen train --config configs/fmnist_ar.py --workdir runs/ar \\
      --config.data.data_dir=runs/vqgan_codes
  jaxgen sample --workdir runs/ar --num 1000 --out runs/ar/samples.npz
  jaxgen eval --workdir runs/ar --samples runs/ar/samples.npz
  python benchmarks/sampling.py --workdir runs/ar --compare runs/maskgit

Same model size, batch, steps and optimiser as fmnist_maskgit.py, for a like-for-like
comparison. Measured here: 4000 steps in 36 min wall on the 2-core CPU shared with two
other jobs (26.6 CPU-minutes; MaskGIT's run of the same size took 12 min uncontended);
1000 samples (cfg 2.0) classifier accuracy 90.3%, FD 14.5 (real test images: 90.4%,
1.98). Samples decode with the tokenizer that wrote the codes (recorded in
tokens.json). ``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("autoregressive")
  c.data.data_dir = "runs/vqgan_codes"
  c.model.variant = "fmnist_tiny"   # 4 x 128, as fmnist_maskgit.py
  c.train.batch_size = 32
  c.train.num_steps = 20 if arg.get("runlocal") else 4000  # as fmnist_maskgit.py
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 500
  c.optim.warmup_steps = 200
  c.sample.cfg_scale = 2.0
  return c
