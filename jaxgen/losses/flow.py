"""Rectified-flow (flow matching with straight paths) losses and time sampling.

``x_t = (1 - t) x_0 + t * eps``, target velocity ``v = eps - x_0`` (Liu et al. 2022;
Esser et al. 2024, "SD3"). Time is sampled uniformly or logit-normally; an optional
weighting multiplies the per-example loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TIME_SAMPLINGS = ("uniform", "logit_normal", "mode")
WEIGHTINGS = ("none", "logit_normal")


def interpolate(x0, eps, t_b):
  t = t_b.reshape((-1,) + (1,) * (x0.ndim - 1))
  return (1.0 - t) * x0 + t * eps


def sample_time(rng, batch: int, method: str = "uniform", mean: float = 0.0,
                std: float = 1.0, mode_scale: float = 1.29):
  """Training times in (0, 1).

  ``uniform``: U(0, 1). ``logit_normal``: sigmoid(N(mean, std^2)) (SD3's lognorm).
  ``mode``: SD3's mode sampling with heavy tails, ``f(u) = 1 - u - s (cos^2(pi u/2) - 1 + u)``.
  """
  if method == "uniform":
    return jax.random.uniform(rng, (batch,), minval=1e-5, maxval=1.0 - 1e-5)
  if method == "logit_normal":
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
  if method == "mode":
    u = jax.random.uniform(rng, (batch,))
    return 1.0 - u - mode_scale * (jnp.cos(jnp.pi * u / 2) ** 2 - 1.0 + u)
  raise ValueError(f"Unknown time sampling {method!r}; use one of {TIME_SAMPLINGS}.")


def logit_normal_density(t, mean: float = 0.0, std: float = 1.0):
  """Density of sigmoid(N(mean, std^2)) at t; as a loss weight on uniform t it gives
  the same expected loss as logit-normal sampling."""
  logit = jnp.log(t) - jnp.log1p(-t)
  return jnp.exp(-0.5 * ((logit - mean) / std) ** 2) / (
      std * jnp.sqrt(2 * jnp.pi) * t * (1.0 - t))


def weight(t_b, method: str = "none", mean: float = 0.0, std: float = 1.0):
  if method == "none":
    return jnp.ones_like(t_b)
  if method == "logit_normal":
    return logit_normal_density(t_b, mean, std)
  raise ValueError(f"Unknown loss weighting {method!r}; use one of {WEIGHTINGS}.")


def velocity_loss(pred_v, x0, eps, w_b=None):
  """Per-example mean squared velocity error, weighted and averaged over the batch.

  Returns ``(loss, per_example)``.
  """
  if pred_v.shape != x0.shape:  # e.g. a 2C-channel (learn_sigma) output would broadcast
    raise ValueError(f"Velocity of shape {pred_v.shape} for data of shape {x0.shape}.")
  per_example = jnp.mean(jnp.square(pred_v.astype(jnp.float32) - (eps - x0)),
                         axis=tuple(range(1, x0.ndim)))
  if w_b is not None:
    per_example = per_example * w_b
  return jnp.mean(per_example), per_example
