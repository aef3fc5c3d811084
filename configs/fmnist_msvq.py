"""VAR's multi-scale residual VQ tokenizer on Fashion-MNIST (f4 -> 8x8 feature map,
scales 1,2,3,4,6,8 sharing one 512-entry codebook), CPU-sized. VAR trains on its codes.
Dead codes are restarted from batch features (without it, 77% of the codebook was in use
after 2000 steps: the coarse scales concentrate on few codes).

  jaxgen train --config configs/fmnist_msvq.py --workdir runs/msvq
  jaxgen eval --workdir runs/msvq
  jaxgen tokenize --workdir runs/msvq --out runs/msvq_codes   # (N, 1+4+9+16+36+64) tokens

``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.tokenizer_config()
  c.model = common.ml_collections.ConfigDict(dict(
      name="vqgan", variant="fmnist_tiny", bottleneck="msvq", embed_dim=16,
      codebook_size=512, code_dim=16, scales=(1, 2, 3, 4, 6, 8), num_phi=4, phi_ratio=0.5,
      beta=0.25, l2_normalize=False, restart_dead=True, dead_threshold=1e-3))
  return common.fmnist_tokenizer(c, num_steps=2000, sample_every=500,
                                 runlocal=arg.get("runlocal", False))
