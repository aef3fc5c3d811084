"""Classifier-free guidance as one wrapper shared by every paradigm.

``model_fn(x, cond) -> output`` is any conditional callable (velocity, logits, ...);
the wrapper runs the conditional and unconditional inputs as one batch and returns
``uncond + scale * (cond - uncond)``. With ``scale == 1`` it returns the conditional
output exactly, without the unconditional pass.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp


def guided(model_fn: Callable[..., Any], null_cond: Any, scale,
           channels: Optional[int] = None) -> Callable[..., Any]:
  """Wraps ``model_fn(x, *args, cond)`` (cond last) with classifier-free guidance.

  Args:
    model_fn: conditional model call; ``cond`` is its last positional argument.
    null_cond: the unconditional input, broadcastable to ``cond`` (e.g. the null label).
    scale: guidance scale (a Python float, or an array for schedules inside a scan).
    channels: guide only the first ``channels`` channels (last axis) of the output and
      take the rest from the conditional pass, as the official DiT's
      ``forward_with_cfg`` does (its learned variance; and by default only 3 of the 4
      latent channels). None: guide every channel.
  """
  if isinstance(scale, (int, float)) and scale == 1.0:
    return model_fn

  def call(x, *args):
    *rest, cond = args
    both_x = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=0), (x, *rest))
    out = model_fn(*both_x, with_null(cond, null_cond))
    return jax.tree.map(lambda o: _combine(o, scale, channels), out)

  return call


def batch_size(cond) -> int:
  """Leading dimension of a condition (a label array or a dict of arrays)."""
  return jax.tree.leaves(cond)[0].shape[0]


def with_null(cond, null_cond, cfg_scale: float = 2.0):
  """The guided batch ``[cond; null]`` (2B rows; any pytree condition, ``null_cond``
  broadcast to each leaf), or ``cond`` itself when ``cfg_scale == 1`` (no guidance)."""
  if isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0:
    return cond
  null = jax.tree.map(lambda c, n: jnp.broadcast_to(n, c.shape).astype(c.dtype),
                      cond, null_cond)
  return jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null)


def _combine(out, scale, channels=None):
  cond, uncond = jnp.split(out, 2, axis=0)
  if channels is None:
    return uncond + scale * (cond - uncond)
  k = channels
  guided_part = uncond[..., :k] + scale * (cond[..., :k] - uncond[..., :k])
  return jnp.concatenate([guided_part, cond[..., k:]], axis=-1)
