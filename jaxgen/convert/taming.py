"""taming-transformers' VQGANs (CompVis, Esser et al. 2021) as jaxgen VQ-tokenizer
parameters.

Reads the published ``vqgan_imagenet_f16_1024`` and ``vqgan_imagenet_f16_16384``
(``checkpoints/last.ckpt``, a PyTorch Lightning checkpoint, with ``configs/model.yaml``)
and any ``taming.models.vqgan.VQModel`` of the same layout: the ``Encoder`` / ``Decoder``
of ``taming/modules/diffusionmodules/model.py`` (LDM's blocks: their key map is
`jaxgen.convert.sd_vae.key_map`'s "ldm" layout, attention inside the levels included),
the 1x1 ``quant_conv`` / ``post_quant_conv`` (jaxgen's ``quant_proj`` /
``post_quant_proj``) and ``VectorQuantizer2``'s ``quantize.embedding.weight`` (jaxgen's
``quantizer/codebook``: the same squared-distance argmin over the codes). A whole
``Net2NetTransformer`` checkpoint's ``first_stage_model.`` VQGAN is found too.

The ``.ckpt`` is read without torch (`torch_pickle.read_lightning_state_dict`): its
``state_dict`` is taken, the other Lightning entries (epoch, optimizer states,
callbacks keyed by their classes) are skipped unread and their classes never imported,
and the ``loss.*`` tensors (LPIPS and the PatchGAN discriminator of the training loss)
are not part of the tokenizer: both are reported in the notes `load_taming` returns.
Sizes come from ``model.yaml`` when given (its ``ddconfig``, ``n_embed``,
``embed_dim``; read with PyYAML), else from the tensors' shapes, with taming's
``resolution`` 256: the levels that attend follow from the ``attn`` tensors, and
``config.model.resolution`` keeps them at those levels at any input size as taming's
nets do (jaxgen's ``taming_f16_1024`` / ``taming_f16_16384`` variants). Every tensor is
checked before anything is loaded: a missing key, one jaxgen has no place for, or a
shape mismatch is an error naming the key and both shapes. Outputs equal taming's
(indices, decoding, reconstruction; tests/data/make_taming_reference.py).

  fields, params, notes = load_taming("last.ckpt", "model.yaml")
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.convert import safetensors_io, sd_vae, torch_pickle

TAMING_RESOLUTION = 256  # ddconfig.resolution of every published taming VQGAN
CODEBOOK = "quantize.embedding.weight"
OWNED = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
VQMODEL = "taming.models.vqgan.VQModel"
HOW_TO_GET = ("Download checkpoints/last.ckpt and configs/model.yaml of "
              "vqgan_imagenet_f16_1024 (https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/)"
              " or vqgan_imagenet_f16_16384 "
              "(https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/).")
# jaxgen's named sizes of the published nets (`jaxgen.tokenizers.nets.VARIANTS`)
VARIANTS = {1024: "taming_f16_1024", 16384: "taming_f16_16384"}
PUBLISHED = dict(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                 attn_resolutions=(16,), resolution=256, z_channels=256, embed_dim=256)


def read_config(path: str) -> Dict[str, Any]:
  """``model.params`` of a taming ``model.yaml`` (its ``ddconfig``, ``n_embed``,
  ``embed_dim``), checked to be a plain ``VQModel`` jaxgen's nets can be.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a VQModel config, or options jaxgen does not have.
  """
  yaml = _yaml()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such file. {HOW_TO_GET}")
  try:
    with open(path, encoding="utf-8") as f:
      doc = yaml.safe_load(f)
    model = doc["model"]
    target, params, dd = model["target"], model["params"], model["params"]["ddconfig"]
  except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a taming model.yaml (model.target, model.params."
                     f"ddconfig): {e!r}") from None
  if target != VQMODEL:
    raise ValueError(f"{path}: model.target is {target}; jaxgen converts {VQMODEL} "
                     "(the VQGAN with VectorQuantizer2), not Gumbel / EMA variants.")
  unsupported = [f"{k}={v!r}" for k, v, want in (
      ("ddconfig.double_z", dd.get("double_z", True), False),
      ("ddconfig.out_ch", dd.get("out_ch"), dd.get("in_channels")),
      ("ddconfig.resamp_with_conv", dd.get("resamp_with_conv", True), True),
      ("ddconfig.give_pre_end", dd.get("give_pre_end", False), False),
      ("remap", params.get("remap"), None)) if v != want]
  if unsupported:
    raise ValueError(f"{path} has {', '.join(unsupported)}; jaxgen's VQGAN has double_z "
                     "False, out_ch = in_channels, conv resampling and no index remap.")
  return params


def _yaml():
  try:
    import yaml  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("reading a taming model.yaml needs PyYAML (pip install pyyaml); "
                     "without --config the sizes come from the checkpoint.") from None
  return yaml


def open_checkpoint(path: str) -> Tuple[Any, List[str]]:
  """``(reader, notes)`` of a taming ``.ckpt`` (or a ``.safetensors`` of its state
  dict); the notes say what was skipped."""
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist. {HOW_TO_GET}")
  if path.endswith(".safetensors"):
    return safetensors_io.CheckpointReader([path]), []
  state, skipped = torch_pickle.read_lightning_state_dict(path)
  notes = []
  if skipped:
    notes.append(f"skipped the checkpoint's training entries {', '.join(skipped)} "
                 "(not read)")
  return torch_pickle.StateDictReader(state, path), notes


def infer_fields(reader, config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """``config.model`` of the VQGAN a checkpoint holds (sizes from the taming
  ``model.params`` ``config`` when given, else from the tensors), plus
  ``in_channels`` and ``prefix``."""
  source = reader.source
  try:
    layout, prefix = sd_vae.detect_layout(reader)
  except ValueError:
    layout = prefix = None
  if layout != "ldm" or prefix + CODEBOOK not in reader:
    raise ValueError(f"{source} is not a taming VQGAN checkpoint: it has no "
                     f"encoder.down.* tensors with {CODEBOOK}. {HOW_TO_GET}")
  sizes = sd_vae.conv_sizes(reader, layout, prefix)
  codebook_size, code_dim = reader.shape(prefix + CODEBOOK)
  if config is not None:
    dd = config["ddconfig"]
    widths = [int(dd["ch"]) * int(m) for m in dd["ch_mult"]]
    blocks, z = int(dd["num_res_blocks"]), int(dd["z_channels"])
    in_channels, resolution = int(dd["in_channels"]), int(dd["resolution"])
    attn_resolutions = tuple(int(r) for r in dd["attn_resolutions"])
    codebook_size, embed = int(config["n_embed"]), int(config["embed_dim"])
  else:
    widths, blocks, z = sizes["widths"], sizes["num_res_blocks"], sizes["z_out"]
    in_channels, resolution = sizes["in_channels"], TAMING_RESOLUTION
    attn_resolutions = tuple(resolution // 2 ** l for l in sizes["attn_levels"])
    embed = code_dim
  channels = sd_vae.check_widths(widths, 32, source)
  fields = dict(name="vqgan", variant=None, arch="conv", channels=channels,
                channel_mult=tuple(w // channels for w in widths), num_res_blocks=blocks,
                attn_resolutions=attn_resolutions, resolution=resolution,
                mid_attn=sizes["mid_attn"], z_channels=z, embed_dim=embed,
                codebook_size=int(codebook_size), code_dim=embed, bottleneck="vq",
                in_channels=in_channels, prefix=prefix)
  if all(fields[k] == v for k, v in PUBLISHED.items()) and fields["mid_attn"]:
    fields["variant"] = VARIANTS.get(fields["codebook_size"])
  return fields


def key_map(fields: Dict[str, Any], reader=None) -> safetensors_io.KeyMap:
  """jaxgen autoencoder parameter path -> (checkpoint key, layout): the LDM blocks'
  map of `sd_vae.key_map` and the codebook."""
  prefix = fields["prefix"]
  m = dict(sd_vae.key_map(fields, "ldm", prefix, reader))
  m[("quantizer", "codebook")] = (prefix + CODEBOOK, False)
  return m


MODEL_FIELDS = ("name", "variant", "arch", "channels", "channel_mult", "num_res_blocks",
                "attn_resolutions", "resolution", "mid_attn", "z_channels", "embed_dim",
                "codebook_size", "code_dim", "bottleneck")


def model_config(fields: Dict[str, Any]) -> ml_collections.ConfigDict:
  """``config.model`` of the VQGAN, completed with the model's declared defaults
  (taming's beta 0.25, a plain codebook trained by gradients)."""
  cfg = dict(registry.model_fields("vqgan"))
  cfg.update({k: fields[k] for k in MODEL_FIELDS})
  return ml_collections.ConfigDict(cfg)


def build_module(fields: Dict[str, Any], dtype=jnp.float32):
  """jaxgen's autoencoder for ``fields`` (as `infer_fields` returns them)."""
  return registry.MODELS.get("vqgan")(
      model_config(fields), image_shape=(fields["resolution"],) * 2 + (fields["in_channels"],),
      dtype=dtype)


def _abstract_variables(fields: Dict[str, Any]):
  """The VQGAN's variables as abstract arrays (traced on the smallest image it takes:
  the levels that attend do not depend on it)."""
  return _traced_variables(tuple(sorted(fields.items())))


@functools.lru_cache(maxsize=8)
def _traced_variables(items):
  fields = dict(items)
  s = 2 ** (len(fields["channel_mult"]) - 1)
  x = jnp.zeros((1, s, s, fields["in_channels"]))
  return jax.eval_shape(lambda: build_module(fields).init(jax.random.PRNGKey(0), x))


def expected_shapes(fields: Dict[str, Any]) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Path -> shape of the parameters of jaxgen's VQGAN for ``fields``."""
  return safetensors_io.flat_shapes(_abstract_variables(fields)["params"])


def variables(fields: Dict[str, Any], params) -> Dict[str, Any]:
  """``params`` with the quantizer's ``vq_stats`` as initialised (code usage 0: the
  statistics taming does not keep), what ``apply`` takes."""
  stats = nn.meta.unbox(_abstract_variables(fields)["vq_stats"])
  return {"params": params,
          "vq_stats": jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), stats)}


