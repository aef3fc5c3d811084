"""Diagonal Gaussian posterior of a KL-VAE (LDM's ``DiagonalGaussianDistribution``).

The encoder outputs ``2 * z`` channels (``double_z``): mean and log-variance, split on the
last (channel) axis. The log-variance is clamped to [-30, 20]; KL and NLL are summed over
all non-batch axes and returned per example (LDM's convention).
"""

from __future__ import annotations

import math
from typing import Optional

import flax
import jax
import jax.numpy as jnp

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@flax.struct.dataclass
class DiagonalGaussian:
  """N(mean, exp(logvar)) per element; a pytree, so it passes through ``jit``."""
  mean: jax.Array
  logvar: jax.Array
  deterministic: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def from_moments(cls, moments, deterministic: bool = False) -> "DiagonalGaussian":
    """From encoder output (..., 2z): mean = first z channels, logvar = the rest."""
    if moments.shape[-1] % 2:
      raise ValueError(f"moments need an even channel count, got {moments.shape}")
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    logvar = jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)
    if deterministic:
      logvar = jnp.full_like(logvar, -jnp.inf)
    return cls(mean, logvar, deterministic)

  @property
  def std(self):
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self):
    return jnp.exp(self.logvar)

  def sample(self, rng):
    if self.deterministic:
      return self.mean
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self):
    return self.mean

  def kl(self, other: Optional["DiagonalGaussian"] = None):
    """KL(self || other) per example, summed over non-batch axes; other = N(0, I)."""
    if self.deterministic:
      return jnp.zeros(self.mean.shape[:1], jnp.float32)
    if other is None:
      terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
    else:
      terms = (jnp.square(self.mean - other.mean) / other.var + self.var / other.var
               - 1.0 - self.logvar + other.logvar)
    return 0.5 * _sum_per_example(terms)

  def nll(self, x):
    """-log N(x; mean, var) per example, summed over non-batch axes."""
    if self.deterministic:
      return jnp.zeros(self.mean.shape[:1], jnp.float32)
    terms = math.log(2.0 * math.pi) + self.logvar + jnp.square(x - self.mean) / self.var
    return 0.5 * _sum_per_example(terms)


def _sum_per_example(x):
  return x.reshape(x.shape[0], -1).sum(axis=1)
