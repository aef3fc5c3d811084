"""Quickstart: class-conditional rectified flow on Fashion-MNIST, about 13 minutes on
a 2-core CPU.

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
  # Measured here (README table): on a CPU budget, more small steps beat bigger batches
  # or a bigger network, guidance 2.5 beats lower scales, and 10 steps of the multistep
  # AB2 (one network call a step) matched 20 Euler steps (FD 8.0 against 8.4, two seeds).
  c.model = common.ml_collections.ConfigDict(dict(name="unet", variant="tiny"))
  c.train.num_steps = 3000
  c.train.batch_size = 8
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 250
  c.optim.lr = 5e-4
  c.optim.ema_decay = 0.999
  c.sample.steps = 10
  c.sample.solver = "ab2"
  c.sample.cfg_scale = 2.5
  return c
