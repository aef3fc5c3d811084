"""Classifier-free guidance as one wrapper shared by every paradigm.

``model_fn(x, cond) -> output`` is any conditional callable (velocity, logits, ...);
the wrapper runs the conditional and unconditional inputs as one batch and returns
``uncond + scale * (cond - uncond)``. With ``scale == 1`` it returns the conditional
output exactly, without the unconditional pass.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def guided(model_fn: Callable[..., Any], null_cond: Any, scale) -> Callable[..., Any]:
  """Wraps ``model_fn(x, *args, cond)`` (cond last) with classifier-free guidance.

  Args:
    model_fn: conditional model call; ``cond`` is its last positional argument.
    null_cond: the unconditional input, broadcastable to ``cond`` (e.g. the null label).
    scale: guidance scale (a Python float, or an array for schedules inside a scan).
  """
  if isinstance(scale, (int, float)) and scale == 1.0:
    return model_fn

  def call(x, *args):
    *rest, cond = args
    null = jax.tree.map(lambda c, n: jnp.broadcast_to(n, c.shape).astype(c.dtype),
                        cond, null_cond)
    both_x = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=0), (x, *rest))
    both_c = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null)
    out = model_fn(*both_x, both_c)
    return jax.tree.map(lambda o: _combine(o, scale), out)

  return call


def _combine(out, scale):
  cond, uncond = jnp.split(out, 2, axis=0)
  return uncond + scale * (cond - uncond)
