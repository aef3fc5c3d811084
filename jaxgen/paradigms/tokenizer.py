"""Tokenizer training: VQGAN / ViT-VQGAN / multi-scale VQ / LFQ / KL-VAE autoencoders, of
images or (causal 3D nets) of videos.

Model: ``jaxgen.tokenizers.autoencoder.Autoencoder`` (any encoder/decoder, any
bottleneck) plus a PatchGAN discriminator. Loss (taming-transformers' VQLPIPS):

  L_G = rec + perceptual_weight * perceptual + bottleneck_weight * bottleneck
        + disc_factor * lambda * g_loss(D(x_rec))
  L_D = disc_factor * d_loss(D(x), D(x_rec))

with ``lambda`` the adaptive weight (ratio of the gradient norms of the
reconstruction and GAN terms at the decoder's last layer) or a constant, and
``disc_factor`` 0 before ``disc_start``. Both networks are updated in one jitted step
by one ``optax.multi_transform`` (an optimizer per network); the quantizer's
non-gradient statistics (EMA codebook, usage) live in ``TrainState.model_state``.

"Sampling" for a tokenizer is reconstruction: ``sample`` returns decoded
reconstructions of a fixed batch, so the shared loop's PNG grids show them.

Videos (data of shape (T, H, W, C), a ``causal3d`` variant: MAGVIT-v2's tokenizer). The
autoencoder takes (N, T, H, W, C) clips; the pixel loss is over every frame, the
PatchGAN discriminator and the perceptual loss are 2-D and see each frame as an image
(`frames`: (N T, H, W, C)); previews are videos (GIF grids). The data's frame count
must suit the nets' temporal factor (`nets.check_num_frames`). ``config.model.
inflate_from`` initialises the encoder and decoder from a trained 2D conv tokenizer
run of the same sizes (MAGVIT's 2D -> 3D inflation, `jaxgen.tokenizers.inflation`).
With an "lfq" bottleneck the logged metrics include code ``usage`` (in the batch),
``usage_window`` (EMA), ``perplexity`` and the entropies.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.errors import DataError
from jaxgen.losses import adversarial, perceptual
from jaxgen.paradigms.base import Paradigm, building_shapes_only
from jaxgen.tokenizers import autoencoder as ae_lib
from jaxgen.tokenizers import base as tok_base
from jaxgen.tokenizers import inflation, nets
from jaxgen.tokenizers import models as tok_models
from jaxgen.samplers import options as options_lib
from jaxgen.train import optim
from jaxgen.train import step as step_lib
from jaxgen.train.state import TrainState

REC_LOSSES = ("l1", "l2")
GAN_LOSSES = ("hinge", "non_saturating")
PERCEPTUAL_NETS = ("none", "classifier", "lpips")


@registry.PARADIGMS.register("tokenizer")
class TokenizerParadigm(Paradigm):
  """Trains an autoencoder tokenizer; see the module docstring."""

  capabilities = frozenset({"reconstructs"})
  Options = options_lib.NoOptions
  FIELDS = dict(
      rec_loss="l1",             # l1 | l2 pixel reconstruction
      bottleneck_weight=1.0,     # weight of the VQ (codebook + beta * commitment) or KL loss
      perceptual="none",         # none | classifier (dataset feature CNN) | lpips (file)
      perceptual_weight=0.0,
      perceptual_weights="",     # .npz of LPIPS weights when perceptual="lpips"
      perceptual_seed=1,         # classifier seed; eval's classifier is seed 0 (independent)
      disc_weight=0.0,           # 0 = no discriminator
      disc_start=0,              # step at which the GAN terms switch on
      disc_loss="hinge",         # hinge | non_saturating
      adaptive_weight=True,      # VQGAN's gradient-norm ratio at the decoder's last layer
      disc_channels=64,
      disc_layers=3,
      disc_lr_ratio=1.0,         # discriminator lr = optim.lr * this
  )

  default_params = tok_base.DEFAULT_PARAMS  # frozen use: the trained weights

  def __init__(self, config, dataset, **frozen):
    super().__init__(config, dataset, **frozen)
    p = config.paradigm
    self.ae, _ = tok_base.build_autoencoder(config, dataset)
    self.use_gan = p.disc_weight > 0
    self.disc = nets.PatchGANDiscriminator(channels=p.disc_channels, num_layers=p.disc_layers)
    self._perceptual = None
    from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
    if p.perceptual != "none" and datasets.has_data(dataset):
      self._perceptual = build_perceptual(p, dataset)  # now, before a step is traced

  @property
  def perceptual(self):
    """The perceptual distance ``(x, y) -> (N,)``, None when off. Built at construction
    when the data is loaded; when it is only described (sampling, ``info``, compiling
    ahead of time) on first use, if any (see `build_perceptual`)."""
    p = self.config.paradigm
    if self._perceptual is None and p.perceptual != "none":
      with jax.ensure_compile_time_eval():  # the first use may be in a traced step
        self._perceptual = build_perceptual(p, self.dataset)
    return self._perceptual

  @classmethod
  def validate_config(cls, config) -> None:
    p = config.paradigm
    for field, allowed in (("rec_loss", REC_LOSSES), ("disc_loss", GAN_LOSSES),
                           ("perceptual", PERCEPTUAL_NETS)):
      if p[field] not in allowed:
        raise ConfigError(f"config.paradigm.{field}={p[field]!r}; use one of "
                          f"{', '.join(allowed)}.")
    if config.model.get("bottleneck") not in ae_lib.BOTTLENECKS:
      raise ConfigError(f"config.model.bottleneck={config.model.get('bottleneck')!r}; use "
                        f"one of {', '.join(ae_lib.BOTTLENECKS)}.")
    if p.perceptual == "lpips" and not p.perceptual_weights and not building_shapes_only():
      raise ConfigError("config.paradigm.perceptual='lpips' needs "
                        "config.paradigm.perceptual_weights=PATH.npz (LPIPS weights cannot "
                        "be downloaded here; see jaxgen.losses.perceptual).")
    if p.perceptual != "none" and p.perceptual_weight <= 0:
      raise ConfigError("config.paradigm.perceptual is set but perceptual_weight <= 0.")
    validate_model_and_data(config)

  # -- parameters and optimizers --------------------------------------------------
  def _dummy(self, batch: int = 1):
    return jnp.zeros((batch,) + self.image_shape, jnp.float32)

  def init_variables(self, rng):
    r_ae, r_d = jax.random.split(rng)
    variables = dict(self.ae.init(r_ae, self._dummy(), train=False))
    ae_params = variables.pop("params")
    if self.config.model.inflate_from and not building_shapes_only():
      ae_params = self.inflated(ae_params)
    params = {"autoencoder": ae_params,
              "discriminator": self.disc.init(r_d, frames(self._dummy()))["params"]}
    return params, variables  # variables: non-gradient collections ("vq_stats")

  def inflated(self, ae_params):
    """``ae_params`` (boxed, maybe traced) with the encoder and decoder inflated from
    the 2D run ``config.model.inflate_from`` (the 1x1 projections and the quantizer stay
    as initialised). The run is read by a host callback when the initialisation runs,
    not while it is traced for shapes: a resumed run, or one sampled where the 2D run is
    absent, never reads it."""
    workdir = self.config.model.inflate_from
    unboxed = nn.meta.unbox(ae_params)
    target = {k: unboxed[k] for k in ("encoder", "decoder")}
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), target)
    sizes = tok_models.network_sizes(self.config.model)
    channels = self.image_shape[-1]

    def load():
      # The callback runs on the host while the sharded init executes: the 2D run is
      # read unsharded, outside the init's mesh (whose abstract mesh would make its
      # eager activation constraints demand mesh-sharded inputs).
      with jax.set_mesh(None):
        return inflation.inflate_run(workdir, shapes, sizes, channels)

    values = jax.pure_callback(load, shapes)
    boxed = dict(ae_params)
    for k in target:
      boxed[k] = jax.tree.map(
          lambda b, v: b.replace_boxed(v) if isinstance(b, nn.meta.AxisMetadata) else v,
          ae_params[k], values[k], is_leaf=lambda b: isinstance(b, nn.meta.AxisMetadata))
    return boxed

  def init_params(self, rng):
    return self.init_variables(rng)[0]

  def init_model_state(self, rng):
    return self.init_variables(rng)[1]

  def make_optimizer(self):
    cfg = self.config
    return optim.per_network_optimizer(
        cfg.optim, cfg.train.num_steps,
        {"autoencoder": 1.0, "discriminator": cfg.paradigm.disc_lr_ratio})

  # -- losses ---------------------------------------------------------------------
  def reconstruction_loss(self, x, x_rec):
    """Pixel (l1/l2) plus weighted perceptual loss, averaged over the batch."""
    p = self.config.paradigm
    diff = x_rec - x
    rec = jnp.mean(jnp.abs(diff)) if p.rec_loss == "l1" else jnp.mean(diff ** 2)
    if self.perceptual is None:
      return rec, {"rec_loss": rec}
    perc = jnp.mean(self.perceptual(frames(x), frames(x_rec)))  # videos: per frame
    return rec + p.perceptual_weight * perc, {"rec_loss": rec, "perceptual_loss": perc}

  def disc_logits(self, d_params, x):
    """PatchGAN logits of images, or of every frame of videos (a 2-D discriminator)."""
    return self.disc.apply({"params": d_params}, frames(x))

  def _adaptive_weight(self, ae_params, z, x, x_rec, d_params):
    """lambda = ||grad_L rec|| / (||grad_L g|| + 1e-4) at the decoder's last layer L,
    clipped to [0, 1e4] and held constant (taming's calculate_adaptive_weight)."""
    path = self.ae_last_layer(ae_params)
    kernel = _get(ae_params, path)

    def decode_with(k):
      return self.ae.apply({"params": _set(ae_params, path, k)}, z, method="decode")

    _, vjp = jax.vjp(decode_with, kernel)
    x_rec = jax.lax.stop_gradient(x_rec)
    d_rec = jax.grad(lambda xr: self.reconstruction_loss(x, xr)[0])(x_rec)
    d_g = jax.grad(lambda xr: self.g_loss(self.disc_logits(d_params, xr)))(x_rec)
    return adversarial.adaptive_gan_weight(jnp.linalg.norm(vjp(d_rec)[0]),
                                           jnp.linalg.norm(vjp(d_g)[0]))

  def g_loss(self, logits_fake):
    if self.config.paradigm.disc_loss == "hinge":
      return adversarial.hinge_g_loss(logits_fake)
    return adversarial.nonsaturating_g_loss(logits_fake)

  def d_loss(self, logits_real, logits_fake):
    if self.config.paradigm.disc_loss == "hinge":
      return adversarial.hinge_d_loss(logits_real, logits_fake)
    return adversarial.nonsaturating_d_loss(logits_real, logits_fake)

  def ae_last_layer(self, ae_params) -> Tuple[str, ...]:
    """Path of the decoder's final kernel (the layer VQGAN's adaptive weight uses)."""
    return nets.last_layer_path(ae_params["decoder"], prefix=("decoder",))

  def generator_loss(self, ae_params, model_state, d_params, x, rng, disc_factor):
    p = self.config.paradigm
    r_b, r_enc = jax.random.split(rng)
    variables = {"params": ae_params, **model_state}
    h = self.ae.apply(variables, x, method="encode_features")
    (z, aux), new_state = self.ae.apply(
        variables, h, True, r_b, method="bottleneck_forward", mutable=list(model_state))
    x_rec = self.ae.apply(variables, z, method="decode")
    nll, metrics = self.reconstruction_loss(x, x_rec)
    loss = nll + p.bottleneck_weight * aux["loss"]
    metrics = dict(metrics, bottleneck_loss=aux["loss"],
                   **{k: v for k, v in aux.items() if k not in ("indices", "loss")
                      and jnp.ndim(v) == 0})
    if self.use_gan:
      g = self.g_loss(self.disc_logits(jax.lax.stop_gradient(d_params), x_rec))
      if p.adaptive_weight:
        lam = self._adaptive_weight(ae_params, jax.lax.stop_gradient(z), x, x_rec, d_params)
      else:
        lam = jnp.float32(1.0)
      loss = loss + disc_factor * p.disc_weight * lam * g
      metrics.update(g_loss=g, gan_weight=lam)
    metrics["psnr"] = psnr(x, x_rec)
    return loss, (x_rec, dict(new_state), metrics)

  def loss(self, params, batch, rng, train: bool = True, model_state=None):
    """Generator loss at full GAN weight (quantizer statistics from ``model_state``, or
    fresh ones)."""
    del train
    if model_state is None:
      model_state = self.init_model_state(jax.random.PRNGKey(0))
    loss, (_, _, metrics) = self.generator_loss(
        params["autoencoder"], model_state, params["discriminator"], batch["image"], rng,
        1.0)
    return loss, metrics

  # -- the step -------------------------------------------------------------------
  def train_step(self, state: TrainState, batch, *, tx, schedule
                 ) -> Tuple[TrainState, Dict[str, jax.Array]]:
    p = self.config.paradigm
    if self.config.optim.grad_accum != 1:
      raise ConfigError("The tokenizer paradigm does not support optim.grad_accum yet.")
    rng = jax.random.fold_in(state.rng, state.step)
    x = batch["image"]
    ae_p, d_p = state.params["autoencoder"], state.params["discriminator"]
    disc_factor = adversarial.adopt_weight(1.0, state.step, p.disc_start)
    with jax.named_scope("generator"):
      (g_total, (x_rec, model_state, metrics)), g_grads = jax.value_and_grad(
          self.generator_loss, has_aux=True)(ae_p, state.model_state, d_p, x, rng,
                                               disc_factor)
    if self.use_gan:
      with jax.named_scope("discriminator"):
        x_fake = jax.lax.stop_gradient(x_rec)

        def d_loss_fn(d):
          real, fake = self.disc_logits(d, x), self.disc_logits(d, x_fake)
          return disc_factor * self.d_loss(real, fake), (jnp.mean(real), jnp.mean(fake))

        (d_total, (lr_, lf_)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_p)
      metrics.update(d_loss=d_total, logits_real=lr_, logits_fake=lf_)
    else:
      d_grads = jax.tree.map(jnp.zeros_like, d_p)
    grads = {"autoencoder": g_grads, "discriminator": d_grads}
    metrics = dict(metrics, loss=g_total, grad_norm=optax.global_norm(g_grads),
                   lr=schedule(state.step))
    return step_lib.apply_gradients(self.config.optim, state, grads, tx,
                                    model_state=model_state), metrics

  # -- "sampling" = reconstruction --------------------------------------------------
  def reconstruct(self, params, images, model_state=None):
    """Reconstructions of ``images`` in [-1, 1] (deterministic bottleneck)."""
    variables = {"params": params["autoencoder"], **(model_state or {})}
    x_rec, _ = self.ae.apply(variables, images, train=False)
    return jnp.clip(x_rec, -1.0, 1.0)

  def sample(self, params, rng, labels, *, images=None, model_state=None, **unused):
    """Reconstructions of ``images`` (the shared loop passes a fixed real batch)."""
    del rng, labels, unused
    if images is None:
      raise ValueError("A tokenizer samples by reconstructing: pass images=...")
    return self.reconstruct(params, images, model_state)

  def preview(self, state, rng, num):
    """Rows of real test images, each followed by a row of their reconstructions."""
    del rng
    k = max(num // 2, 1)
    x = jnp.asarray(self._real_images(k))
    rec = self.reconstruct(state.params, x, state.model_state)
    cols = self.preview_columns(num)
    pairs = jnp.stack([x.reshape((-1, cols) + x.shape[1:]),
                       rec.reshape((-1, cols) + x.shape[1:])], axis=1)
    return pairs.reshape((-1,) + x.shape[1:])

  def preview_columns(self, num):
    k = max(num // 2, 1)
    return 10 if k % 10 == 0 else k

  def _real_images(self, num: int) -> np.ndarray:
    """The first ``num`` preprocessed eval-split images (float32, [-1, 1])."""
    from jaxgen.data import datasets, preprocess  # pylint: disable=g-import-not-at-top
    images, labels = datasets.load_arrays(self.dataset, self.config.data.eval_split, num)
    pp = preprocess.parse(self.config.data.pp)
    rng = np.random.default_rng(0)
    return np.stack([pp({"image": im, "label": int(y)}, rng)["image"]
                     for im, y in zip(images, labels)]).astype(np.float32)

  def model_summary(self) -> Dict[str, Any]:
    return dict(module=self.ae, inputs=(self._dummy(),), fixed_params=0)


def build_perceptual(p, dataset):
  """The perceptual distance of ``config.paradigm``: LPIPS from a weights file, or the
  dataset classifier's feature maps (trained once with ``perceptual_seed``, cached).

  A ``dataset`` that is only described (`datasets.describe`) gets an untrained
  classifier of the same shapes: the step compiles alike, but is not for training.
  """
  if p.perceptual == "lpips":
    return perceptual.lpips_loss(perceptual.load_lpips_params(p.perceptual_weights))
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import classifier  # pylint: disable=g-import-not-at-top
  if datasets.has_data(dataset):
    params = classifier.load_or_train(dataset, seed=p.perceptual_seed).params
  else:
    logging.warning("The %s data is only described: the perceptual loss uses an "
                    "untrained classifier (for compiling, not training).", dataset.name)
    x = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.uint8)
    params = classifier.FeatureCNN(dataset.num_classes).init(
        jax.random.PRNGKey(p.perceptual_seed), x)["params"]
  return perceptual.PerceptualLoss(
      perceptual.classifier_feature_fn(params, dataset.num_classes))


def frames(x):
  """Videos (N, T, H, W, C) as frames (N T, H, W, C) for the 2-D networks (PatchGAN,
  perceptual); images (N, H, W, C) unchanged."""
  return x.reshape((-1,) + x.shape[2:]) if x.ndim == 5 else x


def validate_model_and_data(config) -> None:
  """The checks that need ``config.model``'s sizes and the data's shape: an "lfq"
  bottleneck's width is log2 of its codebook; a causal 3D tokenizer trains on videos of
  a frame count its temporal factor allows (`nets.check_num_frames`); a 2D one on
  images; ``inflate_from`` only for a causal 3D tokenizer; no dataset-classifier
  perceptual loss on videos. Data that cannot be described here (a missing folder) is
  left to the data layer."""
  m = config.model
  try:
    sizes = tok_models.network_sizes(m)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  arch = sizes.get("arch", "conv")
  what = f"config.model.variant={m.get('variant')!r}" if m.get("variant") else "config.model"
  if m.bottleneck == "lfq":
    k, d = int(m.codebook_size or 0), tok_models.bottleneck_width(m)
    bits = k.bit_length() - 1
    if k < 2 or k != 2 ** bits:
      raise ConfigError(f"config.model.codebook_size={m.codebook_size}: an 'lfq' bottleneck "
                        f"has 2^d codes; use a power of two (e.g. 2^{d} = {2 ** d}).")
    if d != bits:
      raise ConfigError(
          f"config.model.bottleneck='lfq' quantizes each channel to one bit, so its width "
          f"config.model.embed_dim={d} (None = the nets' z_channels) must equal "
          f"log2(config.model.codebook_size={k}) = {bits}: set embed_dim={bits}, or "
          f"codebook_size={2 ** d}.")
    if m.get("code_dim") not in (None, d):
      raise ConfigError(f"config.model.code_dim={m.code_dim} with bottleneck='lfq': LFQ "
                        f"codes have embed_dim={d} bits; set code_dim=None.")
  if m.get("inflate_from") and arch != "causal3d":
    raise ConfigError(f"config.model.inflate_from={m.inflate_from!r} inflates a 2D tokenizer "
                      f"into a causal 3D one, but {what} is a {arch!r} autoencoder; use a "
                      "'causal3d' variant (e.g. mfmnist_causal_tiny) or clear inflate_from.")
  shape = _data_shape(config)
  if shape is None:
    return
  video = len(shape) == 4
  data = f"config.data.name={config.data.name!r}"
  if arch == "causal3d":
    if not video:
      raise ConfigError(
          f"{what} is a causal 3D video tokenizer, but {data} gives images of shape "
          f"{shape}; train it on videos (e.g. moving_fashion_mnist), or make each image a "
          "one-frame video with 'as_video|' at the front of config.data.pp.")
    ft = nets.temporal_downsampling_factor(sizes)
    try:
      nets.check_num_frames(shape[0], ft)
    except ValueError:
      valid = ", ".join(str(1 + ft * j) for j in range(1, 5))
      raise ConfigError(
          f"{data} gives {shape[0]}-frame videos, but {what} halves time "
          f"(temporal_downsample={tuple(sizes.get('temporal_downsample', ()))}, ft={ft}): "
          f"the causal tokenizer takes 1 + {ft} k frames ({valid}, ...). Set "
          f"config.data.num_frames to one of them, or use a variant without temporal "
          f"downsampling (mfmnist_causal_tiny_ft1 takes any count).") from None
  elif video:
    raise ConfigError(
        f"{data} gives videos of shape {shape}, but {what} is a 2D {arch!r} autoencoder; "
        "use a 'causal3d' variant for videos (model causal_vqgan / causal_kl_vae, e.g. "
        "variant mfmnist_causal_tiny), or train on images.")
  if video and config.paradigm.perceptual == "classifier":
    raise ConfigError(
        "config.paradigm.perceptual='classifier' uses a classifier of the dataset's "
        f"images, and {data} holds videos; use perceptual='lpips' (applied per frame) or "
        "'none'.")


def _data_shape(config) -> Optional[Tuple[int, ...]]:
  """One preprocessed example's shape (None when the data cannot be described)."""
  from jaxgen.data import datasets, preprocess  # pylint: disable=g-import-not-at-top
  try:
    spec = datasets.describe(config.data)
  except DataError:
    return None
  return tuple(preprocess.preprocessed_shape(config.data.pp, spec.image_shape))


def psnr(x, y, data_range: float = 2.0):
  """Peak signal-to-noise ratio in dB of images in [-1, 1], averaged over the batch."""
  mse = jnp.mean((x - y) ** 2, axis=tuple(range(1, x.ndim)))
  return jnp.mean(10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-10)))


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _set(tree[path[0]], path[1:], value)
  return out
