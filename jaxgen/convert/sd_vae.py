"""The Stable Diffusion VAE (LDM kl-f8) as jaxgen KL-autoencoder parameters.

Reads stabilityai/sd-vae-ft-mse and sd-vae-ft-ema (and any diffusers ``AutoencoderKL``
of the same block layout) given as its directory (``diffusion_pytorch_model.safetensors``
or ``.bin`` beside ``config.json``; a pipeline's ``vae/`` folder is found too) or as
the weights file, and the original LDM / CompVis layout (``encoder.down.0.block.0...``,
e.g. ``vae-ft-mse-840000-ema-pruned.safetensors`` or a kl-f8 ``.ckpt``: a Lightning
checkpoint's ``state_dict`` is taken, a ``first_stage_model.`` prefix allowed). Pickles
are read without torch (`torch_pickle`), which refuses one holding more than tensors
(Lightning callbacks): take the .safetensors, or save its ``state_dict`` alone. Sizes
come from diffusers' ``config.json`` when there is one (``block_out_channels``,
``layers_per_block``, ``latent_channels``, ``norm_num_groups``, ``scaling_factor``),
else from the tensors' shapes (GroupNorm with 32 groups, SD's latent scale 0.18215).

diffusers' mid-block attention (separate ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``,
or ``query`` / ``key`` / ``value`` / ``proj_attn`` before diffusers 0.14, as Linear or
1x1 conv weights; LDM's ``q`` / ``k`` / ``v`` / ``proj_out`` 1x1 convs) becomes the
fused ``qkv`` / ``proj`` of `jaxgen.tokenizers.nets.AttnBlock`; the 1x1 ``quant_conv``
/ ``post_quant_conv`` become the autoencoder's ``quant_proj`` / ``post_quant_proj``.
Every tensor is checked against jaxgen's autoencoder before anything is loaded: a
missing key, one jaxgen has no place for, or a shape mismatch is an error naming the
key and both shapes. The LDM training loss (``loss.*``: LPIPS, discriminator, logvar)
is not part of the autoencoder and is not read. Outputs equal diffusers' (tested on a
small model diffusers built: ``tests/data/make_sd_vae_reference.py``).

  fields, params = load_sd_vae("sd-vae-ft-mse/")   # fields: config.model of it, ...
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.convert import safetensors_io, torch_pickle

SD_LATENT_SCALE = 0.18215  # LDM / Stable Diffusion v1's scale_factor of kl-f8 latents
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CONFIG_FILE = "config.json"
PREFIXES = ("", "first_stage_model.")  # alone, or inside a whole LDM / SD state dict
_CONV = (2, 3, 1, 0)  # torch (out, in, kh, kw) -> Linen (kh, kw, in, out)
_HOW_TO_GET = ("Download diffusion_pytorch_model.safetensors and config.json of "
               "stabilityai/sd-vae-ft-mse (or -ft-ema) into one directory and pass it.")

# Where each piece of the autoencoder lives in the two layouts ({l}: level from the
# top, {r}: decoder block from the bottom, {i}: block in its level, {j}: mid block).
# The LDM layout is taming-transformers' Encoder / Decoder (`jaxgen.convert.taming`
# maps its VQGANs through `key_map` too), with attention inside the levels.
LAYOUTS = {
    "diffusers": dict(
        down="encoder.down_blocks.{l}.resnets.{i}",
        down_attn="encoder.down_blocks.{l}.attentions.{i}",
        downsample="encoder.down_blocks.{l}.downsamplers.0.conv",
        up="decoder.up_blocks.{r}.resnets.{i}",
        up_attn="decoder.up_blocks.{r}.attentions.{i}",
        upsample="decoder.up_blocks.{r}.upsamplers.0.conv",
        mid_block="mid_block.resnets.{j}", mid_attn="mid_block.attentions.0",
        norm_out="conv_norm_out", shortcut="conv_shortcut", attn_norm="group_norm",
        attention=(("to_q", "to_k", "to_v", "to_out.0"),
                   ("query", "key", "value", "proj_attn"))),
    "ldm": dict(
        down="encoder.down.{l}.block.{i}", down_attn="encoder.down.{l}.attn.{i}",
        downsample="encoder.down.{l}.downsample.conv",
        up="decoder.up.{l}.block.{i}", up_attn="decoder.up.{l}.attn.{i}",
        upsample="decoder.up.{l}.upsample.conv",
        mid_block="mid.block_{j1}", mid_attn="mid.attn_1", norm_out="norm_out",
        shortcut="nin_shortcut", attn_norm="norm",
        attention=(("q", "k", "v", "proj_out"),)),
}


def key_map(fields: Dict[str, Any], layout: str = "diffusers", prefix: str = "",
            reader=None) -> safetensors_io.KeyMap:
  """jaxgen autoencoder parameter path -> (checkpoint key(s), layout).

  Args:
    fields: the autoencoder's fields (`infer_fields`; with ``attn_resolutions``, also
      ``resolution``: the levels that attend are fixed by it, taming's rule).
    layout: "diffusers" or "ldm" (`LAYOUTS`).
    prefix: prefix of every key ("first_stage_model." in a whole LDM state dict).
    reader: the checkpoint, if any: it tells the attention's key names (old or new
      diffusers) and whether its projections are Linear or 1x1 conv weights.
  """
  names = LAYOUTS[layout]
  has = (lambda key: key in reader) if reader is not None else (lambda key: False)
  is_conv = lambda key: has(key) and len(reader.shape(key)) == 4
  ch, mult = fields["channels"], tuple(fields["channel_mult"])
  levels, blocks = len(mult), fields["num_res_blocks"]
  attends = attention_levels(fields)
  m = {}

  def conv(path, key):
    m[path + ("Conv_0", "kernel")] = (prefix + key + ".weight", _CONV)
    m[path + ("Conv_0", "bias")] = (prefix + key + ".bias", False)

  def norm(path, key):
    m[path + ("GroupNorm_0", "scale")] = (prefix + key + ".weight", False)
    m[path + ("GroupNorm_0", "bias")] = (prefix + key + ".bias", False)

  def dense(path, keys):
    weights = tuple(prefix + k + ".weight" for k in keys)
    layout_of = safetensors_io.CONV_1X1 if is_conv(weights[0]) else True
    m[path + ("Dense_0", "kernel")] = (weights if len(keys) > 1 else weights[0], layout_of)
    biases = tuple(prefix + k + ".bias" for k in keys)
    m[path + ("Dense_0", "bias")] = (biases if len(keys) > 1 else biases[0], False)

  def resnet(path, key, c_in, c_out):
    for name in ("norm1", "norm2"):
      norm(path + (name,), f"{key}.{name}")
    for name in ("conv1", "conv2"):
      conv(path + (name,), f"{key}.{name}")
    if c_in != c_out:
      conv(path + ("nin_shortcut",), f"{key}.{names['shortcut']}")

  def attention(path, key):
    norm(path + ("norm",), f"{key}.{names['attn_norm']}")
    q, k, v, out = next((n for n in names["attention"] if has(f"{prefix}{key}.{n[0]}.weight")),
                        names["attention"][0])
    dense(path + ("attn", "qkv"), [f"{key}.{q}", f"{key}.{k}", f"{key}.{v}"])
    dense(path + ("attn", "proj"), [f"{key}.{out}"])

  def mid(net, width):
    for j in (1, 2):
      resnet((net, f"mid_block_{j}"), f"{net}." + names["mid_block"].format(j=j - 1, j1=j),
             width, width)
    if fields["mid_attn"]:
      attention((net, "mid_attn_1"), f"{net}.{names['mid_attn']}")

  conv(("encoder", "conv_in"), "encoder.conv_in")
  width = ch
  for level in range(levels):
    for i in range(blocks):
      resnet(("encoder", f"down_{level}_block_{i}"), names["down"].format(l=level, i=i),
             width, ch * mult[level])
      width = ch * mult[level]
      if level in attends:
        attention(("encoder", f"down_{level}_attn_{i}"),
                  names["down_attn"].format(l=level, i=i))
    if level != levels - 1:
      conv(("encoder", f"down_{level}_downsample", "conv"),
           names["downsample"].format(l=level))
  mid("encoder", width)
  norm(("encoder", "norm_out"), f"encoder.{names['norm_out']}")
  conv(("encoder", "conv_out"), "encoder.conv_out")
  dense(("quant_proj",), ["quant_conv"])
  dense(("post_quant_proj",), ["post_quant_conv"])
  conv(("decoder", "conv_in"), "decoder.conv_in")
  mid("decoder", width)
  for level in reversed(range(levels)):
    r = levels - 1 - level
    for i in range(blocks + 1):
      resnet(("decoder", f"up_{level}_block_{i}"), names["up"].format(l=level, r=r, i=i),
             width, ch * mult[level])
      width = ch * mult[level]
      if level in attends:
        attention(("decoder", f"up_{level}_attn_{i}"),
                  names["up_attn"].format(l=level, r=r, i=i))
    if level != 0:
      conv(("decoder", f"up_{level}_upsample", "conv"),
           names["upsample"].format(l=level, r=r))
  norm(("decoder", "norm_out"), f"decoder.{names['norm_out']}")
  conv(("decoder", "conv_out"), "decoder.conv_out")
  return m


def attention_levels(fields: Dict[str, Any]) -> Tuple[int, ...]:
  """The levels whose blocks attend: ``resolution // 2 ** l`` in ``attn_resolutions``
  (`jaxgen.tokenizers.nets.attention_levels`, the nets' rule when ``resolution`` is
  set; this layer cannot import the nets)."""
  if not fields.get("attn_resolutions"):
    return ()
  if not fields.get("resolution"):
    raise ValueError("attention inside the levels needs the nets' fixed resolution "
                     "(config.model.resolution) to map its tensors.")
  return tuple(l for l in range(len(fields["channel_mult"]))
               if fields["resolution"] // 2 ** l in tuple(fields["attn_resolutions"]))


def conv_sizes(reader, layout: str, prefix: str) -> Dict[str, Any]:
  """The encoder / decoder sizes of an LDM / taming-style checkpoint, from its tensors'
  shapes: ``widths`` (per level), ``num_res_blocks``, ``in_channels``, ``z_out`` (the
  encoder's output channels), ``mid_attn`` and ``attn_levels`` (levels whose blocks
  attend)."""
  names, source = LAYOUTS[layout], reader.source

  def shape(key):
    if prefix + key not in reader:
      raise ValueError(f"{source} is not an LDM / taming autoencoder checkpoint: it has "
                       f"no {prefix + key}.")
    return reader.shape(prefix + key)

  down = lambda l, i: names["down"].format(l=l, i=i)
  levels = 1 + max(int(k[len(prefix):].split(".")[2]) for k in reader.keys()
                   if k.startswith(prefix + names["down"].split("{")[0]))
  blocks = 1 + max(int(m.group(1)) for k in reader.keys() for m in [re.match(
      re.escape(prefix + down(0, "")) + r"(\d+)\.", k)] if m)
  widths = [shape(f"{down(l, 0)}.conv1.weight")[0] for l in range(levels)]
  attn_levels = tuple(l for l in range(levels) if any(
      k.startswith(prefix + names["down_attn"].format(l=l, i=0) + ".") for k in reader.keys()))
  return dict(widths=widths, num_res_blocks=blocks,
              in_channels=shape("encoder.conv_in.weight")[1],
              z_out=shape("encoder.conv_out.weight")[0],
              mid_attn=any(k.startswith(f"{prefix}encoder.{names['mid_attn']}.")
                           for k in reader.keys()),
              attn_levels=attn_levels)


def check_widths(widths, groups: int, source: str, hint: str = "") -> int:
  """The first width (``channels``), once checked that every width is a multiple of it
  and that jaxgen's GroupNorm (gcd(32, width) groups) has ``groups`` groups on each."""
  channels = widths[0]
  if any(w % channels for w in widths):
    raise ValueError(f"{source}: widths {widths} are not multiples of the first one; "
                     "jaxgen's autoencoder takes channels * channel_mult.")
  uneven = [w for w in widths if math.gcd(32, w) != groups]
  if uneven:
    raise ValueError(f"{source}: GroupNorm with {groups} groups over widths {widths}; "
                     f"jaxgen's GroupNorm takes gcd(32, width) groups, which differs for "
                     f"{uneven}{hint}.")
  return channels


