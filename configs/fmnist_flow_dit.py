"""Class-conditional rectified flow with a DiT on Fashion-MNIST: the longer run (about
an hour on a 2-core CPU) for better figures than the quickstart.

  jaxgen train --config configs/fmnist_flow_dit.py --workdir runs/fmnist_dit

``:variant=...`` picks the DiT size by name (hidden/depth/heads as "WxDxH", patch as
"/P"): the default "256x8x4/4" is 256 wide, 8 blocks, 4 heads, patch 4 (64 tokens).
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.base_config()
  c.model = common.sized_dit(arg.get("variant", "256x8x4/4"))
  c.train.num_steps = 6000
  c.train.batch_size = 32
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 500
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999
  c.sample.steps = 10
  c.sample.solver = "heun"
  c.sample.cfg_scale = 1.5
  return c
