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
import math
import os
import re
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

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
  from flax import serialization  # pylint: disable=import-outside-toplevel
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
  widths = [shape(f"encoder.ResBlock_{l * blocks}.Conv_0.kernel")[-1] for l in range(levels)]
  return tokenizer_fields(
      source, channels=shape("encoder.Conv_0.kernel")[-1], widths=widths,
      num_res_blocks=blocks, codebook=shape("quantizer.codebook"),
      encoder_out=shape("encoder.Conv_1.kernel")[-1],
      in_channels=shape("encoder.Conv_0.kernel")[-2])


def tokenizer_fields(source: str, *, channels: int, widths, num_res_blocks: int,
                     codebook: Tuple[int, int], encoder_out: int, in_channels: int
                     ) -> Dict[str, Any]:
  """The fields of the MaskGIT-layout VQGAN of the given sizes (``codebook``: its
  (codes, dim) shape; ``encoder_out``: the encoder's output channels, quantized as
  they are), ``variant`` ``maskgit_f16`` at the released size; shared by the converters
  of the net's checkpoints (this module's Flax one, `jaxgen.convert.mage_vq`'s PyTorch
  port)."""
  if any(w % channels for w in widths):
    raise ValueError(f"{source}: widths {widths} are not multiples of the first conv's "
                     f"{channels}.")
  codebook_size, code_dim = codebook
  if encoder_out != code_dim:
    raise ValueError(f"{source}: the encoder outputs {encoder_out} channels, the codebook "
                     f"holds {code_dim}-dim codes.")
  fields = dict(name="vqgan", variant=None, arch="conv", layout="maskgit",
                channels=channels, channel_mult=tuple(w // channels for w in widths),
                num_res_blocks=num_res_blocks, attn_resolutions=(), mid_attn=False,
                z_channels=code_dim, embed_dim=code_dim, codebook_size=codebook_size,
                code_dim=code_dim, bottleneck="vq", quant_proj=False, unit_range=True,
                in_channels=in_channels)
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


# ----------------------------------------------------------------------------- transformer

TRANSFORMER_PREFIXES = ("Embed_0.", "TransformerLayer_", "MlmLayer_0.")
# The released transformers' sizes (maskgit/configs/maskgit_class_cond_config.py):
# jaxgen's ``maskgit_imagenet`` size (jaxgen.models.token_transformer.SIZES).
OFFICIAL_TRANSFORMER = dict(depth=24, hidden_size=768, num_heads=16, mlp_dim=3072)


def infer_transformer_fields(reader, num_classes: int) -> Dict[str, Any]:
  """``config.model`` of the MaskGIT transformer a checkpoint holds (sizes from the
  shapes; the official vocabulary is ``codebook_size + num_classes + 1``), plus
  ``num_classes``."""
  source = reader.source

  def shape(key):
    if key not in reader:
      raise ValueError(f"{source} is not a MaskGIT transformer checkpoint (Transformer of "
                       f"maskgit/nets/maskgit_transformer.py): it has no {key}.")
    return reader.shape(key)

  vocab, hidden = shape("Embed_0.word_embeddings.embedding")
  positions = shape("Embed_0.position_embeddings.embedding")[0]
  depth = _count(reader, r"TransformerLayer_(\d+)\.")
  if depth < 1:
    raise ValueError(f"{source} is not a MaskGIT transformer checkpoint: it has no "
                     "TransformerLayer_0.")
  layer = "TransformerLayer_0.Attention_0.self_attention"
  heads = shape(f"{layer}.query.kernel")[1]
  mlp = shape("TransformerLayer_0.Mlp_0.intermediate_output.kernel")[1]
  codebook_size = vocab - num_classes - 1
  if codebook_size < 1:
    raise ValueError(f"{source}: a vocabulary of {vocab} tokens cannot hold {num_classes} "
                     "classes, the [MASK] token and codes; pass the dataset the model was "
                     "trained on (--source-dataset).")
  side = int(round(math.sqrt(positions - 1)))
  if side * side != positions - 1:
    raise ValueError(f"{source}: {positions} positions are not a class token and a "
                     "square grid of codes.")
  fields = dict(name="maskgit_transformer", variant=None, depth=depth, hidden_size=hidden,
                num_heads=heads, mlp_dim=mlp, grid_size=(side, side),
                codebook_size=codebook_size, num_class_tokens=1, tie_output=True,
                layout="bert", num_classes=num_classes)
  if all(fields[k] == v for k, v in OFFICIAL_TRANSFORMER.items()):
    fields["variant"] = "maskgit_imagenet"
  return fields


TRANSFORMER_MODEL_FIELDS = ("name", "variant", "depth", "hidden_size", "num_heads",
                            "mlp_dim", "grid_size", "codebook_size", "num_class_tokens",
                            "tie_output", "layout")


def transformer_model_config(fields: Dict[str, Any]) -> ml_collections.ConfigDict:
  """``config.model`` of the transformer, completed with the model's defaults."""
  cfg = dict(registry.model_fields("maskgit_transformer"))
  cfg.update(dropout=0.1, attn_impl="xla")  # the official dropout_rate
  cfg.update({k: fields[k] for k in TRANSFORMER_MODEL_FIELDS})
  if fields["variant"]:  # the size comes from the variant
    cfg.update(depth=None, hidden_size=None, num_heads=None, mlp_dim=None)
  return ml_collections.ConfigDict(cfg)


def build_transformer(fields: Dict[str, Any], dtype=jnp.float32):
  """jaxgen's MaskGIT transformer for ``fields`` (`infer_transformer_fields`)."""
  g = fields["grid_size"]
  return registry.MODELS.get("maskgit_transformer")(
      transformer_model_config(fields), num_tokens=g[0] * g[1],
      codebook_size=fields["codebook_size"], num_classes=fields["num_classes"], dtype=dtype)


def transformer_shapes(fields: Dict[str, Any]) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Path -> shape of the parameters of jaxgen's transformer for ``fields``."""
  module = build_transformer(fields)
  g = fields["grid_size"]
  return safetensors_io.flat_shapes(jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, g[0] * g[1]), jnp.int32),
      jnp.zeros((1,), jnp.int32)))["params"])


