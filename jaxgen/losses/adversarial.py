"""GAN losses for tokenizers and GANs: hinge, non-saturating, R1, VQGAN's adaptive weight.

Conventions follow taming-transformers ``losses/vqperceptual.py``: the discriminator
losses average the real and fake terms (factor 0.5); the hinge generator loss is
``-mean(D(fake))``. Logits may have any shape (per-patch PatchGAN maps included); the
means run over every element.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def hinge_d_loss(logits_real, logits_fake):
  """0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake))))."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real))
                + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake):
  """-mean(D(fake)) (taming's generator loss for both D losses)."""
  return -jnp.mean(logits_fake)


def nonsaturating_d_loss(logits_real, logits_fake):
  """0.5 * (mean(softplus(-D(real))) + mean(softplus(D(fake)))): binary cross-entropy
  with real = 1, fake = 0 (taming's ``vanilla_d_loss``)."""
  return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real))
                + jnp.mean(jax.nn.softplus(logits_fake)))


def nonsaturating_g_loss(logits_fake):
  """mean(softplus(-D(fake))) = -mean(log sigmoid(D(fake))) (Goodfellow et al. 2014)."""
  return jnp.mean(jax.nn.softplus(-logits_fake))


def r1_penalty(d_fn: Callable[[jax.Array], jax.Array], real, return_logits: bool = False):
  """R1 (Mescheder et al. 2018): mean over examples of ||d D(x) / d x||^2 at real x.

  ``d_fn`` maps images to logits of any shape (summed per example, so each example's
  gradient is its own only if D treats examples independently: no BatchNorm). The
  usual weight gamma / 2 is applied by the caller.
  """
  logits, vjp = jax.vjp(d_fn, real)
  (grad,) = vjp(jnp.ones_like(logits))
  penalty = jnp.mean(jnp.sum(jnp.square(grad.astype(jnp.float32)).reshape(
      real.shape[0], -1), axis=1))
  return (penalty, logits) if return_logits else penalty


def adaptive_gan_weight(rec_grad_norm, g_grad_norm, max_weight: float = 1e4,
                        eps: float = 1e-4):
  """VQGAN's lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + eps), clipped to
  [0, max_weight], without gradient (taming's ``calculate_adaptive_weight``; the
  ``discriminator_weight`` factor is the caller's). G_L is the decoder's last layer;
  the norms are e.g. ``optax.global_norm`` of the two gradients w.r.t. its kernel."""
  w = rec_grad_norm / (g_grad_norm + eps)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def adopt_weight(weight, step, start, value: float = 0.0):
  """``value`` before ``step`` reaches ``start`` (the discriminator start), else
  ``weight`` (taming: ``weight if global_step >= threshold else value``). Traceable."""
  return jnp.where(jnp.asarray(step) < start, value, weight)


GAN_LOSSES = ("hinge", "non_saturating")


def discriminator_loss(kind: str, logits_real, logits_fake):
  """The GAN papers' discriminator loss: the real term's mean plus the fake term's mean.

  ``hinge``: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))) (SAGAN / BigGAN);
  ``non_saturating``: mean(softplus(-D(real))) + mean(softplus(D(fake))) (StyleGAN2).
  Twice the averaged taming losses above, so an R1 weight gamma means what it means in
  StyleGAN2 (``gamma / 2 * E||grad D||^2`` added to this).
  """
  if kind == "hinge":
    return 2.0 * hinge_d_loss(logits_real, logits_fake)
  if kind == "non_saturating":
    return 2.0 * nonsaturating_d_loss(logits_real, logits_fake)
  raise ValueError(f"Unknown GAN loss {kind!r}; use one of {', '.join(GAN_LOSSES)}.")


def generator_loss(kind: str, logits_fake):
  """``hinge``: -mean(D(fake)); ``non_saturating``: mean(softplus(-D(fake)))."""
  if kind == "hinge":
    return hinge_g_loss(logits_fake)
  if kind == "non_saturating":
    return nonsaturating_g_loss(logits_fake)
  raise ValueError(f"Unknown GAN loss {kind!r}; use one of {', '.join(GAN_LOSSES)}.")
