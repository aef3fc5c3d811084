"""Published checkpoints as jaxgen runs (``jaxgen convert``).

`convert_dit` writes a workdir holding an official DiT checkpoint's weights
(`jaxgen.convert.dit`) as step 0 (parameters and EMA), the config of the paper's
recipe for it (``imagenet256_dit_xl2:objective=ddpm``: DDPM, linear schedule over
1000 steps, learned sigma, 250 sampling steps, CFG 1.5 on the first 3 latent channels
as the official sampler; the model's sizes from the checkpoint) and its dataset's
description, so ``jaxgen sample``, ``jaxgen eval`` and ``jaxgen.load`` use it as they
use a trained run. DiT denoises KL-VAE latents: the
run decodes them through the tokenizer run ``tokenizer`` names (recorded in
``frozen_networks.json``); without one the workdir is written, ``jaxgen info`` works,
and sampling says which tokenizer it needs.

`convert_mage` writes an official MAGE checkpoint (`jaxgen.convert.mage`: LTH14/mage's
``mage-vitb-1600.pth`` / ``mage-vitl-1600.pth``) as a MAGE run the same way: step 0's
parameters and EMA, the paper's recipe (``imagenet256_mage_vitb``: its masking, and the
official unconditional generator's 20 steps at choice temperature 6.0, the README's FID
setting) with the checkpoint's sizes and the official layout, in float32, on
``source_dataset``'s codes. Its frozen tokenizer is the VQGAN run ``tokenizer`` names
(MAGE's VQGAN, a port of MaskGIT's: `convert_mage_vq`), recorded
in ``frozen_networks.json``; without one the workdir is written, ``jaxgen info`` works,
and sampling says which tokenizer it needs.

`convert_sd_vae` writes the Stable Diffusion VAE (`jaxgen.convert.sd_vae`: diffusers'
sd-vae-ft-mse / -ft-ema, or the LDM kl-f8 layout) as a KL tokenizer run: step 0's
autoencoder parameters and EMA are its weights, the config is LDM's kl-f8 recipe
(``imagenet256_tokenizer:variant=kl``) with the checkpoint's sizes, in float32, on
``source_dataset`` (RGB; ImageNet 256x256 by default), and ``latent_scale.json`` holds
its published latent scale (0.18215), so ``jaxgen tokenize``, ``jaxgen eval`` and a
latent paradigm's ``config.tokenizer.workdir`` use it as a trained KL tokenizer. Not
published, and only trained in a fine-tuning run: the discriminator (freshly
initialised) and the LPIPS weights (``config.paradigm.perceptual`` is "none"; give
``perceptual=lpips`` and ``perceptual_weights`` to fine-tune with them).

`convert_maskgit_vq` writes google-research/maskgit's tokenizer
(``tokenizer_imagenet{256,512}_checkpoint``; `jaxgen.convert.maskgit`) as a VQ tokenizer
run the same way: the VQGAN recipe (``imagenet256_tokenizer:variant=vqgan``) with the
checkpoint's MaskGIT-layout net (no quant projections, images in [0, 1] inside), in
float32, without LPIPS, a fresh discriminator and codebook-usage statistics at zero;
``jaxgen tokenize`` and a token paradigm's ``config.tokenizer.workdir`` use it as the
frozen tokenizer of MaskGIT; `convert_mage_vq` writes MAGE's own VQGAN
(``vqgan_jax_strongaug.ckpt``, LTH14/mage's PyTorch port of that net;
`jaxgen.convert.mage_vq`) as the same run, the frozen tokenizer of a converted MAGE
run. `convert_maskgit` writes its class-conditional
transformer (``maskgit_imagenet{256,512}_checkpoint``) as a MaskGIT run: the paper's
recipe (``imagenet256_maskgit``: cosine schedule, 8 steps, choice temperature 4.5) with
the checkpoint's model in the official BERT layout, decoding through the MaskGIT
tokenizer run ``tokenizer`` names (as `convert_dit`: without one the run is written and
sampling says which tokenizer it needs).

`convert_taming` writes a taming-transformers VQGAN (`jaxgen.convert.taming`:
vqgan_imagenet_f16_1024 / _16384, a Lightning ``last.ckpt`` with its ``model.yaml``) as
a VQ tokenizer run the same way: taming's recipe (``imagenet256_tokenizer:variant=vqgan``)
with the checkpoint's sizes (the ``taming_f16_*`` variants for the published ones), in
float32, without LPIPS, and the quantizer's code-usage statistics as initialised (taming
keeps none). ``jaxgen tokenize``, ``jaxgen eval`` and the token paradigms (MaskGIT, AR:
``config.tokenizer.workdir``) use it as a trained VQ tokenizer.

`convert_var_vae` writes VAR's multi-scale VQVAE (`jaxgen.convert.var`:
``vae_ch160v4096z32.pth``) as an "msvq" tokenizer run the same way (the recipe
``imagenet256_tokenizer:variant=msvq`` with the checkpoint's sizes, 3x3 quant convs and
scales, on images of the scales' size: 256x256 for VAR's 1..16), and `convert_var` a
VAR transformer (``var_d16.pth`` .. ``var_d30.pth``) as a VAR run (the recipe
``imagenet256_var_d16`` with the checkpoint's sizes: VAR's sampling settings, cfg 1.5
growing over the scales = ``cfg_scale`` 2.5, top-k 900, top-p 0.96) decoding through
the converted VQVAE run ``tokenizer``, whose scales, codebook and code width it must
match.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import config as config_lib
from jaxgen import fileio
from jaxgen import frozen as frozen_lib
from jaxgen.convert import dit as dit_convert
from jaxgen.convert import mage as mage_convert
from jaxgen.convert import mage_vq as mage_vq_convert
from jaxgen.convert import maskgit as maskgit_convert
from jaxgen.convert import sd_vae
from jaxgen.convert import taming as taming_convert
from jaxgen.convert import var as var_convert
from jaxgen.data import datasets
from jaxgen.paradigms import base as paradigm_base
from jaxgen.tokenizers import base as tokenizer_base
from jaxgen.train import checkpoint, loop
from jaxgen.train import state as state_lib

DIT_RECIPE = "imagenet256_dit_xl2:objective=ddpm"
MAGE_RECIPE = "imagenet256_mage_vitb"
SD_VAE_RECIPE = "imagenet256_tokenizer:variant=kl"
MASKGIT_VQ_RECIPE = "imagenet256_tokenizer:variant=vqgan"
MASKGIT_RECIPE = "imagenet256_maskgit"
TAMING_RECIPE = "imagenet256_tokenizer:variant=vqgan"
VAR_VAE_RECIPE = "imagenet256_tokenizer:variant=msvq"
VAR_RECIPE = "imagenet256_var_d16"


def dit_config(fields, *, tokenizer: str = "", source_dataset: str = "imagenet2012"
               ) -> ml_collections.ConfigDict:
  """The config of a converted DiT: the paper's DDPM recipe with the checkpoint's sizes,
  on ``source_dataset``'s latents of the checkpoint's shape, decoded by ``tokenizer``."""
  config = config_lib.load_config_file(DIT_RECIPE)
  config.model = ml_collections.ConfigDict(dict(
      name="dit", variant=None, hidden_size=fields["hidden_size"], depth=fields["depth"],
      num_heads=fields["num_heads"], patch_size=fields["patch_size"],
      mlp_ratio=fields["mlp_ratio"], learn_sigma=fields["learn_sigma"], scan_blocks=False,
      remat=False, attn_impl="xla", text_conditioning="none"))
  s, c = fields["input_size"], fields["in_channels"]
  config.data.source_dataset = source_dataset
  config.data.code_shape = (s, s, c)
  config.tokenizer.workdir = tokenizer
  config.train.compute_dtype = "float32"
  # the official sampler (models.DiT.forward_with_cfg, used for the paper's FIDs) guides
  # the first 3 latent channels only, "for exact reproducibility"
  config.sample.cfg_channels = 3
  return config_lib.fill_defaults(config)


def convert_dit(ckpt: str, out: str, *, tokenizer: str = "",
                source_dataset: str = "imagenet2012", num_heads: Optional[int] = None,
                devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the run of the official DiT checkpoint ``ckpt`` to ``out``; returns it."""
  _check_new_workdir(out)
  fields, params = dit_convert.load_dit(ckpt, num_heads)
  config = dit_config(fields, tokenizer=tokenizer, source_dataset=source_dataset)
  return _write_model_run(out, config, params, tokenizer=tokenizer, devices=devices,
                          what="DiT", ckpt=ckpt, num_classes=fields["num_classes"])


