"""google-research/maskgit's released Flax checkpoints as jaxgen parameters.

The checkpoints (``tokenizer_imagenet{256,512}_checkpoint``,
``maskgit_imagenet{256,512}_checkpoint`` from
https://storage.googleapis.com/maskgit-public/checkpoints/) are the Flax variables
``{"params": ...}`` serialised with ``flax.serialization.to_bytes`` (msgpack; the
official ``maskgit.utils.restore_from_path`` reads them with ``from_bytes``). They are
read here with ``flax.serialization.msgpack_restore``: no TensorFlow.

Tokenizer (``maskgit/nets/vqgan_tokenizer.py`` ``VQVAE``): jaxgen's conv VQGAN in the
MaskGIT layout (`jaxgen.tokenizers.nets`, ``layout="maskgit"``: bias-free ResNet convs,
average-pool downsampling, the official shortcut, ``num_res_blocks`` mid blocks, a 1x1
encoder output conv), without quant projections (the encoder's output is quantized
itself) and on images in [0, 1] (``unit_range``), so its codes and decodings equal the
official ones (tested on a small model the official code built:
``tests/data/make_maskgit_reference.py``). Flax names map one to one (``Conv_k``,
``GroupNorm_k``, ``ResBlock_k`` in creation order); Linen kernels need no transposing.
Sizes come from the tensors' shapes; every tensor is checked before anything is loaded
(a missing key, one jaxgen has no place for, or a shape mismatch is an error naming the
key and both shapes).

  fields, params = load_tokenizer("tokenizer_imagenet256_checkpoint")
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import registry
from jaxgen.convert import safetensors_io, torch_pickle

CHECKPOINTS_URL = "https://storage.googleapis.com/maskgit-public/checkpoints/"
_HOW_TO_GET = (f"Download tokenizer_imagenet256_checkpoint (or ..._512_...) and "
               f"maskgit_imagenet256_checkpoint from {CHECKPOINTS_URL}.")
TOKENIZER_PREFIXES = ("encoder.", "decoder.", "quantizer.")
# The released tokenizers' sizes (maskgit/configs/vqgan_config.py): jaxgen's
# ``maskgit_f16`` variant (jaxgen.tokenizers.nets, a higher layer; tested equal).
OFFICIAL_TOKENIZER = dict(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                          z_channels=256, codebook_size=1024)


# ----------------------------------------------------------------------------- reading


def read_variables(path: str) -> Dict[str, np.ndarray]:
  """The checkpoint's parameters as a flat ``{"encoder.Conv_0.kernel": array}`` dict
  (the ``params`` collection of a variables dict, or the dict itself when it has none).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a msgpack Flax checkpoint.
  """
  from flax import serialization, traverse_util  # pylint: disable=import-outside-toplevel
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist. {_HOW_TO_GET}")
  with open(path, "rb") as f:
    data = f.read()
  try:
    state = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack's own exceptions (ExtraData, UnpackValueError, ...)
    raise ValueError(f"{path} is not a Flax msgpack checkpoint (flax.serialization."
                     f"to_bytes): {type(e).__name__}: {e}") from None
  if not isinstance(state, dict):
    raise ValueError(f"{path} holds a {type(state).__name__}, not Flax variables.")
  if isinstance(state.get("params"), dict):
    state = state["params"]
  flat = traverse_util.flatten_dict(state, sep=".")
  return {k: np.asarray(v) for k, v in flat.items() if isinstance(v, np.ndarray)}


def open_checkpoint(path: str) -> torch_pickle.StateDictReader:
  """A reader (`safetensors_io.CheckpointReader`'s interface) over the checkpoint."""
  return torch_pickle.StateDictReader(read_variables(path), os.fspath(path))


def _count(reader, pattern: str) -> int:
  """How many distinct names match ``pattern`` (a regex with one group) in the keys."""
  return len({m.group(1) for k in reader.keys() for m in [re.match(pattern, k)] if m})


# ----------------------------------------------------------------------------- tokenizer


def infer_tokenizer_fields(reader) -> Dict[str, Any]:
  """``config.model`` of the VQ tokenizer a checkpoint holds (sizes from the shapes),
  plus ``in_channels``."""
  source = reader.source

  def shape(key):
    if key not in reader:
      raise ValueError(f"{source} is not a MaskGIT tokenizer checkpoint (VQVAE of "
                       f"maskgit/nets/vqgan_tokenizer.py): it has no {key}.")
    return reader.shape(key)

  shape("encoder.Conv_0.kernel")
  shape("quantizer.codebook")
  enc_blocks = _count(reader, r"encoder\.ResBlock_(\d+)\.")
  dec_convs = _count(reader, r"decoder\.Conv_(\d+)\.")
  levels = dec_convs - 1            # conv_in, one conv per upsampling, conv_out
  if levels < 1 or enc_blocks % (levels + 1):
    raise ValueError(f"{source}: {enc_blocks} encoder ResBlocks and {dec_convs} decoder "
                     f"convs do not make a MaskGIT VQGAN (levels x blocks + mid blocks).")
  blocks = enc_blocks // (levels + 1)
  channels = shape("encoder.Conv_0.kernel")[-1]
  widths = [shape(f"encoder.ResBlock_{l * blocks}.Conv_0.kernel")[-1] for l in range(levels)]
  if any(w % channels for w in widths):
    raise ValueError(f"{source}: widths {widths} are not multiples of the first conv's "
                     f"{channels}.")
  codebook_size, code_dim = shape("quantizer.codebook")
  embed = shape("encoder.Conv_1.kernel")[-1]
  if embed != code_dim:
    raise ValueError(f"{source}: the encoder outputs {embed} channels, the codebook "
                     f"holds {code_dim}-dim codes.")
  fields = dict(name="vqgan", variant=None, arch="conv", layout="maskgit",
                channels=channels, channel_mult=tuple(w // channels for w in widths),
                num_res_blocks=blocks, attn_resolutions=(), mid_attn=False,
                z_channels=code_dim, embed_dim=code_dim, codebook_size=codebook_size,
                code_dim=code_dim, bottleneck="vq", quant_proj=False, unit_range=True,
                in_channels=shape("encoder.Conv_0.kernel")[-2])
  if all(fields[k] == v for k, v in OFFICIAL_TOKENIZER.items()):
    fields["variant"] = "maskgit_f16"
  return fields


def tokenizer_key_map(fields: Dict[str, Any]) -> safetensors_io.KeyMap:
  """jaxgen autoencoder parameter path -> (official key, no transpose)."""
  mult, blocks = tuple(fields["channel_mult"]), fields["num_res_blocks"]
  levels = len(mult)
  m = {}

  def leaf(path, key, names=("kernel", "bias")):
    for name in names:
      m[path + (name,)] = (f"{key}.{name}", False)

  def conv(path, key, bias=True):
    leaf(path + ("Conv_0",), key, ("kernel", "bias") if bias else ("kernel",))

  def norm(path, key):
    leaf(path + ("GroupNorm_0",), key, ("scale", "bias"))

  def block(path, key, c_in, c_out):
    norm(path + ("norm1",), f"{key}.GroupNorm_0")
    conv(path + ("conv1",), f"{key}.Conv_0", bias=False)
    norm(path + ("norm2",), f"{key}.GroupNorm_1")
    conv(path + ("conv2",), f"{key}.Conv_1", bias=False)
    if c_in != c_out:
      conv(path + ("nin_shortcut",), f"{key}.Conv_2", bias=False)

  width = ch = fields["channels"]
  conv(("encoder", "conv_in"), "encoder.Conv_0", bias=False)
  k = 0
  for level in range(levels):
    for i in range(blocks):
      block(("encoder", f"down_{level}_block_{i}"), f"encoder.ResBlock_{k}", width,
            ch * mult[level])
      width, k = ch * mult[level], k + 1
  for j in range(blocks):
    block(("encoder", f"mid_block_{j + 1}"), f"encoder.ResBlock_{k}", width, width)
    k += 1
  norm(("encoder", "norm_out"), "encoder.GroupNorm_0")
  conv(("encoder", "conv_out"), "encoder.Conv_1")
  conv(("decoder", "conv_in"), "decoder.Conv_0")
  k = 0
  for j in range(blocks):
    block(("decoder", f"mid_block_{j + 1}"), f"decoder.ResBlock_{k}", width, width)
    k += 1
  for level in reversed(range(levels)):
    for i in range(blocks):
      block(("decoder", f"up_{level}_block_{i}"), f"decoder.ResBlock_{k}", width,
            ch * mult[level])
      width, k = ch * mult[level], k + 1
    if level != 0:
      conv(("decoder", f"up_{level}_upsample", "conv"), f"decoder.Conv_{levels - level}")
  norm(("decoder", "norm_out"), "decoder.GroupNorm_0")
  conv(("decoder", "conv_out"), f"decoder.Conv_{levels}")
  m[("quantizer", "codebook")] = ("quantizer.codebook", False)
  return m


TOKENIZER_MODEL_FIELDS = ("name", "variant", "arch", "layout", "channels", "channel_mult",
                          "num_res_blocks", "attn_resolutions", "mid_attn", "z_channels",
                          "embed_dim", "codebook_size", "code_dim", "bottleneck",
                          "quant_proj", "unit_range")


def tokenizer_model_config(fields: Dict[str, Any]) -> ml_collections.ConfigDict:
  """``config.model`` of the tokenizer, completed with the model's declared defaults."""
  cfg = dict(registry.model_fields("vqgan"))
  cfg.update({k: fields[k] for k in TOKENIZER_MODEL_FIELDS})
  return ml_collections.ConfigDict(cfg)


def build_tokenizer(fields: Dict[str, Any], dtype=jnp.float32):
  """jaxgen's autoencoder for ``fields`` (as `infer_tokenizer_fields` gives them)."""
  return registry.MODELS.get("vqgan")(
      tokenizer_model_config(fields), image_shape=(256, 256, fields["in_channels"]),
      dtype=dtype)


def tokenizer_shapes(fields: Dict[str, Any]) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Path -> shape of the parameters of jaxgen's autoencoder for ``fields``."""
  return dict(_tokenizer_shapes(tuple(sorted(fields.items()))))


@functools.lru_cache(maxsize=8)
def _tokenizer_shapes(items):  # traced once per size
  fields = dict(items)
  module = build_tokenizer(fields)
  s = 2 ** len(fields["channel_mult"])
  x = jnp.zeros((1, s, s, fields["in_channels"]))
  return safetensors_io.flat_shapes(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), x))["params"])


def tokenizer_name(fields: Dict[str, Any]) -> str:
  widths = tuple(fields["channels"] * m for m in fields["channel_mult"])
  return (f"the MaskGIT VQGAN (widths {widths}, {fields['num_res_blocks']} blocks, "
          f"{fields['codebook_size']} codes of {fields['code_dim']})")


def load_tokenizer(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of a MaskGIT tokenizer checkpoint: the autoencoder's fields
  (`infer_tokenizer_fields`) and jaxgen ``Autoencoder`` parameters (float32)."""
  reader = open_checkpoint(path)
  fields = infer_tokenizer_fields(reader)
  params = safetensors_io.convert_tensors(
      reader, tokenizer_key_map(fields), tokenizer_shapes(fields),
      model=tokenizer_name(fields), owned_prefixes=TOKENIZER_PREFIXES)
  return fields, params