def open_checkpoint(path: str) -> Tuple[Any, Optional[Dict[str, Any]]]:
  """``(reader, diffusers config or None)`` of a VAE directory or weights file.

  Raises:
    FileNotFoundError: the path, or a weights file in the directory, does not exist.
    ValueError: the file cannot be read.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist. {_HOW_TO_GET}")
  file = path
  if os.path.isdir(path):
    file = _weights_in(path) or _weights_in(os.path.join(path, "vae"))
    if file is None:
      raise FileNotFoundError(f"{path} holds neither {' nor '.join(WEIGHT_FILES)} nor a "
                              f"single .safetensors / .ckpt file. {_HOW_TO_GET}")
  if file.endswith(".safetensors"):
    reader = safetensors_io.CheckpointReader([file])
  else:
    try:
      state = torch_pickle.read_state_dict(file)
    except ValueError as e:
      raise ValueError(f"{e} Take the .safetensors weights, or save the checkpoint's "
                       "state_dict alone (torch.save(ckpt['state_dict'], ...)).") from None
    if isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint
      state = state["state_dict"]
    reader = torch_pickle.StateDictReader(state, file)
  return reader, _diffusers_config(os.path.join(os.path.dirname(file), CONFIG_FILE))


def _weights_in(directory: str) -> Optional[str]:
  for name in WEIGHT_FILES:
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  found = [f for ext in ("safetensors", "ckpt", "pt", "pth", "bin")
           for f in glob.glob(os.path.join(directory, f"*.{ext}"))]
  return found[0] if len(found) == 1 else None


def _diffusers_config(path: str) -> Optional[Dict[str, Any]]:
  """A diffusers ``AutoencoderKL`` config.json beside the weights (else None)."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a JSON file: {e}") from None
  if not isinstance(config, dict) or config.get("_class_name", "AutoencoderKL") != (
      "AutoencoderKL") or "block_out_channels" not in config:
    return None  # another model's config; the sizes come from the tensors
  return config


