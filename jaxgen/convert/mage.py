"""The official MAGE checkpoints (LTH14/mage) as jaxgen MAGE parameters.

``mage-vitb-1600.pth`` / ``mage-vitl-1600.pth`` hold ``{"model": state_dict}`` of
``models_mage.MaskedGenerativeEncoderViT``: a BERT-style token embedding over the
VQGAN's codes, 1000 class rows and [MASK] (the buffer token is the "fake class" row),
the ViT encoder with token dropping, the MAE-style decoder and the MLM head with its
bias. jaxgen's MAGE in the official layout (`jaxgen.models.mage.OFFICIAL_LAYOUT`, the
named sizes ``vit_base`` / ``vit_large``) holds the same tensors. Every tensor is
checked before anything is loaded: a missing key, one jaxgen has no place for, or a
shape mismatch is an error naming the key and both shapes. Known and not used by the
model (so not loaded): MAE leftovers the official forward never reads (``cls_token``,
``pos_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_pred``,
``patch_embed``) and the ``position_ids`` buffer; the ``vqgan.*`` weights, if a
checkpoint holds them, are the tokenizer's (`jaxgen.convert.mage_vq`, ``--from
mage-vq``), not this model's. Outputs (training forward with a given token drop and mask, the
generator's forward, the linear-probe features) equal the official model's (tested on a
small model the official code built: ``tests/data/make_mage_reference.py``).

  fields, params = load_mage("mage-vitb-1600.pth")   # fields: config.model of it
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import registry
from jaxgen.convert import dit as dit_convert
from jaxgen.convert import safetensors_io, torch_pickle
from jaxgen.models import mage as mage_model

# Heads of the official sizes (not stored in a state dict), by encoder width:
# (encoder heads, decoder heads) of mage_vit_base_patch16 / mage_vit_large_patch16.
OFFICIAL_HEADS = {768: (12, 16), 1024: (16, 16)}
# models_mage.py: vocab_size = codebook_size + 1000 + 1
VOCAB_CLASSES = mage_model.OFFICIAL_LAYOUT["vocab_classes"]
IGNORED = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed",
           "decoder_pred.weight", "decoder_pred.bias", "patch_embed.proj.weight",
           "patch_embed.proj.bias", "token_emb.position_ids")
OWNED = ("token_emb.", "blocks.", "norm.", "decoder_", "mlm_layer.", "cls_token",
         "pos_embed", "mask_token", "patch_embed.")
# (1, N, D) / (1, 1, V) parameters of the checkpoint stored by jaxgen as (N, D) / (V,)
# (shape errors name the squeezed shapes)
_SQUEEZED = {"decoder_pos_embed_learned": 2, "mlm_layer.bias": 1}


def key_map(depth: int, decoder_depth: int) -> safetensors_io.KeyMap:
  """jaxgen MAGE parameter path -> (official key, layout)."""
  m = {("token_embedding",): ("token_emb.word_embeddings.weight", False),
       ("position_embedding",): ("token_emb.position_embeddings.weight", False),
       ("decoder_position_embedding",): ("decoder_pos_embed_learned", False),
       ("head", "bias"): ("mlm_layer.bias", False)}

  def dense(path, key):
    m[path + ("Dense_0", "kernel")] = (key + ".weight", True)
    m[path + ("Dense_0", "bias")] = (key + ".bias", False)

  def norm(path, key):
    m[path + ("LayerNorm_0", "scale")] = (key + ".weight", False)
    m[path + ("LayerNorm_0", "bias")] = (key + ".bias", False)

  def transformer(ours, theirs, n, final):
    for i in range(n):
      for a, b in (("attn/qkv", "attn.qkv"), ("attn/proj", "attn.proj"),
                   ("mlp/fc1", "mlp.fc1"), ("mlp/fc2", "mlp.fc2")):
        dense((ours, f"block_{i}") + tuple(a.split("/")), f"{theirs}.{i}.{b}")
      for a in ("norm1", "norm2"):
        norm((ours, f"block_{i}", a), f"{theirs}.{i}.{a}")
    norm((ours, "norm"), final)

  norm(("embedding_norm",), "token_emb.LayerNorm")
  transformer("encoder", "blocks", depth, "norm")
  dense(("decoder_embed",), "decoder_embed")
  transformer("decoder", "decoder_blocks", decoder_depth, "decoder_norm")
  dense(("head", "dense"), "mlm_layer.fc")
  norm(("head", "norm"), "mlm_layer.ln")
  return m


def _depth(state, prefix: str) -> int:
  return 1 + max((int(m.group(1)) for k in state
                  for m in [re.match(re.escape(prefix) + r"\.(\d+)\.", k)] if m), default=-1)


def infer_fields(state: Dict[str, np.ndarray], source: str, num_heads: Optional[int] = None,
                 decoder_num_heads: Optional[int] = None) -> Dict[str, Any]:
  """``config.model`` of the MAGE a state dict holds: sizes from the tensors' shapes
  (the codebook from the vocabulary's rows, the token grid from the decoder's
  positions), the heads from the official sizes unless given; ``variant`` names the
  official size it is (else None), every field is given explicitly."""
  need = ("token_emb.word_embeddings.weight", "decoder_embed.weight",
          "decoder_pos_embed_learned", "blocks.0.mlp.fc1.weight",
          "decoder_blocks.0.mlp.fc1.weight")
  missing = [k for k in need if k not in state]
  if missing:
    raise ValueError(f"{source} is not an official MAGE checkpoint: it has no "
                     f"{', '.join(missing)}.")
  rows, width = state["token_emb.word_embeddings.weight"].shape
  codebook = int(rows) - VOCAB_CLASSES - 1
  if codebook < 1:
    raise ValueError(f"{source}: token_emb.word_embeddings.weight has {rows} rows; the "
                     f"official vocabulary is codebook + {VOCAB_CLASSES} classes + [MASK].")
  dec_width = int(state["decoder_embed.weight"].shape[0])
  num_tokens = int(np.prod(state["decoder_pos_embed_learned"].shape[:-1])) - 1
  side = int(round(math.sqrt(max(num_tokens, 0))))
  if side * side != num_tokens:
    raise ValueError(f"{source}: decoder_pos_embed_learned has shape "
                     f"{tuple(state['decoder_pos_embed_learned'].shape)}: not 1 + a square "
                     "grid of tokens.")
  mlp = state["blocks.0.mlp.fc1.weight"].shape[0] / width
  dec_mlp = state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dec_width
  if mlp != dec_mlp:
    raise ValueError(f"{source}: MLP ratio {mlp} in the encoder, {dec_mlp} in the decoder; "
                     "MAGE shares one.")
  if num_heads is None or decoder_num_heads is None:
    if width not in OFFICIAL_HEADS:
      raise ValueError(f"{source}: width {width} is none of the official MAGE sizes "
                       f"({', '.join(map(str, OFFICIAL_HEADS))}); give the numbers of "
                       "attention heads (--num-heads, --decoder-num-heads).")
    heads, dec_heads = OFFICIAL_HEADS[int(width)]
    num_heads = heads if num_heads is None else num_heads
    decoder_num_heads = dec_heads if decoder_num_heads is None else decoder_num_heads
  sizes = (_depth(state, "blocks"), int(width), int(num_heads),
           _depth(state, "decoder_blocks"), dec_width, int(decoder_num_heads))
  variant = next((name for name in mage_model.VARIANT_LAYOUT
                  if mage_model.SIZES[name] == sizes and mlp == 4.0), None)
  return dict(name="mage", variant=variant, depth=sizes[0], hidden_size=sizes[1],
              num_heads=sizes[2], decoder_depth=sizes[3], decoder_hidden_size=sizes[4],
              decoder_num_heads=sizes[5], mlp_ratio=float(mlp),
              grid_size=(side, side), codebook_size=codebook, buffer_size=1, dropout=0.1,
              attn_impl="xla", **mage_model.OFFICIAL_LAYOUT)


def build_module(fields: Dict[str, Any]) -> mage_model.MAGE:
  """jaxgen's MAGE for ``fields`` (as `infer_fields` returns them)."""
  cfg = ml_collections.ConfigDict({k: v for k, v in fields.items()
                                   if k not in ("grid_size", "codebook_size")})
  return registry.MODELS.get("mage")(
      cfg, num_tokens=int(np.prod(fields["grid_size"])),
      codebook_size=fields["codebook_size"], num_classes=VOCAB_CLASSES)


