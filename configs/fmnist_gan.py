"""Class-conditional BigGAN-lite on Fashion-MNIST (32x32), CPU-sized.

  jaxgen train  --config configs/fmnist_gan.py --workdir runs/gan
  jaxgen sample --workdir runs/gan --num 1000 --seed 0 --out runs/gan/samples.npz
  jaxgen eval   --workdir runs/gan --samples runs/gan/samples.npz

Generator with conditional GroupNorm, projection discriminator, non-saturating loss
with R1 (gamma 1), Adam(0, 0.99) at 2e-4 (G) / 4e-4 (D), batch 16, generator EMA 0.999.
Chosen by measurement (the README's GAN section): 1292 s on a 2-core CPU shared with
another training run, about 14 minutes alone; FD 12.9, accuracy 86.5%.
``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.gan_config()
  c.model.variant = "tiny"
  c.paradigm.loss = "non_saturating"
  c.paradigm.r1_gamma = 1.0
  # Lazy R1 (r1_every > 1) puts R1's backward convolutions under lax.cond, which XLA's
  # CPU backend runs 20-60x slower than outside control flow: on a CPU, R1 every step
  # costs less than R1 every 16th.
  c.paradigm.r1_every = 1
  c.optim.lr = 2e-4
  c.paradigm.disc_lr_ratio = 2.0
  c.train.batch_size = 16
  c.train.num_steps = 1900
  c.train.log_every = 50
  c.train.sample_every = 950
  c.train.sample_grid = 100
  c.train.ckpt_every = 500
  if arg.get("runlocal"):
    c.model.update(dict(variant=None, latent_dim=16, embed_dim=8, g_channels=(16, 16, 8),
                        d_channels=(8, 16, 16)))
    c.train.batch_size = 8
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.sample_every = 10
    c.train.ckpt_every = 10
  return c
