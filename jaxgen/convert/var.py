"""VAR's official checkpoints (FoundationVision/VAR) as jaxgen parameters: the
multi-scale VQVAE (``vae_ch160v4096z32.pth``) and the VAR transformers
(``var_d16.pth`` .. ``var_d30.pth``), bare ``state_dict``s read without torch.

VQVAE (``models/vqvae.py``, ``models/basic_vae.py``, ``models/quant.py``): the LDM
encoder / decoder (``encoder.down.{l}.block.{i}``, attention ``attn.{i}`` after every
block of the last level and in the mid blocks, a fused 1x1 ``qkv`` conv and
``proj_out``) become jaxgen's `ConvEncoder` / `ConvDecoder` with ``attn_resolutions``
= the last scale (the last level's feature-map size at the images the scales were made
for: 16 at 256x256); the 3x3 ``quant_conv`` / ``post_quant_conv`` the autoencoder's
``quant_kernel=3`` projections; ``quantize.embedding`` the codebook and the phi convs
(``quant_resi.qresi_ls.{j}``: 4 partially shared, or ``quant_resi.qresi`` one shared,
or ``quant_resi.{j}`` one per scale) `MultiScaleResidualQuantizer`'s ``phi_{j}``,
ratio 0.5 (VAR's ``quant_resi``; not stored). The scale schedule is not stored either:
VAR's (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) unless given; the usage buffer
``quantize.ema_vocab_hit_SV`` (one row per scale) checks its length.

VAR transformer (``models/var.py``, ``models/basic_var.py``): sizes from the shapes
(width, depth, heads from ``scale_mul_1H11``, classes, vocabulary, code width). VAR's
adaLN chunks (gamma1, gamma2, scale1, scale2, shift1, shift2) are reordered to
jaxgen's (shift, scale, gate) x 2 and the head's (scale, shift) to (shift, scale); the
fused ``mat_qkv`` with ``q_bias`` / ``v_bias`` and the per-head log scale map to
`jaxgen.nn.layers.Attention`'s ``k_bias=False, qk_l2_norm=True`` options. The buffers
(``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``) are recomputed by jaxgen.
Checkpoints with a shared adaLN (``shared_aln=True``) or without VAR's l2-normalised
attention are not converted (no official one has them).

Every tensor is checked before anything is loaded: a missing key, one jaxgen has no
place for, or a shape mismatch is an error naming the key and both shapes. Outputs
equal the official code's (a tiny model built by it: ``tests/data/make_var_reference.py``).

  fields, params = load_var_vae("vae_ch160v4096z32.pth")
  fields, params = load_var("var_d16.pth", scales=fields["scales"])
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import registry
from jaxgen.convert import safetensors_io, torch_pickle

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's patch_nums (256x256 images)
PHI_RATIO = 0.5          # VAR's quant_resi: phi(h) = 0.5 conv(h) + 0.5 h
_CONV = (2, 3, 1, 0)     # torch (out, in, kh, kw) -> Linen (kh, kw, in, out)
# Where each phi conv lives, by VQVAE's share_quant_resi (4: partially shared, the
# official; 1: one shared; 0: one per scale).
_PHI_KEYS = (("partial", "quantize.quant_resi.qresi_ls.{j}"),
             ("shared", "quantize.quant_resi.qresi"),
             ("per_scale", "quantize.quant_resi.{j}"))
# jaxgen's adaLN chunk order (shift, scale, gate) x (attention, MLP) in VAR's order
# (gamma1, gamma2, scale1, scale2, shift1, shift2).
_BLOCK_CHUNKS = (4, 2, 0, 5, 3, 1)
_HEAD_CHUNKS = (1, 0)    # jaxgen (shift, scale) in VAR's (scale, shift)
VAE_HOW_TO_GET = ("Download vae_ch160v4096z32.pth from huggingface.co/FoundationVision/var.")
VAR_HOW_TO_GET = ("Download var_d16.pth (or d20 / d24 / d30) from "
                  "huggingface.co/FoundationVision/var.")


def _indices(reader, pattern: str) -> list:
  """Sorted distinct integers captured by ``pattern`` (one group) over the keys."""
  rx = re.compile(pattern)
  return sorted({int(m.group(1)) for k in reader.keys() for m in [rx.match(k)] if m})


# ----------------------------------------------------------------------------- VQVAE


def _phi_layout(reader) -> Tuple[str, int]:
  """(layout, number of phi convs) of a VQVAE state dict (0: phi is the identity)."""
  for layout, key in _PHI_KEYS:
    if layout == "shared":
      if key + ".weight" in reader:
        return layout, 1
      continue
    pattern = re.escape(key.split("{j}")[0]) + r"(\d+)\.weight$"
    found = _indices(reader, pattern)
    if found:
      return layout, len(found)
  return "partial", 0


def infer_vae_fields(reader, scales: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """``config.model`` of the VQVAE tokenizer a VAR VQVAE state dict holds, plus
  ``in_channels`` and ``phi_layout``: sizes from the tensors' shapes; ``scales`` given
  or VAR's."""
  source = reader.source
  need = ("encoder.conv_in.weight", "encoder.conv_out.weight", "quant_conv.weight",
          "quantize.embedding.weight", "encoder.down.0.block.0.conv1.weight")
  missing = [k for k in need if k not in reader]
  if missing:
    raise ValueError(f"{source} is not a VAR VQVAE checkpoint (vae_ch160v4096z32.pth): it "
                     f"has no {', '.join(missing)}. {VAE_HOW_TO_GET}")
  levels = 1 + max(_indices(reader, r"encoder\.down\.(\d+)\."))
  blocks = 1 + max(_indices(reader, r"encoder\.down\.0\.block\.(\d+)\."))
  widths = [reader.shape(f"encoder.down.{l}.block.0.conv1.weight")[0] for l in range(levels)]
  channels = reader.shape("encoder.conv_in.weight")[0]
  if any(w % channels for w in widths):
    raise ValueError(f"{source}: widths {widths} are not multiples of the first one "
                     f"({channels}).")
  attn_levels = _indices(reader, r"encoder\.down\.(\d+)\.attn\.")
  if attn_levels not in ([], [levels - 1]):
    raise ValueError(f"{source}: attention at levels {attn_levels}; VAR's VQVAE has it at "
                     f"the last level ({levels - 1}) only.")
  codebook_size, code_dim = reader.shape("quantize.embedding.weight")
  kernel = reader.shape("quant_conv.weight")[-1]
  if kernel not in (1, 3):
    raise ValueError(f"{source}: quant_conv.weight has shape "
                     f"{reader.shape('quant_conv.weight')}; jaxgen takes 1x1 or 3x3 quant "
                     "convs.")
  scales = tuple(int(s) for s in (scales or VAR_SCALES))
  if "quantize.ema_vocab_hit_SV" in reader:
    rows = reader.shape("quantize.ema_vocab_hit_SV")[0]
    if rows != len(scales):
      raise ValueError(f"{source}: quantize.ema_vocab_hit_SV has shape "
                       f"{reader.shape('quantize.ema_vocab_hit_SV')}, one row per scale: it "
                       f"was trained with {rows} scales, not the {len(scales)} of {scales}; "
                       "give its scales (--scales).")
  phi_layout, num_phi = _phi_layout(reader)
  return dict(name="vqgan", variant=None, arch="conv", channels=int(channels),
              channel_mult=tuple(int(w // channels) for w in widths),
              num_res_blocks=int(blocks),
              attn_resolutions=(scales[-1],) if attn_levels else (),
              mid_attn="encoder.mid.attn_1.qkv.weight" in reader,
              z_channels=int(reader.shape("encoder.conv_out.weight")[0]),
              embed_dim=int(code_dim), bottleneck="msvq", codebook_size=int(codebook_size),
              code_dim=int(code_dim), scales=scales, num_phi=int(num_phi),
              phi_ratio=PHI_RATIO, beta=0.25, quant_conv_kernel=int(kernel),
              in_channels=int(reader.shape("encoder.conv_in.weight")[1]),
              phi_layout=phi_layout)


def vae_key_map(fields: Dict[str, Any]) -> safetensors_io.KeyMap:
  """jaxgen autoencoder parameter path -> (VAR VQVAE key, layout)."""
  ch, mult = fields["channels"], tuple(fields["channel_mult"])
  levels, blocks = len(mult), fields["num_res_blocks"]
  attn_last = bool(fields["attn_resolutions"])
  m = {}

  def conv(path, key):
    m[path + ("Conv_0", "kernel")] = (key + ".weight", _CONV)
    m[path + ("Conv_0", "bias")] = (key + ".bias", False)

  def norm(path, key):
    m[path + ("GroupNorm_0", "scale")] = (key + ".weight", False)
    m[path + ("GroupNorm_0", "bias")] = (key + ".bias", False)

  def dense_1x1(path, key):
    m[path + ("Dense_0", "kernel")] = (key + ".weight", safetensors_io.CONV_1X1)
    m[path + ("Dense_0", "bias")] = (key + ".bias", False)

  def resnet(path, key, c_in, c_out):
    for name in ("norm1", "norm2"):
      norm(path + (name,), f"{key}.{name}")
    for name in ("conv1", "conv2"):
      conv(path + (name,), f"{key}.{name}")
    if c_in != c_out:
      conv(path + ("nin_shortcut",), f"{key}.nin_shortcut")

  def attention(path, key):
    norm(path + ("norm",), f"{key}.norm")
    dense_1x1(path + ("attn", "qkv"), f"{key}.qkv")   # (3C, C, 1, 1): q, k, v
    dense_1x1(path + ("attn", "proj"), f"{key}.proj_out")

  def mid(net, width):
    resnet((net, "mid_block_1"), f"{net}.mid.block_1", width, width)
    if fields["mid_attn"]:
      attention((net, "mid_attn_1"), f"{net}.mid.attn_1")
    resnet((net, "mid_block_2"), f"{net}.mid.block_2", width, width)

  conv(("encoder", "conv_in"), "encoder.conv_in")
  width = ch
  for level in range(levels):
    for i in range(blocks):
      resnet(("encoder", f"down_{level}_block_{i}"), f"encoder.down.{level}.block.{i}",
             width, ch * mult[level])
      width = ch * mult[level]
      if attn_last and level == levels - 1:
        attention(("encoder", f"down_{level}_attn_{i}"), f"encoder.down.{level}.attn.{i}")
    if level != levels - 1:
      conv(("encoder", f"down_{level}_downsample", "conv"), f"encoder.down.{level}.downsample.conv")
  mid("encoder", width)
  norm(("encoder", "norm_out"), "encoder.norm_out")
  conv(("encoder", "conv_out"), "encoder.conv_out")
  conv(("quant_proj",), "quant_conv")
  conv(("post_quant_proj",), "post_quant_conv")
  if fields["quant_conv_kernel"] == 1:
    for name, key in (("quant_proj", "quant_conv"), ("post_quant_proj", "post_quant_conv")):
      del m[(name, "Conv_0", "kernel")], m[(name, "Conv_0", "bias")]
      dense_1x1((name,), key)
  conv(("decoder", "conv_in"), "decoder.conv_in")
  mid("decoder", width)
  for level in reversed(range(levels)):
    for i in range(blocks + 1):
      resnet(("decoder", f"up_{level}_block_{i}"), f"decoder.up.{level}.block.{i}",
             width, ch * mult[level])
      width = ch * mult[level]
      if attn_last and level == levels - 1:
        attention(("decoder", f"up_{level}_attn_{i}"), f"decoder.up.{level}.attn.{i}")
    if level != 0:
      conv(("decoder", f"up_{level}_upsample", "conv"), f"decoder.up.{level}.upsample.conv")
  norm(("decoder", "norm_out"), "decoder.norm_out")
  conv(("decoder", "conv_out"), "decoder.conv_out")
  m[("quantizer", "codebook")] = ("quantize.embedding.weight", False)
  phi_key = dict(_PHI_KEYS)[fields["phi_layout"]]
  for j in range(fields["num_phi"]):
    conv(("quantizer", f"phi_{j}", "conv"), phi_key.format(j=j))
  return m


MODEL_FIELDS = ("name", "variant", "arch", "channels", "channel_mult", "num_res_blocks",
                "attn_resolutions", "mid_attn", "z_channels", "embed_dim", "bottleneck",
                "codebook_size", "code_dim", "scales", "num_phi", "phi_ratio", "beta",
                "quant_conv_kernel")


def vae_model_config(fields: Dict[str, Any]) -> ml_collections.ConfigDict:
  """``config.model`` of the VQVAE tokenizer, completed with the model's defaults."""
  cfg = dict(registry.model_fields("vqgan"))
  cfg.update({k: fields[k] for k in MODEL_FIELDS})
  return ml_collections.ConfigDict(cfg)


def vae_image_size(fields: Dict[str, Any]) -> int:
  """The images the VQVAE's scales were made for: last scale x 2^(levels - 1)."""
  return int(fields["scales"][-1]) * 2 ** (len(fields["channel_mult"]) - 1)


def build_vae_module(fields: Dict[str, Any], dtype=jnp.float32):
  """jaxgen's autoencoder for ``fields`` (as `infer_vae_fields` returns them)."""
  s = vae_image_size(fields)
  return registry.MODELS.get("vqgan")(vae_model_config(fields),
                                      image_shape=(s, s, fields["in_channels"]), dtype=dtype)


def vae_expected_shapes(fields: Dict[str, Any]) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Path -> shape of the parameters of jaxgen's autoencoder for ``fields``."""
  module = build_vae_module(fields)
  s = vae_image_size(fields)
  x = jnp.zeros((1, s, s, fields["in_channels"]))
  return safetensors_io.flat_shapes(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), x))["params"])


