"""VAR (next-scale prediction) on Fashion-MNIST: a block-causal adaLN transformer over the
token pyramid (scales 1, 2, 3, 4, 6, 8; 130 tokens of 512 codes) of the multi-scale VQ
tokenizer of configs/fmnist_msvq.py, class-conditional, CPU-sized.

  jaxgen train --config configs/fmnist_msvq.py --workdir runs/msvq
  jaxgen tokenize --workdir runs/msvq --out runs/msvq_codes
  jaxgen train --config configs/fmnist_var.py --workdir runs/var \\
      --config.data.data_dir=runs/msvq_codes
  jaxgen sample --workdir runs/var --num 1000 --out runs/var/samples.npz
  jaxgen eval --workdir runs/var --samples runs/var/samples.npz
  python benchmarks/sampling.py --workdir runs/var --compare runs/maskgit

The transformer has the raster AR and MaskGIT configs' size (4 x 128, ``fmnist_tiny``),
batch and optimiser; VAR's own recipe (lr 1e-4 per 256 examples) is far too slow for a
short run. Sampling: 6 steps (one per scale), VAR's linearly growing guidance to 2.5 at
the last scale and top-p 0.96. Samples decode with the tokenizer that wrote the codes
(tokens.json). ``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("var")
  c.data.data_dir = "runs/msvq_codes"
  c.model.variant = "fmnist_tiny"   # 4 x 128, as fmnist_maskgit.py / fmnist_ar.py
  c.model.scales = (1, 2, 3, 4, 6, 8)
  c.model.codebook_size = 512
  c.model.code_dim = 16
  c.train.batch_size = 32
  c.train.num_steps = 20 if arg.get("runlocal") else 2000
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 500
  c.optim.lr = 4e-4
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999
  c.sample.top_k = 0
  return c