def official_transformer_shapes(fields: Dict[str, Any]) -> Dict[str, Tuple[int, ...]]:
  """Official key -> shape of every tensor of the official transformer of ``fields``."""
  d, h, mlp = fields["hidden_size"], fields["num_heads"], fields["mlp_dim"]
  g = fields["grid_size"]
  vocab = fields["codebook_size"] + fields["num_classes"] + 1
  shapes = {"Embed_0.word_embeddings.embedding": (vocab, d),
            "Embed_0.position_embeddings.embedding": (g[0] * g[1] + 1, d),
            "MlmLayer_0.mlm_dense.kernel": (d, d), "MlmLayer_0.mlm_dense.bias": (d,),
            "MlmLayer_0.mlm_bias.bias": (vocab,)}
  for norm in ("Embed_0.embeddings_ln", "MlmLayer_0.mlm_ln"):
    shapes.update({f"{norm}.scale": (d,), f"{norm}.bias": (d,)})
  for i in range(fields["depth"]):
    layer = f"TransformerLayer_{i}"
    attn = f"{layer}.Attention_0.self_attention"
    for name in ("query", "key", "value"):
      shapes.update({f"{attn}.{name}.kernel": (d, h, d // h), f"{attn}.{name}.bias": (h, d // h)})
    shapes.update({f"{attn}.out.kernel": (h, d // h, d), f"{attn}.out.bias": (d,),
                   f"{layer}.Mlp_0.intermediate_output.kernel": (d, mlp),
                   f"{layer}.Mlp_0.intermediate_output.bias": (mlp,),
                   f"{layer}.Mlp_0.layer_output.kernel": (mlp, d),
                   f"{layer}.Mlp_0.layer_output.bias": (d,)})
    for norm in (f"{layer}.Attention_0.attention_output_ln", f"{layer}.Mlp_0.layer_output_ln"):
      shapes.update({f"{norm}.scale": (d,), f"{norm}.bias": (d,)})
  return shapes


def transformer_name(fields: Dict[str, Any]) -> str:
  return (f"the MaskGIT transformer ({fields['depth']} x {fields['hidden_size']}, "
          f"{fields['num_heads']} heads, {fields['codebook_size']} codes + "
          f"{fields['num_classes']} classes)")


def load_transformer(path: str, num_classes: int = 1000
                     ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(fields, params)`` of a MaskGIT transformer checkpoint of a model of
  ``num_classes`` classes: jaxgen ``MaskGITTransformer`` (``layout="bert"``) parameters
  (float32) whose logits over the codes equal the official ones.

  The official single vocabulary (codes, then the class tokens ``codebook_size +
  label``, then [MASK], id -1) is split: ``token_embedding`` is the codes' rows and the
  [MASK] row, ``class_embedding`` the class rows and a zero row for jaxgen's null
  class (the official model has no unconditional class: classifier-free guidance,
  ``cfg_scale`` != 1, is not the paper's sampler with it). The tied head's bias is the
  codes' part of the official one (the official sampler drops the other logits).
  Attention's per-head query / key / value / out kernels become the fused ``qkv`` and
  ``proj`` (the same head-major order).
  """
  reader = open_checkpoint(path)
  fields = infer_transformer_fields(reader, num_classes)
  shapes = official_transformer_shapes(fields)
  model = transformer_name(fields)
  safetensors_io.check_tensors(
      reader, {(k,): (k, False) for k in shapes}, {(k,): s for k, s in shapes.items()},
      model=model, owned_prefixes=TRANSFORMER_PREFIXES)
  get = lambda key: np.asarray(reader.get(key), np.float32)
  k, c, d = fields["codebook_size"], num_classes, fields["hidden_size"]
  word = get("Embed_0.word_embeddings.embedding")
  flat = {("token_embedding",): np.concatenate([word[:k], word[k + c:]]),
          ("class_embedding", "embedding"): np.concatenate([word[k:k + c],
                                                            np.zeros((1, d), np.float32)]),
          ("position_embedding",): get("Embed_0.position_embeddings.embedding"),
          ("head", "bias"): get("MlmLayer_0.mlm_bias.bias")[:k]}

  def copy(path, key, names=("kernel", "bias"), reshape=None):
    for name in names:
      value = get(f"{key}.{name}")
      flat[path + (name,)] = value if reshape is None else reshape(name, value)

  def norm(path, key):
    copy(path + ("LayerNorm_0",), key, ("scale", "bias"))

  norm(("embedding_norm",), "Embed_0.embeddings_ln")
  copy(("head", "dense", "Dense_0"), "MlmLayer_0.mlm_dense")
  norm(("head", "norm"), "MlmLayer_0.mlm_ln")
  for i in range(fields["depth"]):
    layer, block = f"TransformerLayer_{i}", ("transformer", f"block_{i}")
    attn = f"{layer}.Attention_0.self_attention"
    qkv = [(get(f"{attn}.{n}.kernel").reshape(d, d), get(f"{attn}.{n}.bias").reshape(d))
           for n in ("query", "key", "value")]
    flat[block + ("attn", "qkv", "Dense_0", "kernel")] = np.concatenate([w for w, _ in qkv], 1)
    flat[block + ("attn", "qkv", "Dense_0", "bias")] = np.concatenate([b for _, b in qkv])
    copy(block + ("attn", "proj", "Dense_0"), f"{attn}.out",
         reshape=lambda name, v: v.reshape(d, d) if name == "kernel" else v)
    norm(block + ("norm1",), f"{layer}.Attention_0.attention_output_ln")
    copy(block + ("mlp", "fc1", "Dense_0"), f"{layer}.Mlp_0.intermediate_output")
    copy(block + ("mlp", "fc2", "Dense_0"), f"{layer}.Mlp_0.layer_output")
    norm(block + ("norm2",), f"{layer}.Mlp_0.layer_output_ln")
  expected = transformer_shapes(fields)
  got = {path: tuple(v.shape) for path, v in flat.items()}
  if got != expected:
    raise AssertionError(f"the converted MaskGIT transformer does not fit jaxgen's (a jaxgen "
                         f"bug): {sorted(set(got.items()) ^ set(expected.items()))[:4]}")
  return fields, traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()})