def vae_model_name(fields: Dict[str, Any]) -> str:
  widths = tuple(fields["channels"] * m for m in fields["channel_mult"])
  return (f"VAR's VQVAE (widths {widths}, {fields['num_res_blocks']} blocks, "
          f"{fields['codebook_size']} codes of {fields['code_dim']} dims)")


def load_var_vae(path: str, scales: Optional[Sequence[int]] = None
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of VAR's VQVAE checkpoint: the tokenizer's fields
  (`infer_vae_fields`) and jaxgen autoencoder parameters (float32) equal to its weights."""
  reader = torch_pickle.StateDictReader(torch_pickle.read_state_dict(path), path)
  fields = infer_vae_fields(reader, scales)
  params = safetensors_io.convert_tensors(
      reader, vae_key_map(fields), vae_expected_shapes(fields), model=vae_model_name(fields),
      owned_prefixes=("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize."),
      ignore=("quantize.ema_vocab_hit_SV",))
  return fields, params


# ----------------------------------------------------------------------------- VAR


def _reorder_chunks(arr: np.ndarray, order: Sequence[int]) -> np.ndarray:
  """Rows of ``arr`` (out, ...) split into len(order) chunks, taken in ``order``."""
  chunks = np.split(arr, len(order), axis=0)
  return np.concatenate([chunks[i] for i in order], axis=0)


def _prepare_var_state(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """VAR's tensors in jaxgen's layouts under their own names, where the layout differs
  by more than a transpose (chunk order, squeezed singleton axes); a tensor of another
  shape is left as it is, for `check_tensors` to name."""
  out = dict(state)
  for key, arr in state.items():
    if re.fullmatch(r"blocks\.\d+\.ada_lin\.1\.(weight|bias)", key) and arr.shape[0] % 6 == 0:
      out[key] = _reorder_chunks(arr, _BLOCK_CHUNKS)
    elif key.startswith("head_nm.ada_lin.1.") and arr.shape[0] % 2 == 0:
      out[key] = _reorder_chunks(arr, _HEAD_CHUNKS)
    elif re.fullmatch(r"blocks\.\d+\.attn\.scale_mul_1H11", key) and (
        arr.ndim == 4 and arr.shape[0] == arr.shape[2] == arr.shape[3] == 1):
      out[key] = arr.reshape(-1)
    elif key in ("pos_start", "pos_1LC") and arr.ndim == 3 and arr.shape[0] == 1:
      out[key] = arr[0]
  return out


def infer_var_fields(state: Dict[str, np.ndarray], source: str,
                     scales: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """``config.model`` of the VAR transformer a state dict holds, plus ``num_classes``:
  sizes from the tensors' shapes; ``scales`` (the tokenizer's) given or VAR's."""
  need = ("word_embed.weight", "class_emb.weight", "pos_1LC", "lvl_embed.weight",
          "head.weight", "blocks.0.attn.mat_qkv.weight")
  missing = [k for k in need if k not in state]
  if missing:
    raise ValueError(f"{source} is not a VAR transformer checkpoint (var_d16.pth): it has "
                     f"no {', '.join(missing)}. {VAR_HOW_TO_GET}")
  if "blocks.0.ada_gss" in state or any(k.startswith("shared_ada_lin.") for k in state):
    raise ValueError(f"{source}: a VAR with a shared adaLN (shared_aln=True); jaxgen's VAR "
                     "has one per block, as the official checkpoints.")
  if "blocks.0.attn.scale_mul_1H11" not in state:
    raise ValueError(f"{source}: a VAR without l2-normalised attention (attn_l2_norm=False, "
                     "no blocks.0.attn.scale_mul_1H11); jaxgen converts VAR's "
                     "attn_l2_norm=True models (the official ones).")
  width, code_dim = state["word_embed.weight"].shape
  depth = 1 + max(int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
  heads = int(np.prod(state["blocks.0.attn.scale_mul_1H11"].shape))
  scales = tuple(int(s) for s in (scales or VAR_SCALES))
  length, levels = state["pos_1LC"].shape[-2], state["lvl_embed.weight"].shape[0]
  if (length, levels) != (sum(s * s for s in scales), len(scales)):
    raise ValueError(f"{source}: pos_1LC has shape {state['pos_1LC'].shape} and "
                     f"lvl_embed.weight {state['lvl_embed.weight'].shape}: {levels} scales "
                     f"of {length} tokens, not the tokenizer's {scales} "
                     f"({sum(s * s for s in scales)} tokens).")
  fc1 = state.get("blocks.0.ffn.fc1.weight")
  mlp = fc1.shape[0] / width if fc1 is not None else 4.0
  official = (width, heads) == (64 * depth, depth) and depth in (16, 20, 24, 30)
  variant = f"d{depth}" if official else None   # build_vae_var's named sizes
  return dict(name="var", variant=variant, depth=int(depth), hidden_size=int(width),
              num_heads=heads, drop_path_rate=0.1 * depth / 24, mlp_ratio=float(mlp),
              scales=scales, codebook_size=int(state["head.weight"].shape[0]),
              code_dim=int(code_dim), attn_l2_norm=True, attn_impl="xla",
              num_classes=int(state["class_emb.weight"].shape[0]) - 1)


def var_key_map(depth: int) -> safetensors_io.KeyMap:
  """jaxgen VARTransformer parameter path -> (official key, layout), for the tensors
  as `_prepare_var_state` leaves them."""
  m = {("class_embedding", "embedding"): ("class_emb.weight", False),
       ("start_position",): ("pos_start", False),
       ("position_embedding",): ("pos_1LC", False),
       ("level_embedding",): ("lvl_embed.weight", False)}

  def dense(path, key, bias=True):
    m[path + ("Dense_0", "kernel")] = (key + ".weight", True)
    if bias:
      m[path + ("Dense_0", "bias")] = (key + ".bias", False)

  dense(("word_embed",), "word_embed")
  for i in range(depth):
    b, k = (f"block_{i}",), f"blocks.{i}"
    dense(b + ("adaLN_modulation",), f"{k}.ada_lin.1")
    dense(b + ("attn", "qkv"), f"{k}.attn.mat_qkv", bias=False)
    m[b + ("attn", "q_bias")] = (f"{k}.attn.q_bias", False)
    m[b + ("attn", "v_bias")] = (f"{k}.attn.v_bias", False)
    m[b + ("attn", "log_scale")] = (f"{k}.attn.scale_mul_1H11", False)
    dense(b + ("attn", "proj"), f"{k}.attn.proj")
    dense(b + ("mlp", "fc1"), f"{k}.ffn.fc1")
    dense(b + ("mlp", "fc2"), f"{k}.ffn.fc2")
  dense(("head_modulation",), "head_nm.ada_lin.1")
  dense(("head",), "head")
  return m


def build_var_module(fields: Dict[str, Any]):
  """jaxgen's VAR transformer for ``fields`` (as `infer_var_fields` returns them)."""
  cfg = ml_collections.ConfigDict({k: v for k, v in fields.items() if k != "num_classes"})
  return registry.MODELS.get("var")(
      cfg, num_tokens=sum(s * s for s in fields["scales"]),
      codebook_size=fields["codebook_size"], num_classes=fields["num_classes"])


def var_expected_shapes(fields: Dict[str, Any]) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  module = build_var_module(fields)
  first = fields["scales"][0] ** 2
  inputs = jnp.zeros((1, sum(s * s for s in fields["scales"]) - first, fields["code_dim"]))
  return safetensors_io.flat_shapes(jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), inputs, jnp.zeros((1,), jnp.int32)))["params"])


def load_var(path: str, scales: Optional[Sequence[int]] = None
             ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of an official VAR transformer checkpoint: its fields
  (`infer_var_fields`) and jaxgen VARTransformer parameters (float32) equal to its
  weights. ``scales``: the tokenizer's (default VAR's)."""
  state = torch_pickle.read_state_dict(path)
  fields = infer_var_fields(state, path, scales)
  name = (f"VAR (width {fields['hidden_size']}, depth {fields['depth']}, "
          f"{fields['num_heads']} heads)")
  ignore = ["lvl_1L", "attn_bias_for_masking"] + [
      f"blocks.{i}.attn.zero_k_bias" for i in range(fields["depth"])]
  params = safetensors_io.convert_tensors(
      torch_pickle.StateDictReader(_prepare_var_state(state), path),
      var_key_map(fields["depth"]), var_expected_shapes(fields), model=name,
      owned_prefixes=("word_embed.", "class_emb.", "pos_start", "pos_1LC", "lvl_embed.",
                      "blocks.", "head_nm.", "head.", "shared_ada_lin.", "lvl_1L",
                      "attn_bias_for_masking"),
      ignore=ignore)
  return fields, params
