"""MAGE on Fashion-MNIST: masked generative encoder over the 8x8 codes (512 entries)
of the VQGAN of configs/fmnist_vqgan.py; generates (class-conditional, with the null
class for guidance) and learns a representation measured by a linear probe.

  jaxgen tokenize --workdir runs/vqgan --out runs/vqgan_codes
  jaxgen train --config configs/fmnist_mage.py --workdir runs/mage \\
      --config.data.data_dir=runs/vqgan_codes
  jaxgen sample --workdir runs/mage --num 1000 --out runs/mage/samples.npz
  jaxgen eval --workdir runs/mage --samples runs/mage/samples.npz
  jaxgen eval --workdir runs/mage --linear-probe

``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("mage")
  c.data.data_dir = "runs/vqgan_codes"
  c.model.variant = "fmnist_tiny"   # encoder 4 x 128, decoder 2 x 128
  c.train.batch_size = 32
  c.train.num_steps = 20 if arg.get("runlocal") else 4000
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 500
  c.optim.warmup_steps = 200
  c.sample.choice_temperature = 6.0  # MAGE's generation default
  c.sample.cfg_scale = 2.0
  c.sample.cfg_schedule = "linear"
  return c
