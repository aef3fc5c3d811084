"""Text-to-image with a token paradigm on re-captioned Fashion-MNIST: the class config of
the paradigm (configs/fmnist_maskgit.py, _mage.py, _ar.py, _var.py: same model, steps and
sampler) conditioned on frozen MiniLM text instead of labels. MaskGIT, MAGE and the
raster AR model read the 32 projected token embeddings as a prefix (padding masked);
VAR cross-attends to them, with the pooled embedding in place of the class embedding.
Caption dropout 0.1 to the null text "" trains the unconditional model for CFG. The
images are encoded in the step by the tokenizer (code files carry no captions). Steps:

  jaxgen train --config configs/fmnist_vqgan.py --workdir runs/vqgan   # VAR: fmnist_msvq
  jaxgen recaption --data fashion_mnist_captions --out data/fmnist_captions
  jaxgen embed-captions --config configs/fmnist_t2i.py --out data/fmnist_minilm
  jaxgen train --config configs/fmnist_token_t2i.py:paradigm=maskgit --workdir runs/mg_t2i
  jaxgen sample --workdir runs/mg_t2i --prompt "a small dark patterned sandal" --num 10
  jaxgen eval --workdir runs/mg_t2i --prompt-following 1000

``arg`` (comma-separated): ``paradigm=maskgit|mage|autoregressive|var``,
``tokenizer=DIR`` (default runs/vqgan, VAR runs/msvq), ``captions=DIR``,
``embeddings=DIR``, ``ratio=R`` (detailed-caption ratio, default 0.5), ``runlocal``.
"""

import common
import fmnist_ar
import fmnist_mage
import fmnist_maskgit
import fmnist_var
from jaxgen.config import parse_arg

CLASS_CONFIGS = {"maskgit": fmnist_maskgit, "mage": fmnist_mage,
                 "autoregressive": fmnist_ar, "var": fmnist_var}


def get_config(arg=None):
  arg = parse_arg(arg)
  paradigm = arg.get("paradigm", "maskgit")
  if paradigm not in CLASS_CONFIGS:
    raise ValueError(f"paradigm={paradigm!r}; use one of {', '.join(CLASS_CONFIGS)}.")
  c = CLASS_CONFIGS[paradigm].get_config("runlocal" if arg.get("runlocal") else None)
  c.tokenizer.workdir = arg.get("tokenizer", "runs/msvq" if paradigm == "var" else "runs/vqgan")
  c.data = common.captioned_data(arg.get("captions", "data/fmnist_captions"),
                                 arg.get("embeddings", "data/fmnist_minilm"),
                                 float(arg.get("ratio", 0.5)), pad=32)
  c.text = common.text_fields("minilm", max_length=32, width=384)
  c.paradigm.label_dropout = 0.1  # caption dropout: p(caption -> null text "")
  if arg.get("runlocal"):
    c.train.batch_size = 8
    c.train.sample_every = 0
  return c