def model_name(fields: Dict[str, Any]) -> str:
  """The VQGAN's name in messages."""
  widths = [fields["channels"] * m for m in fields["channel_mult"]]
  return (f"the VQGAN (widths {tuple(widths)}, {fields['num_res_blocks']} blocks, "
          f"{fields['codebook_size']} codes of {fields['embed_dim']})")


def load_taming(path: str, config: Optional[str] = None
                ) -> Tuple[Dict[str, Any], Dict[str, Any], List[str]]:
  """``(fields, params, notes)`` of a taming VQGAN checkpoint (``config``: its
  ``model.yaml``): the VQGAN's fields (`infer_fields`), jaxgen ``Autoencoder``
  parameters (float32) equal to its weights, and what was skipped or ignored."""
  params_cfg = read_config(config) if config else None
  reader, notes = open_checkpoint(path)
  fields = infer_fields(reader, params_cfg)
  prefix = fields["prefix"]
  params = safetensors_io.convert_tensors(
      reader, key_map(fields, reader), expected_shapes(fields), model=model_name(fields),
      owned_prefixes=tuple(prefix + p for p in OWNED))
  loss = [k for k in reader.keys() if k.startswith("loss.")]
  if loss:
    notes.append(f"ignored {len(loss)} loss.* tensors (the training loss: LPIPS and "
                 "the PatchGAN discriminator, not part of the tokenizer)")
  others = [k for k in reader.keys() if not k.startswith(OWNED) and k not in loss
            and not k.startswith(tuple(prefix + p for p in OWNED))]
  if others:
    notes.append(f"ignored {len(others)} tensors outside the VQGAN, e.g. {others[0]}")
  return fields, params, notes
