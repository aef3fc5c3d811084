"""Hugging Face BERT checkpoints (safetensors) -> `jaxgen.models.minilm.BertEncoder`.

The ``BertModel`` layout (optionally under a ``bert.`` prefix, as in task models)::

  embeddings.{word,position,token_type}_embeddings.weight, embeddings.LayerNorm.{weight,bias}
  encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}
  encoder.layer.{i}.attention.output.dense.{weight,bias}, ...attention.output.LayerNorm.*
  encoder.layer.{i}.intermediate.dense.*, encoder.layer.{i}.output.dense.*,
  encoder.layer.{i}.output.LayerNorm.*

``pooler.*`` and ``embeddings.position_ids`` are not used.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from jaxgen.convert import safetensors_io
from jaxgen.models import minilm


def key_map(num_layers: int, prefix: str = "") -> Dict[tuple, tuple]:
  """Linen path of `BertEncoder` -> (checkpoint key, transpose)."""
  e = f"{prefix}embeddings"
  m = {("word_embeddings",): (f"{e}.word_embeddings.weight", False),
       ("position_embeddings",): (f"{e}.position_embeddings.weight", False),
       ("token_type_embeddings",): (f"{e}.token_type_embeddings.weight", False),
       ("embeddings_norm", "ln", "scale"): (f"{e}.LayerNorm.weight", False),
       ("embeddings_norm", "ln", "bias"): (f"{e}.LayerNorm.bias", False)}
  for i in range(num_layers):
    src, dst = f"{prefix}encoder.layer.{i}", f"layer_{i}"
    linears = {"query": "attention.self.query", "key": "attention.self.key",
               "value": "attention.self.value", "attention_out": "attention.output.dense",
               "intermediate": "intermediate.dense", "output": "output.dense"}
    for ours, theirs in linears.items():
      m[(dst, ours, "kernel")] = (f"{src}.{theirs}.weight", True)
      m[(dst, ours, "bias")] = (f"{src}.{theirs}.bias", False)
    for ours, theirs in (("attention_norm", "attention.output.LayerNorm"),
                         ("output_norm", "output.LayerNorm")):
      m[(dst, ours, "ln", "scale")] = (f"{src}.{theirs}.weight", False)
      m[(dst, ours, "ln", "bias")] = (f"{src}.{theirs}.bias", False)
  return m


def expected_shapes(config: minilm.BertConfig):
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
  tree = jax.eval_shape(
      lambda i, m: minilm.BertEncoder(config).init(jax.random.key(0), i, m), ids, mask)
  return safetensors_io.flat_shapes(tree["params"])


def load_bert(path: str, config: minilm.BertConfig, *, name: str, how_to_get: str,
              dtype=jnp.float32) -> dict:
  """Reads a BERT checkpoint, checked against ``config``; returns `BertEncoder` params."""
  files = safetensors_io.resolve_safetensors(path, what=f"{name} checkpoint",
                                             how_to_get=how_to_get)
  reader = safetensors_io.CheckpointReader(files)
  prefix = "bert." if "bert.embeddings.word_embeddings.weight" in reader else ""
  return safetensors_io.convert_tensors(
      reader, key_map(config.num_hidden_layers, prefix), expected_shapes(config),
      model=name, owned_prefixes=(f"{prefix}encoder.", f"{prefix}embeddings."),
      ignore=(f"{prefix}embeddings.position_ids",), dtype=dtype)