def detect_layout(reader) -> Tuple[str, str]:
  """``(layout, prefix)`` of a checkpoint's VAE keys ("diffusers" or "ldm")."""
  for prefix in PREFIXES:
    if prefix + "encoder.conv_in.weight" not in reader:
      continue
    for layout, down in (("diffusers", "encoder.down_blocks."), ("ldm", "encoder.down.")):
      if any(k.startswith(prefix + down) for k in reader.keys()):
        return layout, prefix
  raise ValueError(f"{reader.source} is not a Stable Diffusion VAE checkpoint: it has no "
                   "encoder.conv_in.weight with encoder.down_blocks.* (diffusers "
                   "AutoencoderKL) or encoder.down.* (LDM kl-f8) tensors.")


def infer_fields(reader, config: Optional[Dict[str, Any]] = None, *,
                 latent_scale: Optional[float] = None) -> Dict[str, Any]:
  """``config.model`` of the KL autoencoder a checkpoint holds, plus ``in_channels``,
  ``latent_scale``, ``layout`` and ``prefix``: sizes from the diffusers ``config``
  when given, else from the tensors' shapes; ``latent_scale`` (given, the config's
  ``scaling_factor``, else SD's 0.18215)."""
  layout, prefix = detect_layout(reader)
  source = reader.source

  def shape(key):
    if prefix + key not in reader:
      raise ValueError(f"{source} is not a Stable Diffusion VAE checkpoint: it has no "
                       f"{prefix + key}.")
    return reader.shape(prefix + key)

  if config is not None:
    _check_config(config, source)
    widths = [int(w) for w in config["block_out_channels"]]
    blocks = int(config.get("layers_per_block", 2))
    groups = int(config.get("norm_num_groups", 32))
    z = embed = int(config.get("latent_channels", 4))
    in_channels = int(config.get("in_channels", 3))
    mid_attn = bool(config.get("mid_block_add_attention", True))
    scale = config.get("scaling_factor")
  else:
    sizes = conv_sizes(reader, layout, prefix)
    widths, blocks, groups = sizes["widths"], sizes["num_res_blocks"], 32
    z = sizes["z_out"] // 2
    embed = shape("quant_conv.weight")[0] // 2
    in_channels, mid_attn, scale = sizes["in_channels"], sizes["mid_attn"], None
  hint = "" if config is not None else (" (without a config.json it assumes 32 groups: put "
                                        "the model's config.json beside the weights)")
  channels = check_widths(widths, groups, source, hint)
  scale = latent_scale if latent_scale is not None else scale
  return dict(name="kl_vae", variant=None, arch="conv", channels=channels,
              channel_mult=tuple(w // channels for w in widths), num_res_blocks=blocks,
              attn_resolutions=(), mid_attn=mid_attn, z_channels=z, embed_dim=embed,
              bottleneck="kl", in_channels=in_channels,
              latent_scale=float(SD_LATENT_SCALE if scale is None else scale),
              layout=layout, prefix=prefix)


def _check_config(config: Dict[str, Any], source: str) -> None:
  """A diffusers AutoencoderKL config jaxgen's kl-f8 autoencoder can be."""
  unsupported = []
  n = len(config["block_out_channels"])
  for field, want in (("down_block_types", ["DownEncoderBlock2D"] * n),
                      ("up_block_types", ["UpDecoderBlock2D"] * n), ("act_fn", "silu"),
                      ("use_quant_conv", True), ("use_post_quant_conv", True),
                      ("shift_factor", None), ("latents_mean", None), ("latents_std", None)):
    got = config.get(field, want)
    if (list(got) if isinstance(got, (list, tuple)) else got) != want:
      unsupported.append(f"{field}={got!r}")
  if config.get("in_channels", 3) != config.get("out_channels", 3):
    unsupported.append(f"in_channels={config.get('in_channels')} != "
                       f"out_channels={config.get('out_channels')}")
  if unsupported:
    raise ValueError(f"{source}: its config.json has {', '.join(unsupported)}; jaxgen "
                     "converts the Stable Diffusion VAE layout only (DownEncoderBlock2D / "
                     "UpDecoderBlock2D, SiLU, quant convs, one scale factor).")


def load_sd_vae(path: str, latent_scale: Optional[float] = None
                ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of a Stable Diffusion VAE checkpoint (directory or file):
  the autoencoder's fields (`infer_fields`) and jaxgen ``Autoencoder`` parameters
  (float32) equal to its weights."""
  reader, config = open_checkpoint(path)
  fields = infer_fields(reader, config, latent_scale=latent_scale)
  prefix = fields["prefix"]
  params = safetensors_io.convert_tensors(
      reader, key_map(fields, fields["layout"], prefix, reader), expected_shapes(fields),
      model=model_name(fields),
      owned_prefixes=tuple(prefix + p for p in ("encoder.", "decoder.", "quant_conv.",
                                                "post_quant_conv.")))
  return fields, params


def model_name(fields: Dict[str, Any]) -> str:
  """The autoencoder's name in messages."""
  widths = [fields["channels"] * m for m in fields["channel_mult"]]
  return (f"the KL autoencoder (widths {tuple(widths)}, {fields['num_res_blocks']} blocks, "
          f"{fields['z_channels']} latent channels)")


def expected_shapes(fields: Dict[str, Any]) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Path -> shape of the parameters of jaxgen's autoencoder for ``fields``."""
  module = build_module(fields)
  s = 2 ** len(fields["channel_mult"])
  x = jnp.zeros((1, s, s, fields["in_channels"]))
  return safetensors_io.flat_shapes(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), x))["params"])


MODEL_FIELDS = ("name", "variant", "arch", "channels", "channel_mult", "num_res_blocks",
                "attn_resolutions", "mid_attn", "z_channels", "embed_dim", "bottleneck")


def model_config(fields: Dict[str, Any]) -> ml_collections.ConfigDict:
  """``config.model`` of the autoencoder (the model fields of ``fields``), completed
  with the model's declared defaults."""
  cfg = dict(registry.model_fields("kl_vae"))
  cfg.update({k: fields[k] for k in MODEL_FIELDS})
  return ml_collections.ConfigDict(cfg)


def build_module(fields: Dict[str, Any], dtype=jnp.float32):
  """jaxgen's autoencoder for ``fields`` (as `infer_fields` returns them)."""
  return registry.MODELS.get("kl_vae")(
      model_config(fields), image_shape=(256, 256, fields["in_channels"]), dtype=dtype)
