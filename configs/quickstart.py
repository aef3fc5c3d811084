"""Quickstart: class-conditional rectified flow on Fashion-MNIST, ~12 minutes on a
2-core CPU.

  jaxgen train --config configs/quickstart.py --workdir runs/quickstart
  jaxgen sample --workdir runs/quickstart --num 1000 --out runs/quickstart/samples.npz
  jaxgen eval --workdir runs/quickstart --samples runs/quickstart/samples.npz

The backbone, size, batch, learning rate, EMA, time sampling, solver and guidance
were chosen by measurement (see the README's quickstart table).
"""

import common


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = common.ml_collections.ConfigDict(dict(name="unet", variant="small"))
  c.train.num_steps = 1500
  c.train.batch_size = 32
  c.train.sample_every = 500
  c.train.ckpt_every = 250
  c.optim.lr = 3e-4
  c.optim.ema_decay = 0.999
  c.sample.steps = 20
  c.sample.solver = "heun"
  c.sample.cfg_scale = 1.5
  return c
