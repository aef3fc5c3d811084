"""MaskGIT on Fashion-MNIST: a bidirectional transformer over the 8x8 codes (512
entries) of the VQGAN of configs/fmnist_vqgan.py, class-conditional, CPU-sized.

  jaxgen train --config configs/fmnist_vqgan.py --workdir runs/vqgan
  jaxgen tokenize --workdir runs/vqgan --out runs/vqgan_codes
  jaxgen train --config configs/fmnist_maskgit.py --workdir runs/maskgit \\
      --config.data.data_dir=runs/vqgan_codes
  jaxgen sample --workdir runs/maskgit --num 1000 --out runs/maskgit/samples.npz
  jaxgen eval --workdir runs/maskgit --samples runs/maskgit/samples.npz

Samples decode with the tokenizer that wrote the codes (recorded in tokens.json).
``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("maskgit")
  c.data.data_dir = "runs/vqgan_codes"
  c.model.variant = "fmnist_tiny"   # 4 x 128: fmnist_small (6 x 256) is 4x slower here
  c.train.batch_size = 32
  c.train.num_steps = 20 if arg.get("runlocal") else 4000
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 500
  c.optim.warmup_steps = 200
  c.sample.cfg_scale = 2.0
  c.sample.cfg_schedule = "linear"
  return c
