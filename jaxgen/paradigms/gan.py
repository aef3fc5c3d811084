"""GAN: class-conditional adversarial training of a generator and a discriminator.

Model: a registered GAN pair (``biggan``: BigGAN-lite generator with conditional
GroupNorm, projection discriminator; ``jaxgen.models.gan``); parameters are
``{"generator": ..., "discriminator": ...}`` in the one ``TrainState``, with one
``optax.multi_transform`` holding an optimizer per network
(``optim.per_network_optimizer``; the discriminator's lr is ``optim.lr *
paradigm.disc_lr_ratio``).

One jitted, sharded step does ``d_steps`` discriminator updates, then ``g_steps``
generator updates against the updated discriminator. Each update touches only its
own network (``optim.update_networks``): the other network's parameters and
optimizer state are left exactly as they were. Every D update uses the step's real
batch with fresh latents; fakes take the real batch's labels (so the class mix
follows the data). Per network, Adam counts its own updates, so with ``d_steps > 1``
the discriminator's warm-up ends ``d_steps`` times sooner.

Losses (``paradigm.loss``): hinge or non-saturating, in the papers' convention
(real mean + fake mean). Lazy R1 (StyleGAN2): on steps with ``step % r1_every == 0``
the first D update adds ``r1_gamma / 2 * r1_every * E||grad_x D(x)||^2`` at the real
images D sees (after augmentation), chosen by ``lax.cond`` inside the step (only R1's
gradient is under the cond; XLA's CPU backend runs backward convolutions inside control
flow 20-60x slower, so CPU configs use ``r1_every=1``). DiffAugment
(``paradigm.diffaug``, e.g. ``"translation,cutout"``) transforms real and fake images,
independently drawn, before every D evaluation, differentiably for the G update.

EMA: only the generator is averaged (``optim.ema_decay``); ``ema_params
["discriminator"]`` mirrors the live discriminator, so EMA weights are a complete pair.
Sampling is one generator pass on EMA weights; the null label draws a random class.

Metrics: ``d_loss`` (adversarial part), ``d_real`` / ``d_fake`` (mean logits of the
D update), ``r1`` (``r1_every`` times the penalty on R1 steps and 0 between, so its
mean over whole R1 periods is the mean penalty), ``g_loss`` (= ``loss``), gradient
norms and the generator's lr.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import adversarial, augment
from jaxgen.paradigms.base import Paradigm
from jaxgen.samplers import options as options_lib
from jaxgen.train import optim
from jaxgen.train.state import TrainState

GAN_MODELS = ("biggan",)
@registry.PARADIGMS.register("gan")
class GANParadigm(Paradigm):
  """config.paradigm: loss, d_steps, g_steps, disc_lr_ratio, r1_gamma, r1_every, diffaug."""

  Options = options_lib.NoOptions
  FIELDS = dict(
      loss="hinge",              # hinge | non_saturating
      d_steps=1,                 # discriminator updates per step (then g_steps G updates)
      g_steps=1,
      disc_lr_ratio=1.0,         # discriminator lr = optim.lr * this
      r1_gamma=0.1,              # R1 weight (gamma / 2 * E||grad D(real)||^2); 0 = off
      r1_every=16,               # lazy R1: every k steps, scaled by k (StyleGAN2)
      diffaug="",                # DiffAugment ops, comma list of color, translation, cutout
  )

  default_params = "ema"

  def __init__(self, config, dataset, **frozen):
    super().__init__(config, dataset, **frozen)
    try:
      self.model = registry.MODELS.get(config.model.name)(
          config.model, image_shape=self.image_shape, num_classes=self.num_classes,
          dtype=self.compute_dtype)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    self.latent_dim = self.model.generator.latent_dim
    self.policy = augment.parse_policy(config.paradigm.diffaug)
    self.num_labels = max(self.num_classes, 1)

  @classmethod
  def validate_config(cls, config) -> None:
    p = config.paradigm
    if config.model.name not in GAN_MODELS:
      raise ConfigError(f"config.model.name={config.model.name!r} is not a GAN pair; the "
                        f"gan paradigm needs one of {', '.join(GAN_MODELS)}.")
    if p.loss not in adversarial.GAN_LOSSES:
      raise ConfigError(f"config.paradigm.loss={p.loss!r}; use one of "
                        f"{', '.join(adversarial.GAN_LOSSES)}.")
    for field in ("d_steps", "g_steps", "r1_every"):
      if int(p[field]) < 1:
        raise ConfigError(f"config.paradigm.{field}={p[field]} must be >= 1.")
    if p.r1_gamma < 0:
      raise ConfigError(f"config.paradigm.r1_gamma={p.r1_gamma} must be >= 0 (0 = no R1).")
    if p.disc_lr_ratio <= 0:
      raise ConfigError(f"config.paradigm.disc_lr_ratio={p.disc_lr_ratio} must be > 0.")
    try:
      augment.parse_policy(p.diffaug)
    except ValueError as e:
      raise ConfigError(f"config.paradigm.diffaug={p.diffaug!r}: {e}") from None
    if config.optim.grad_accum != 1:
      raise ConfigError("The gan paradigm does not support config.optim.grad_accum != 1; "
                        "use d_steps / g_steps or a smaller batch.")

  # -- parameters and optimizers --------------------------------------------------
  def _dummy_inputs(self, batch: int = 1):
    return jnp.zeros((batch, self.latent_dim), jnp.float32), jnp.zeros((batch,), jnp.int32)

  def init_params(self, rng):
    return self.model.init(rng, *self._dummy_inputs())["params"]

  def make_optimizer(self):
    cfg = self.config
    return optim.per_network_optimizer(
        cfg.optim, cfg.train.num_steps,
        {"generator": 1.0, "discriminator": cfg.paradigm.disc_lr_ratio})

  # -- networks -------------------------------------------------------------------
  def latents(self, rng, batch: int):
    return jax.random.normal(rng, (batch, self.latent_dim), jnp.float32)

  def generate(self, g_params, z, labels):
    return self.model.generator.apply({"params": g_params}, z, labels)

  def discriminate(self, d_params, x, labels):
    return self.model.discriminator.apply({"params": d_params}, x, labels)

  def augment_images(self, rng, x):
    return augment.diff_augment(rng, x, self.policy)

  # -- losses ---------------------------------------------------------------------
  def d_inputs(self, g_params, real, labels, rng):
    """What D sees in an update: augmented reals and augmented (constant) fakes."""
    r_z, r_real, r_fake = jax.random.split(rng, 3)
    fake = jax.lax.stop_gradient(
        self.generate(g_params, self.latents(r_z, real.shape[0]), labels))
    return self.augment_images(r_real, real), self.augment_images(r_fake, fake)

  def d_loss(self, d_params, x_real, x_fake, labels):
    """The adversarial discriminator loss and its figures."""
    logits_real = self.discriminate(d_params, x_real, labels)
    logits_fake = self.discriminate(d_params, x_fake, labels)
    loss = adversarial.discriminator_loss(self.config.paradigm.loss, logits_real,
                                          logits_fake)
    return loss, dict(d_loss=loss, d_real=jnp.mean(logits_real),
                      d_fake=jnp.mean(logits_fake))

  def r1(self, d_params, x_real, labels):
    """R1: mean over examples of ||grad_x D(x)||^2 at the reals D sees."""
    return adversarial.r1_penalty(lambda x: self.discriminate(d_params, x, labels), x_real)

  def d_grads(self, d_params, g_params, real, labels, rng, with_r1=False):
    """Gradients of the D objective. ``with_r1`` (a traced bool, or False) adds
    ``r1_gamma / 2 * r1_every * R1``. Only R1's gradient sits inside ``lax.cond``, so
    the steps without R1 do not pay for a branch (and on XLA's CPU backend, where
    convolutions under control flow are slow, do not slow down)."""
    p = self.config.paradigm
    x_real, x_fake = self.d_inputs(g_params, real, labels, rng)
    grads, metrics = jax.grad(self.d_loss, has_aux=True)(d_params, x_real, x_fake, labels)
    r1 = jnp.float32(0.0)
    if p.r1_gamma > 0 and with_r1 is not False:
      r1_fn = lambda: jax.value_and_grad(self.r1)(d_params, x_real, labels)
      if p.r1_every == 1:
        r1, r1_grads = r1_fn()
      else:
        r1, r1_grads = jax.lax.cond(
            with_r1, r1_fn, lambda: (jnp.float32(0.0), jax.tree.map(jnp.zeros_like, grads)))
      weight = p.r1_gamma / 2 * p.r1_every
      grads = jax.tree.map(lambda g, r: g + weight * r, grads, r1_grads)
    return grads, dict(metrics, r1=r1 * p.r1_every)

  def g_loss(self, g_params, d_params, labels, rng):
    r_z, r_aug = jax.random.split(rng)
    fake = self.generate(g_params, self.latents(r_z, labels.shape[0]), labels)
    logits = self.discriminate(d_params, self.augment_images(r_aug, fake), labels)
    return adversarial.generator_loss(self.config.paradigm.loss, logits), {}

  def loss(self, params, batch, rng, train: bool = True):
    """The generator loss on ``batch``'s labels, with the discriminator's figures."""
    del train
    r_d, r_g = jax.random.split(rng)
    g, _ = self.g_loss(params["generator"], params["discriminator"], batch["label"], r_g)
    x_real, x_fake = self.d_inputs(params["generator"], batch["image"], batch["label"], r_d)
    _, metrics = self.d_loss(params["discriminator"], x_real, x_fake, batch["label"])
    return g, dict(metrics, g_loss=g)

  # -- the step -------------------------------------------------------------------
  def d_update(self, params, opt_state, tx, real, labels, rng, with_r1=False):
    """One discriminator update (``with_r1``: see ``d_grads``)."""
    grads, metrics = self.d_grads(params["discriminator"], params["generator"], real,
                                  labels, rng, with_r1)
    params, opt_state = optim.update_networks(tx, {"discriminator": grads}, opt_state,
                                              params)
    return params, opt_state, dict(metrics, d_grad_norm=optax.global_norm(grads))

  def g_update(self, params, opt_state, tx, labels, rng):
    """One generator update against the current discriminator."""
    (loss, _), grads = jax.value_and_grad(self.g_loss, has_aux=True)(
        params["generator"], params["discriminator"], labels, rng)
    params, opt_state = optim.update_networks(tx, {"generator": grads}, opt_state, params)
    return params, opt_state, dict(g_loss=loss, g_grad_norm=optax.global_norm(grads))

  def train_step(self, state: TrainState, batch, *, tx, schedule
                 ) -> Tuple[TrainState, Dict[str, jax.Array]]:
    p = self.config.paradigm
    rng = jax.random.fold_in(state.rng, state.step)
    r_d, r_g = jax.random.split(rng)
    real, labels = batch["image"], batch["label"]
    params, opt_state = state.params, state.opt_state
    with jax.named_scope("discriminator"):
      for i in range(p.d_steps):
        with_r1 = state.step % p.r1_every == 0 if i == 0 else False
        params, opt_state, m = self.d_update(params, opt_state, tx, real, labels,
                                             jax.random.fold_in(r_d, i), with_r1)
        if i == 0:
          metrics = m  # the first D update's figures (the one that may add R1)
    with jax.named_scope("generator"):
      for i in range(p.g_steps):
        params, opt_state, m = self.g_update(params, opt_state, tx, labels,
                                             jax.random.fold_in(r_g, i))
    metrics.update(m, loss=m["g_loss"], lr=schedule(state.step))
    with jax.named_scope("ema"):
      decay = optim.ema_decay(self.config.optim, state.step)
      ema = {"generator": optim.ema_update(state.ema_params["generator"],
                                           params["generator"], decay),
             "discriminator": params["discriminator"]}
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  # -- sampling -------------------------------------------------------------------
  def sample(self, params, rng, labels, options=None, **overrides):
    """One generator pass: images in [-1, 1] for ``labels``; the null label
    (``num_classes``) draws a random class. A GAN has no sampling options."""
    self.sample_options(options, **overrides)
    r_z, r_y = jax.random.split(rng)
    labels = jnp.asarray(labels, jnp.int32)
    random_labels = jax.random.randint(r_y, labels.shape, 0, self.num_labels)
    labels = jnp.where(labels >= self.num_labels, random_labels, labels)
    return self.generate(params["generator"], self.latents(r_z, labels.shape[0]), labels)

  def model_summary(self) -> Dict[str, Any]:
    """The generator (the network that samples); the discriminator is training-only."""
    return dict(module=self.model.generator, inputs=self._dummy_inputs(), fixed_params=0)