def mage_config(fields, *, tokenizer: str = "", source_dataset: str = "imagenet2012"
                ) -> ml_collections.ConfigDict:
  """The config of a converted MAGE: the paper's recipe with the checkpoint's sizes and
  the official layout, in float32, on the codes of ``source_dataset``'s images that
  ``tokenizer`` writes and decodes."""
  config = config_lib.load_config_file(MAGE_RECIPE)
  config.model = ml_collections.ConfigDict(dict(fields))
  config.data.source_dataset = source_dataset
  config.tokenizer.workdir = tokenizer
  config.train.compute_dtype = "float32"
  return config_lib.fill_defaults(config)


def convert_mage(ckpt: str, out: str, *, tokenizer: str = "",
                 source_dataset: str = "imagenet2012", num_heads: Optional[int] = None,
                 decoder_num_heads: Optional[int] = None,
                 devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the run of the official MAGE checkpoint ``ckpt`` to ``out``; returns it."""
  _check_new_workdir(out)
  fields, params = mage_convert.load_mage(ckpt, num_heads, decoder_num_heads)
  config = mage_config(fields, tokenizer=tokenizer, source_dataset=source_dataset)
  return _write_model_run(out, config, params, tokenizer=tokenizer, devices=devices,
                          what="MAGE")


def _write_model_run(out: str, config, params, *, tokenizer: str, devices, what: str,
                     ckpt: str = "", num_classes: Optional[int] = None) -> str:
  """Step 0 of the converted generator run ``config`` holding ``params`` (also as its
  EMA): built with its tokenizer when one is given (which checks the tokenizer's latents
  or codes against the model), else from the config's shapes alone; the parameters
  must have the run's shapes. ``num_classes``: the checkpoint's, checked against the
  dataset's. Returns ``out``."""
  spec = datasets.describe(config.data)
  if num_classes is not None and spec.num_classes != num_classes:
    raise config_lib.ConfigError(
        f"{ckpt} has {num_classes} classes, {config.data.get('source_dataset') or spec.name}"
        f" has {spec.num_classes}; pass the dataset it was trained on (--source-dataset).")
  devices = list(devices or jax.devices())[:1]
  if tokenizer:
    exp = loop.build(config, devices, load_data=False, dataset=spec)
  else:  # no tokenizer to check the model's inputs against: shapes from the config
    with paradigm_base.shapes_only():
      exp = loop.build(config, devices, load_data=False, dataset=spec)
  shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
  if jax.tree.structure(exp.abstract_state.params) != jax.tree.structure(params) or \
      shapes(exp.abstract_state.params) != shapes(params):
    raise ValueError(f"The converted parameters do not fit the run's {what} (a jaxgen bug).")
  state = exp.init_state()
  _write_run(out, exp, state.replace(params=params, ema_params=params), config, spec)
  return out


def _write_run(out: str, exp, state, config, spec) -> None:
  """Step 0 of a converted run: the checkpoint, config.json, the frozen networks'
  record and the dataset's description, as a trained run has them."""
  ckpt_writer = checkpoint.Checkpointer(out, async_save=False)
  ckpt_writer.save(0, state, config=config, force=True)
  ckpt_writer.close()
  checkpoint.write_config(out, config)
  frozen_lib.write_record(out, exp.frozen.networks)
  fileio.write_text(os.path.join(out, datasets.SPEC_FILE),
                    json.dumps(datasets.spec_to_dict(spec)))


def sd_vae_config(fields, *, source_dataset: str = "imagenet2012",
                  recipe: str = SD_VAE_RECIPE, model=None,
                  image_size: Optional[int] = None) -> ml_collections.ConfigDict:
  """The config of a converted SD VAE: LDM's kl-f8 recipe with the checkpoint's sizes,
  in float32, without LPIPS (its weights are not published with the VAE), on
  ``source_dataset`` (the recipe's 256x256 crops of ImageNet, or ``image_size`` ones:
  512 for DiT-XL/2 512's latents; another dataset's images as they are). ``recipe`` /
  ``model``: another tokenizer's recipe and config.model (a taming or MaskGIT VQGAN's)."""
  config = config_lib.load_config_file(recipe)
  config.model = model if model is not None else sd_vae.model_config(fields)
  if source_dataset != config.data.name:
    if image_size:
      raise config_lib.ConfigError(f"--image-size is for ImageNet ({config.data.name}); "
                                   f"{source_dataset}'s images are used as they are.")
    config.data = ml_collections.ConfigDict(dict(name=source_dataset,
                                                 pp="scale(-1, 1)|flip_lr"))
  elif image_size:
    if image_size < 8 or image_size % 8:
      raise config_lib.ConfigError(f"--image-size {image_size}: give a multiple of 8 "
                                   "(256, 512).")
    config.data.image_size = image_size
    config.data.pp = f"center_crop({image_size})|scale(-1, 1)|flip_lr"
  config.paradigm.perceptual = "none"
  config.train.compute_dtype = "float32"
  return config_lib.fill_defaults(config)


def convert_sd_vae(ckpt: str, out: str, *, source_dataset: str = "imagenet2012",
                   latent_scale: Optional[float] = None, image_size: Optional[int] = None,
                   devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the KL tokenizer run of the Stable Diffusion VAE ``ckpt`` (a diffusers
  directory or a weights file) to ``out``; returns it. ``latent_scale``: the latents'
  scale factor (default: the checkpoint's config.json ``scaling_factor``, else
  0.18215)."""
  _check_new_workdir(out)
  if latent_scale is not None and not latent_scale > 0:
    raise config_lib.ConfigError(f"--latent-scale {latent_scale}: the latents' scale "
                                 "factor must be positive (SD's is 0.18215).")
  fields, params = sd_vae.load_sd_vae(ckpt, latent_scale)
  config = sd_vae_config(fields, source_dataset=source_dataset, image_size=image_size)
  _write_tokenizer_run(ckpt, out, fields, params, config, source_dataset, devices)
  tokenizer_base.write_latent_scale(out, fields["latent_scale"], num_examples=0,
                                    source=f"published with {ckpt}")
  return out


def maskgit_vq_config(fields, *, source_dataset: str = "imagenet2012",
                      image_size: Optional[int] = None) -> ml_collections.ConfigDict:
  """The config of a converted MaskGIT tokenizer: the VQGAN recipe with the checkpoint's
  net, in float32, without LPIPS, on ``source_dataset`` (as `sd_vae_config`)."""
  return sd_vae_config(fields, source_dataset=source_dataset, recipe=MASKGIT_VQ_RECIPE,
                       model=maskgit_convert.tokenizer_model_config(fields),
                       image_size=image_size)


def convert_maskgit_vq(ckpt: str, out: str, *, source_dataset: str = "imagenet2012",
                       image_size: Optional[int] = None,
                       devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the VQ tokenizer run of MaskGIT's tokenizer checkpoint ``ckpt`` to ``out``;
  returns it."""
  _check_new_workdir(out)
  fields, params = maskgit_convert.load_tokenizer(ckpt)
  return _write_tokenizer_run(ckpt, out, fields, params,
                              maskgit_vq_config(fields, source_dataset=source_dataset,
                                                image_size=image_size),
                              source_dataset, devices)


def convert_mage_vq(ckpt: str, out: str, *, source_dataset: str = "imagenet2012",
                    notes: Optional[list] = None,
                    devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the VQ tokenizer run of MAGE's own VQGAN ``ckpt`` (LTH14/mage's
  ``vqgan_jax_strongaug.ckpt``, a PyTorch port of MaskGIT's) to ``out``: the same run
  as `convert_maskgit_vq` writes (the MaskGIT-layout net), the tokenizer a converted
  MAGE run (`convert_mage`) names; returns it. ``notes`` (a list) gets what was
  skipped in the file."""
  _check_new_workdir(out)
  fields, params, skipped = mage_vq_convert.load_tokenizer(ckpt)
  if notes is not None:
    notes.extend(skipped)
  return _write_tokenizer_run(ckpt, out, fields, params,
                              maskgit_vq_config(fields, source_dataset=source_dataset),
                              source_dataset, devices)


def convert_taming(ckpt: str, out: str, *, config: Optional[str] = None,
                   source_dataset: str = "imagenet2012", notes: Optional[list] = None,
                   image_size: Optional[int] = None,
                   devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the VQ tokenizer run of the taming VQGAN ``ckpt`` (``config``: its
  model.yaml, else sizes from the tensors) to ``out``; returns it. ``notes`` (a list)
  gets what was skipped or ignored in the checkpoint."""
  _check_new_workdir(out)
  fields, params, skipped = taming_convert.load_taming(ckpt, config)
  if notes is not None:
    notes.extend(skipped)
  run_config = sd_vae_config(fields, source_dataset=source_dataset, recipe=TAMING_RECIPE,
                             model=taming_convert.model_config(fields),
                             image_size=image_size)
  return _write_tokenizer_run(ckpt, out, fields, params, run_config, source_dataset,
                              devices)


def _check_new_workdir(out: str) -> None:
  if os.path.exists(os.path.join(out, "checkpoints")):
    raise config_lib.ConfigError(f"{out} already holds checkpoints; convert into a new "
                                 "workdir.")


def _write_tokenizer_run(ckpt, out, fields, params, config, source_dataset, devices) -> str:
  """Writes the tokenizer run ``config`` with the autoencoder ``params`` (after checking
  the dataset's channels against the checkpoint's); returns ``out``."""
  spec = datasets.describe(config.data)
  channels = spec.image_shape[-1]
  if channels != fields["in_channels"]:
    raise config_lib.ConfigError(
        f"{ckpt} encodes {fields['in_channels']}-channel images, {source_dataset} has "
        f"{channels}; pass an RGB dataset (--source-dataset).")
  devices = list(devices or jax.devices())[:1]
  exp = loop.build(config, devices, load_data=False, dataset=spec)
  _write_run(out, exp, _tokenizer_state(exp, params), config, spec)
  return out


def maskgit_config(fields, *, tokenizer: str = "", source_dataset: str = "imagenet2012"
                   ) -> ml_collections.ConfigDict:
  """The config of a converted MaskGIT transformer: the paper's recipe with the
  checkpoint's model, on ``source_dataset``'s codes, decoded by ``tokenizer``."""
  config = config_lib.load_config_file(MASKGIT_RECIPE)
  config.model = maskgit_convert.transformer_model_config(fields)
  config.data.source_dataset = source_dataset
  config.tokenizer.workdir = tokenizer
  config.train.compute_dtype = "float32"
  return config_lib.fill_defaults(config)


def convert_maskgit(ckpt: str, out: str, *, tokenizer: str = "",
                    source_dataset: str = "imagenet2012",
                    devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the run of MaskGIT's transformer checkpoint ``ckpt`` to ``out``; returns
  it. Its classes are ``source_dataset``'s."""
  _check_new_workdir(out)
  spec = datasets.describe(ml_collections.ConfigDict(dict(name=source_dataset)))
  fields, params = maskgit_convert.load_transformer(ckpt, spec.num_classes)
  config = maskgit_config(fields, tokenizer=tokenizer, source_dataset=source_dataset)
  return _write_model_run(out, config, params, tokenizer=tokenizer, devices=devices,
                          what="MaskGIT")


def _tokenizer_state(exp, ae_params):
  """Step 0 of the tokenizer run ``exp`` with the autoencoder parameters ``ae_params``
  (also its EMA), a freshly initialised discriminator and the quantizer's statistics
  (``model_state``: code usage) as initialised, zeros. Built without the run's
  ``init_state``, whose program initialises the autoencoder on full-size images (16 s
  of compilation on 2 CPU cores for the 34k-parameter test VAE at 256x256); the
  discriminator's parameters do not depend on the image size, so it is initialised on
  32x32 images. Checked against the run's state."""
  p = exp.paradigm
  x = jnp.zeros((1, 32, 32, p.image_shape[-1]), jnp.float32)
  if exp.config.model.get("ema_codebook"):
    raise ValueError("a converted tokenizer has a plain codebook (a jaxgen bug).")
  # the quantizer's state (a VQ's usage EMA; none for KL) starts as a fresh run's: zeros
  stats = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), exp.abstract_state.model_state)

  def make(ae, rng):
    return state_lib.create_state(
        lambda r: {"autoencoder": ae,
                   "discriminator": nn.meta.unbox(p.disc.init(r, x)["params"])}, exp.tx, rng,
        init_model_state=(lambda r: stats) if jax.tree.leaves(stats) else None)

  state = jax.jit(make)(ae_params, jax.random.PRNGKey(exp.config.train.seed))
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  if shapes(state) != shapes(exp.abstract_state):
    raise ValueError("The converted parameters do not fit the run's state (a jaxgen bug).")
  return jax.device_put(state, exp.state_shardings)


def var_vae_config(fields, *, source_dataset: str = "imagenet2012"
                   ) -> ml_collections.ConfigDict:
  """The config of a converted VAR VQVAE: the msvq tokenizer recipe with the
  checkpoint's sizes, in float32, without LPIPS, on ``source_dataset`` (ImageNet
  center-cropped to the scales' image size, or another dataset's images as they are)."""
  config = config_lib.load_config_file(VAR_VAE_RECIPE)
  config.model = var_convert.vae_model_config(fields)
  size = var_convert.vae_image_size(fields)
  if source_dataset == config.data.name:
    config.data.image_size = size
    config.data.pp = f"center_crop({size})|scale(-1, 1)|flip_lr"
  else:
    config.data = ml_collections.ConfigDict(dict(name=source_dataset,
                                                 pp="scale(-1, 1)|flip_lr"))
  config.paradigm.perceptual = "none"
  config.train.compute_dtype = "float32"
  return config_lib.fill_defaults(config)


def convert_var_vae(ckpt: str, out: str, *, source_dataset: str = "imagenet2012",
                    scales: Optional[Sequence[int]] = None,
                    devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the "msvq" tokenizer run of VAR's VQVAE ``ckpt`` to ``out``; returns it.
  ``scales``: its scale schedule (default VAR's 1..16)."""
  _check_new_workdir(out)
  fields, params = var_convert.load_var_vae(ckpt, scales)
  config = var_vae_config(fields, source_dataset=source_dataset)
  spec = datasets.describe(config.data)
  size = var_convert.vae_image_size(fields)
  want = (size, size, fields["in_channels"])
  if tuple(spec.image_shape) != want:
    raise config_lib.ConfigError(
        f"{ckpt} with scales {fields['scales']} encodes {want} images, {source_dataset} "
        f"has {tuple(spec.image_shape)}; pass a dataset of that shape (--source-dataset).")
  return _write_tokenizer_run(ckpt, out, fields, params, config, source_dataset, devices)


def _tokenizer_scales(tokenizer: str):
  """The scale schedule of the msvq tokenizer run ``tokenizer`` (None without one)."""
  if not tokenizer:
    return None
  stored = checkpoint.read_config(tokenizer)
  if stored is None:
    raise config_lib.ConfigError(f"--tokenizer {tokenizer} is not a run (no config.json); "
                                 "convert VAR's VQVAE first (--from var-vae).")
  model = stored.get("model", {})
  if model.get("bottleneck") != "msvq":
    raise config_lib.ConfigError(f"--tokenizer {tokenizer} is a {model.get('bottleneck')!r} "
                                 "tokenizer; VAR decodes through a multi-scale VQ (msvq) "
                                 "one (--from var-vae).")
  return tuple(int(s) for s in model["scales"])


def var_config(fields, *, tokenizer: str = "", source_dataset: str = "imagenet2012"
               ) -> ml_collections.ConfigDict:
  """The config of a converted VAR transformer: VAR's d16 recipe (its sampling
  settings) with the checkpoint's sizes, decoding through ``tokenizer``."""
  config = config_lib.load_config_file(VAR_RECIPE)
  config.model = ml_collections.ConfigDict(
      {k: v for k, v in fields.items() if k != "num_classes"})
  config.data.source_dataset = source_dataset
  config.tokenizer.workdir = tokenizer
  config.train.compute_dtype = "float32"
  return config_lib.fill_defaults(config)


def convert_var(ckpt: str, out: str, *, tokenizer: str = "",
                source_dataset: str = "imagenet2012",
                devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the VAR run of the official VAR transformer ``ckpt`` to ``out``, decoding
  through the msvq tokenizer run ``tokenizer`` (its scales); returns it."""
  _check_new_workdir(out)
  fields, params = var_convert.load_var(ckpt, _tokenizer_scales(tokenizer))
  config = var_config(fields, tokenizer=tokenizer, source_dataset=source_dataset)
  return _write_model_run(out, config, params, tokenizer=tokenizer, devices=devices,
                          what="VAR", ckpt=ckpt, num_classes=fields["num_classes"])
