"""ViT-VQGAN tokenizer on Fashion-MNIST (32x32, patch 4 -> 8x8 codes), CPU-sized.

  jaxgen train --config configs/fmnist_vitvq.py --workdir runs/vitvq
  jaxgen eval --workdir runs/vitvq

ViT-VQGAN's codebook improvements (Yu et al. 2022): factorised codes (look-up in 8
dimensions) and l2-normalised codes and inputs, on a ViT encoder/decoder. ``:runlocal``
shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.tokenizer_config()
  c.model = common.ml_collections.ConfigDict(dict(
      name="vit_vqgan", variant="fmnist_vit_tiny", bottleneck="vq", embed_dim=16,
      codebook_size=512, code_dim=8, beta=0.25, l2_normalize=True, factorized=True,
      ema_codebook=False, restart_dead=True, dead_threshold=1e-3))
  c.paradigm.rec_loss = "l2"         # ViT-VQGAN: logit-laplace/l2 + perceptual + GAN
  return common.fmnist_tokenizer(c, num_steps=5000, sample_every=1000,
                                 runlocal=arg.get("runlocal", False))
