"""MAGE's own VQGAN tokenizer (LTH14/mage ``vqgan_jax_strongaug.ckpt``) as jaxgen
parameters.

MAGE (Li et al. 2023) tokenizes with a PyTorch port of MaskGIT's VQGAN trained with
strong augmentation: ``taming/models/vqgan.py`` ``VQModel`` with the ``Encoder`` /
``Decoder`` of ``taming/modules/diffusionmodules/model.py`` and ``VectorQuantizer2`` in
the MAGE repository (sizes: its ``config/vqgan.yaml``). Despite the taming names, its
blocks are MaskGIT's, not taming's: bias-free ResNet convs and encoder ``conv_in``,
average-pool downsampling, two mid blocks, ``num_res_blocks`` decoder blocks per level,
a 1x1 encoder ``conv_out``, the 1x1 shortcut applied to the block's output, no
attention (``attn_resolutions`` is accepted and unused), no quant convs, images in
[0, 1] (``ToTensor()``, no normalisation). So it is jaxgen's MaskGIT-layout VQGAN
(`jaxgen.convert.maskgit`'s fields: ``layout="maskgit"``, ``quant_proj=False``,
``unit_range=True``; the ``maskgit_f16`` variant at the published size) with no
arithmetic of its own: GroupNorm(32, eps 1e-6) with the variance about the mean (as
jaxgen's), symmetric 3x3 padding, nearest upsampling, the squared-distance argmin over
the codes. The one structural difference, the port's fixed two mid blocks where the
Flax net has ``num_res_blocks``, is none at the published ``num_res_blocks`` 2; another
count is refused.

The file is read without torch (`torch_pickle.read_lightning_state_dict`: a plain state
dict, as MAGE's ``init_from_ckpt`` loads it, or a ``{"state_dict": ...}`` one; a state
dict of the whole MAGE model, whose tokenizer is under ``vqgan.``, too). PyTorch names
map to jaxgen's paths (conv kernels (out, in, kh, kw) -> (kh, kw, in, out), GroupNorm
``weight`` -> ``scale``, ``quantize.embedding.weight`` -> the codebook); sizes come
from the tensors' shapes; every tensor is checked before anything is loaded (a missing
key, one jaxgen has no place for, or a shape mismatch is an error naming the key and
both shapes). Codes equal the official module's and decodings to 1e-4 (tested on a
small model MAGE's code built: ``tests/data/make_mage_vq_reference.py``).

  fields, params, notes = load_tokenizer("vqgan_jax_strongaug.ckpt")
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Tuple

from jaxgen.convert import maskgit, safetensors_io, torch_pickle

HOW_TO_GET = ("Download vqgan_jax_strongaug.ckpt from the link in LTH14/mage's README "
              "(https://drive.google.com/file/d/13S_unB87n6KKuuMdyMnyExW0G1kplTbP).")
CODEBOOK = "quantize.embedding.weight"
OWNED = ("encoder.", "decoder.", "quantize.")
CONV = (2, 3, 1, 0)  # torch (out, in, kh, kw) -> Linen (kh, kw, in, out)
MID_BLOCKS = 2       # the port's Encoder / Decoder have mid.block_1 and mid.block_2


def open_checkpoint(path: str) -> Tuple[torch_pickle.StateDictReader, List[str]]:
  """``(reader, notes)`` of a MAGE VQGAN checkpoint; the notes say what was skipped."""
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist. {HOW_TO_GET}")
  state, skipped = torch_pickle.read_lightning_state_dict(path)
  notes = [f"skipped the checkpoint's entries {', '.join(skipped)} beside its state_dict "
           "(not read)"] if skipped else []
  return torch_pickle.StateDictReader(state, path), notes


def _count(reader, pattern: str) -> int:
  """How many distinct names match ``pattern`` (a regex with one group) in the keys."""
  return len({m.group(1) for k in reader.keys() for m in [re.match(pattern, k)] if m})


def infer_fields(reader) -> Dict[str, Any]:
  """``config.model`` of the VQ tokenizer a checkpoint holds (sizes from the shapes),
  plus ``in_channels`` and ``prefix`` (``""``, or ``"vqgan."`` in a whole MAGE
  model's state dict)."""
  source = reader.source
  prefix = "vqgan." if "vqgan." + CODEBOOK in reader else ""

  def shape(key):
    if prefix + key not in reader:
      raise ValueError(f"{source} is not a MAGE VQGAN checkpoint (VQModel of LTH14/mage's "
                       f"taming/models/vqgan.py): it has no {prefix + key}. {HOW_TO_GET}")
    return reader.shape(prefix + key)

  shape(CODEBOOK)
  conv_in = shape("encoder.conv_in.weight")
  levels = _count(reader, re.escape(prefix) + r"encoder\.down\.(\d+)\.")
  blocks = _count(reader, re.escape(prefix) + r"encoder\.down\.0\.block\.(\d+)\.")
  mid = _count(reader, re.escape(prefix) + r"encoder\.mid\.block_(\d+)\.")
  if levels < 1 or blocks < 1:
    raise ValueError(f"{source} is not a MAGE VQGAN checkpoint: it has no "
                     f"{prefix}encoder.down.0.block.0.")
  if mid != blocks:
    raise ValueError(f"{source}: {mid} mid blocks with {blocks} ResNet blocks per level; "
                     "jaxgen's MaskGIT-layout VQGAN has as many mid blocks as blocks per "
                     f"level (MAGE's port always {MID_BLOCKS}: its published "
                     f"num_res_blocks {MID_BLOCKS} converts).")
  widths = [shape(f"encoder.down.{l}.block.0.conv1.weight")[0] for l in range(levels)]
  fields = maskgit.tokenizer_fields(
      source, channels=conv_in[0], widths=widths, num_res_blocks=blocks,
      codebook=shape(CODEBOOK), encoder_out=shape("encoder.conv_out.weight")[0],
      in_channels=conv_in[1])
  return dict(fields, prefix=prefix)


def key_map(fields: Dict[str, Any]) -> safetensors_io.KeyMap:
  """jaxgen autoencoder parameter path -> (MAGE key, layout)."""
  mult, blocks = tuple(fields["channel_mult"]), fields["num_res_blocks"]
  levels, p = len(mult), fields["prefix"]
  m = {}

  def conv(path, key, bias=True):
    m[path + ("Conv_0", "kernel")] = (f"{p}{key}.weight", CONV)
    if bias:
      m[path + ("Conv_0", "bias")] = (f"{p}{key}.bias", False)

  def norm(path, key):
    m[path + ("GroupNorm_0", "scale")] = (f"{p}{key}.weight", False)
    m[path + ("GroupNorm_0", "bias")] = (f"{p}{key}.bias", False)

  def block(path, key, c_in, c_out):
    norm(path + ("norm1",), f"{key}.norm1")
    conv(path + ("conv1",), f"{key}.conv1", bias=False)
    norm(path + ("norm2",), f"{key}.norm2")
    conv(path + ("conv2",), f"{key}.conv2", bias=False)
    if c_in != c_out:
      conv(path + ("nin_shortcut",), f"{key}.nin_shortcut", bias=False)

  width = ch = fields["channels"]
  conv(("encoder", "conv_in"), "encoder.conv_in", bias=False)
  for level in range(levels):
    for i in range(blocks):
      block(("encoder", f"down_{level}_block_{i}"), f"encoder.down.{level}.block.{i}",
            width, ch * mult[level])
      width = ch * mult[level]
  for j in range(blocks):
    block(("encoder", f"mid_block_{j + 1}"), f"encoder.mid.block_{j + 1}", width, width)
  norm(("encoder", "norm_out"), "encoder.norm_out")
  conv(("encoder", "conv_out"), "encoder.conv_out")
  conv(("decoder", "conv_in"), "decoder.conv_in")
  for j in range(blocks):
    block(("decoder", f"mid_block_{j + 1}"), f"decoder.mid.block_{j + 1}", width, width)
  for level in reversed(range(levels)):
    for i in range(blocks):
      block(("decoder", f"up_{level}_block_{i}"), f"decoder.up.{level}.block.{i}", width,
            ch * mult[level])
      width = ch * mult[level]
    if level != 0:
      conv(("decoder", f"up_{level}_upsample", "conv"), f"decoder.up.{level}.upsample.conv")
  norm(("decoder", "norm_out"), "decoder.norm_out")
  conv(("decoder", "conv_out"), "decoder.conv_out")
  m[("quantizer", "codebook")] = (p + CODEBOOK, False)
  return m


def tokenizer_name(fields: Dict[str, Any]) -> str:
  widths = tuple(fields["channels"] * m for m in fields["channel_mult"])
  return (f"MAGE's VQGAN (widths {widths}, {fields['num_res_blocks']} blocks, "
          f"{fields['codebook_size']} codes of {fields['code_dim']})")


def load_tokenizer(path: str) -> Tuple[Dict[str, Any], Dict[str, Any], List[str]]:
  """``(fields, params, notes)`` of a MAGE VQGAN checkpoint: the autoencoder's fields
  (`maskgit.tokenizer_fields`, plus ``in_channels`` and ``prefix``), jaxgen
  ``Autoencoder`` parameters (float32) and what was skipped in the file."""
  reader, notes = open_checkpoint(path)
  fields = infer_fields(reader)
  params = safetensors_io.convert_tensors(
      reader, key_map(fields), maskgit.tokenizer_shapes(_net_fields(fields)),
      model=tokenizer_name(fields),
      owned_prefixes=tuple(fields["prefix"] + o for o in OWNED))
  if fields["prefix"]:
    notes.append(f"took the tokenizer under {fields['prefix']}* of a whole MAGE model's "
                 "state dict (the rest not converted)")
  return _net_fields(fields), params, notes


def _net_fields(fields: Dict[str, Any]) -> Dict[str, Any]:
  """``fields`` without the reader's ``prefix``: `maskgit.tokenizer_fields`'s."""
  return {k: v for k, v in fields.items() if k != "prefix"}