def expected_shapes(fields: Dict[str, Any]):
  """Path -> shape of the parameters of the MAGE of ``fields`` (abstract: nothing is
  computed; remembered per fields, as tracing the model takes a second)."""
  return dict(_expected_shapes(tuple(sorted(fields.items()))))


@functools.lru_cache(maxsize=8)
def _expected_shapes(items):
  module = build_module(dict(items))
  n = module.num_tokens
  return tuple(safetensors_io.flat_shapes(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, n), jnp.int32),
                          jnp.zeros((1,), jnp.int32)))["params"]).items())


def load_mage(path: str, num_heads: Optional[int] = None,
              decoder_num_heads: Optional[int] = None
              ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of an official MAGE checkpoint: ``config.model`` of it
  (`infer_fields`) and jaxgen MAGE parameters (float32) equal to its weights."""
  state = dict(dit_convert.select_weights(torch_pickle.read_state_dict(path)))
  for key, ndim in _SQUEEZED.items():
    while (isinstance(state.get(key), np.ndarray) and state[key].ndim > ndim
           and state[key].shape[0] == 1):
      state[key] = state[key][0]
  fields = infer_fields(state, path, num_heads, decoder_num_heads)
  name = (f"MAGE (width {fields['hidden_size']}, depth {fields['depth']}, decoder "
          f"{fields['decoder_depth']} x {fields['decoder_hidden_size']})")
  params = safetensors_io.convert_tensors(
      torch_pickle.StateDictReader(state, path),
      key_map(fields["depth"], fields["decoder_depth"]), expected_shapes(fields),
      model=name, owned_prefixes=OWNED, ignore=IGNORED)
  return fields, params
