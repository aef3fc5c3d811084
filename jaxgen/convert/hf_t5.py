"""Hugging Face T5 checkpoints (safetensors) -> `jaxgen.models.t5.T5Encoder` parameters.

Reads the encoder of the common layout of ``T5ForConditionalGeneration`` and
``T5EncoderModel`` checkpoints (decoder tensors, if present, are ignored)::

  shared.weight                                              (vocab, d_model)
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight    (out, in)
  encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight  (buckets, heads)
  encoder.block.{i}.layer.0.layer_norm.weight
  encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight
  encoder.block.{i}.layer.1.layer_norm.weight
  encoder.final_layer_norm.weight

``encoder.embed_tokens.weight`` (a tied copy of ``shared.weight``) stands in for
``shared.weight`` when only it is stored.
"""

from __future__ import annotations

import re
from typing import Dict

import jax
import jax.numpy as jnp

from jaxgen.convert import safetensors_io
from jaxgen.models import t5

SHARED = "shared.weight"
TIED_SHARED = "encoder.embed_tokens.weight"
BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def key_map(num_layers: int, shared_key: str = SHARED) -> Dict[tuple, tuple]:
  """Linen path of `T5Encoder` -> (checkpoint key, transpose)."""
  m = {("embedding",): (shared_key, False),
       ("relative_attention_bias",): (BIAS, False),
       ("final_norm", "scale"): ("encoder.final_layer_norm.weight", False)}
  for i in range(num_layers):
    blk, layer = f"block_{i}", f"encoder.block.{i}.layer"
    for n in "qkvo":
      m[(blk, "attention", n, "kernel")] = (f"{layer}.0.SelfAttention.{n}.weight", True)
    m[(blk, "attention_norm", "scale")] = (f"{layer}.0.layer_norm.weight", False)
    for n in ("wi_0", "wi_1", "wo"):
      m[(blk, "mlp", n, "kernel")] = (f"{layer}.1.DenseReluDense.{n}.weight", True)
    m[(blk, "mlp_norm", "scale")] = (f"{layer}.1.layer_norm.weight", False)
  return m


def how_to_get(name: str) -> str:
  """One sentence on where the files of a named size come from."""
  repo = t5.HF_REPOS.get(name, "google/flan-t5-<size>")
  return (f"Download {repo} from Hugging Face on a machine with network access (e.g. "
          f"`huggingface-cli download {repo} --include '*.safetensors*' spiece.model "
          f"--local-dir DIR`), copy DIR here and pass checkpoint=DIR.")


def expected_shapes(config: t5.T5Config):
  """Path -> shape of `T5Encoder` parameters, from ``jax.eval_shape`` (no memory)."""
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
  tree = jax.eval_shape(
      lambda i, m: t5.T5Encoder(config).init(jax.random.key(0), i, m), ids, mask)
  return safetensors_io.flat_shapes(tree["params"])


def guess_size(reader: safetensors_io.CheckpointReader) -> str:
  """A sentence naming the sizes whose shapes the checkpoint has, if any."""
  shared = SHARED if SHARED in reader else TIED_SHARED
  wi = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
  if shared not in reader or wi not in reader:
    return ""
  d_model = reader.shape(shared)[1]
  d_ff = reader.shape(wi)[0]
  blocks = {int(m.group(1)) for k in reader.keys()
            if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
  found = [n for n, c in t5.SIZES.items()
           if (c.d_model, c.d_ff, c.num_layers) == (d_model, d_ff, len(blocks))]
  desc = f"(d_model={d_model}, d_ff={d_ff}, {len(blocks)} blocks)"
  if found:
    return f"The checkpoint {desc} looks like {' / '.join(found)}: pass that name."
  return f"The checkpoint {desc} matches none of the named sizes."


def load_t5_encoder(path: str, config: t5.T5Config, *, name: str,
                    dtype=jnp.float32) -> dict:
  """Reads a T5 encoder checkpoint and checks it against ``config``.

  Args:
    path: directory, ``.safetensors`` file or ``model.safetensors.index.json``.
    config: the sizes the checkpoint must have.
    name: the named size (or any label) for messages.
    dtype: dtype of the returned parameters (bfloat16 halves the memory of xxl).

  Returns:
    ``params`` of `T5Encoder` (the contents of ``{"params": ...}``).
  """
  files = safetensors_io.resolve_safetensors(path, what=f"{name} checkpoint",
                                             how_to_get=how_to_get(name))
  reader = safetensors_io.CheckpointReader(files)
  shared = SHARED if SHARED in reader or TIED_SHARED not in reader else TIED_SHARED
  return safetensors_io.convert_tensors(
      reader, key_map(config.num_layers, shared), expected_shapes(config), model=name,
      owned_prefixes=("encoder.",), ignore=(TIED_SHARED,), hint=guess_size, dtype=dtype)
