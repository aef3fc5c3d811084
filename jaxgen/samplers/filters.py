"""Logit filters for sampling: top-k and top-p (nucleus). Each returns logits with the
filtered-out entries set to -inf, so ``jax.random.categorical`` never draws them.
Shared by the MaskGIT and autoregressive samplers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_k_logits(logits, k: int):
  """Keeps the ``k`` largest logits per position (others -> -inf); ``k <= 0`` = all."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_logits(logits, p: float):
  """Nucleus filter (Holtzman et al. 2020): keeps the most likely entries, in order of
  probability, while the probability mass *before* each is below ``p``, i.e. the
  smallest set whose mass reaches ``p`` (the most likely entry is always kept; entries
  tied with the last kept one are kept too). ``p >= 1`` = all.
  """
  if p >= 1.0:
    return logits
  if p <= 0.0:
    raise ValueError(f"top_p={p} must be in (0, 1].")
  logits = logits.astype(jnp.float32)
  sorted_desc = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < p
  cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, -jnp.inf, logits)
