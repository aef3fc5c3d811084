"""The official DiT checkpoints (facebookresearch/DiT) as jaxgen DiT parameters.

``DiT-XL-2-256x256.pt`` and ``DiT-XL-2-512x512.pt`` are bare state dicts (the EMA
weights); a training checkpoint holds ``{"model", "ema", "opt", "args"}`` (the EMA
weights are taken; its ``args`` object is refused by the restricted unpickler, so
save ``checkpoint["ema"]`` alone to convert one). Every tensor is checked against
jaxgen's DiT before anything is loaded: a missing key, one jaxgen has no place for,
or a shape mismatch is an error naming the key and both shapes; the fixed sin-cos
position table must equal jaxgen's. Outputs equal the official model's (tested on a
small model the official code built: ``tests/data/make_dit_forward_reference.py``).

  fields, params = load_dit("DiT-XL-2-256x256.pt")   # fields: config.model of it
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import registry
from jaxgen.convert import safetensors_io, torch_pickle
from jaxgen.nn import layers

# Heads of the official sizes (not stored in a state dict): S, B, L, XL by width.
OFFICIAL_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
_CONV = (2, 3, 1, 0)  # torch (out, in, kh, kw) -> Linen (kh, kw, in, out)


def key_map(depth: int) -> safetensors_io.KeyMap:
  """jaxgen DiT parameter path -> (official key, layout)."""
  m = {("x_embedder", "Conv_0", "kernel"): ("x_embedder.proj.weight", _CONV),
       ("x_embedder", "Conv_0", "bias"): ("x_embedder.proj.bias", False),
       ("y_embedder", "embedding"): ("y_embedder.embedding_table.weight", False)}

  def dense(path, key):
    m[path + ("Dense_0", "kernel")] = (key + ".weight", True)
    m[path + ("Dense_0", "bias")] = (key + ".bias", False)

  dense(("t_embedder", "mlp_in"), "t_embedder.mlp.0")
  dense(("t_embedder", "mlp_out"), "t_embedder.mlp.2")
  for i in range(depth):
    for ours, theirs in (("attn/qkv", "attn.qkv"), ("attn/proj", "attn.proj"),
                         ("mlp/fc1", "mlp.fc1"), ("mlp/fc2", "mlp.fc2"),
                         ("adaLN_modulation", "adaLN_modulation.1")):
      dense((f"blocks_{i}",) + tuple(ours.split("/")), f"blocks.{i}.{theirs}")
  dense(("final_layer", "linear"), "final_layer.linear")
  dense(("final_layer", "adaLN_modulation"), "final_layer.adaLN_modulation.1")
  return m


def select_weights(obj: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """The model weights of a checkpoint: a training checkpoint's ``ema`` (else its
  ``model``), or the state dict itself."""
  for key in ("ema", "model"):
    if isinstance(obj.get(key), dict):
      return obj[key]
  return obj


def infer_fields(state: Dict[str, np.ndarray], source: str,
                 num_heads: Optional[int] = None) -> Dict[str, Any]:
  """``config.model`` of the DiT a state dict holds (and its input size): sizes from
  the tensors' shapes, the heads from the official sizes unless ``num_heads`` is
  given."""
  need = ("x_embedder.proj.weight", "final_layer.linear.weight",
          "y_embedder.embedding_table.weight", "pos_embed")
  missing = [k for k in need if k not in state]
  if missing:
    raise ValueError(f"{source} is not an official DiT checkpoint: it has no "
                     f"{', '.join(missing)}.")
  width, channels, p, _ = state["x_embedder.proj.weight"].shape
  depth = 1 + max((int(m.group(1)) for k in state
                   for m in [re.match(r"blocks\.(\d+)\.", k)] if m), default=-1)
  out = state["final_layer.linear.weight"].shape[0] // (p * p)
  if num_heads is None:
    if width not in OFFICIAL_HEADS:
      raise ValueError(f"{source}: width {width} is none of the official DiT sizes "
                       f"({', '.join(map(str, OFFICIAL_HEADS))}); give the number of "
                       "attention heads.")
    num_heads = OFFICIAL_HEADS[width]
  grid = int(round(state["pos_embed"].shape[1] ** 0.5))
  mlp = state["blocks.0.mlp.fc1.weight"].shape[0] / width if depth else 4.0
  return dict(name="dit", variant=None, hidden_size=int(width), depth=int(depth),
              num_heads=int(num_heads), patch_size=int(p), mlp_ratio=float(mlp),
              learn_sigma=out == 2 * channels, input_size=grid * int(p),
              in_channels=int(channels),
              num_classes=int(state["y_embedder.embedding_table.weight"].shape[0]) - 1)


def load_dit(path: str, num_heads: Optional[int] = None
             ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of an official DiT checkpoint: the model's fields
  (`infer_fields`: config.model plus ``input_size``, ``in_channels``,
  ``num_classes``) and jaxgen DiT parameters (float32) equal to its weights."""
  state = select_weights(torch_pickle.read_state_dict(path))
  fields = infer_fields(state, path, num_heads)
  module = build_module(fields)
  s, c = fields["input_size"], fields["in_channels"]
  expected = safetensors_io.flat_shapes(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, c)), jnp.zeros((1,)),
                          jnp.zeros((1,), jnp.int32)))["params"])
  name = f"DiT (width {fields['hidden_size']}, depth {fields['depth']})"
  params = safetensors_io.convert_tensors(
      torch_pickle.StateDictReader(state, path), key_map(fields["depth"]), expected,
      model=name, owned_prefixes=("x_embedder", "t_embedder", "y_embedder", "blocks",
                                  "final_layer", "pos_embed"), ignore=("pos_embed",))
  g = s // fields["patch_size"]
  table = layers.sincos_2d(fields["hidden_size"], g, g)
  if not np.allclose(state["pos_embed"].reshape(table.shape), table, atol=1e-5):
    raise ValueError(f"{path}: its fixed position table differs from the sin-cos table "
                     "jaxgen's DiT computes; this is not an official DiT checkpoint.")
  return fields, params


def build_module(fields: Dict[str, Any]):
  """jaxgen's DiT for ``fields`` (as `infer_fields` returns them)."""
  cfg = ml_collections.ConfigDict({k: v for k, v in fields.items()
                                   if k not in ("input_size", "in_channels", "num_classes")})
  cfg.text_conditioning = "none"
  return registry.MODELS.get("dit")(
      cfg, image_shape=(fields["input_size"], fields["input_size"], fields["in_channels"]),
      num_classes=fields["num_classes"])
