"""Cross-entropy over token predictions, on a subset of positions (masked modelling)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cross_entropy(logits, targets, mask, label_smoothing: float = 0.0):
  """Mean over the positions where ``mask`` is True of
  ``(1 - eps) * -log p(target) + eps * mean_v(-log p(v))`` (label smoothing as in MAGE
  and timm), and the accuracy of the argmax there.

  Args:
    logits: (..., V) float. targets: (...) int. mask: (...) bool; positions outside it
      contribute nothing (their targets may be anything).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  w = mask.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  acc = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * w) / denom
  return jnp.sum(nll * w) / denom, acc
