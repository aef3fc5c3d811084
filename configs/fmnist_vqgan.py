"""VQGAN tokenizer on Fashion-MNIST (32x32, f4 -> 8x8 codes, 512 entries), CPU-sized.

  jaxgen train --config configs/fmnist_vqgan.py --workdir runs/vqgan
  jaxgen eval --workdir runs/vqgan                      # PSNR, SSIM, rFD, codebook usage
  jaxgen tokenize --workdir runs/vqgan --out runs/vqgan_codes

taming-transformers' recipe scaled down: L1 + perceptual (a Fashion-MNIST feature CNN
in place of LPIPS, trained with another seed than the evaluation's) + VQ losses, a
PatchGAN with hinge loss and the adaptive weight switched on part-way. ``:runlocal``
shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.tokenizer_config()
  c.model = common.ml_collections.ConfigDict(dict(
      name="vqgan", variant="fmnist_tiny", bottleneck="vq", embed_dim=16,
      codebook_size=512, code_dim=16, beta=0.25, l2_normalize=True, factorized=False,
      ema_codebook=False, restart_dead=True, dead_threshold=1e-3))
  c.paradigm.disc_weight = 0.1
  c.paradigm.disc_start = 900
  c.paradigm.disc_channels = 32
  c.paradigm.disc_layers = 2
  common.fmnist_tokenizer(c, num_steps=1800, sample_every=600,
                          runlocal=arg.get("runlocal", False))
  if arg.get("runlocal"):
    c.paradigm.disc_start = 10
  return c
