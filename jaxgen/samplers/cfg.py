"""Classifier-free guidance: the one rule and the one schedule every paradigm uses.

`combine` is the rule, ``uncond + scale * (cond - uncond)`` on the two halves of a
doubled batch ``[cond; null]`` (`with_null`); `guided` wraps any conditional callable
(velocity, noise, logits) to run both halves as one batch and combine them, and with
``scale == 1`` returns the conditional output exactly, without the unconditional pass.
`guidance_scale` is the scale at each step of a sampler (constant, or growing
linearly).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

CFG_SCHEDULES = ("constant", "linear")


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
    return jax.tree.map(lambda o: combine(o, scale, channels), out)

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


def combine(out, scale, channels=None):
  """Guidance on a doubled batch's output ``[cond; uncond]`` (2B rows):
  ``uncond + scale * (cond - uncond)``, on the first ``channels`` channels of the last
  axis only when given (the rest from the conditional half)."""
  cond, uncond = jnp.split(out, 2, axis=0)
  if channels is None:
    return uncond + scale * (cond - uncond)
  k = channels
  guided_part = uncond[..., :k] + scale * (cond[..., :k] - uncond[..., :k])
  return jnp.concatenate([guided_part, cond[..., k:]], axis=-1)


def guidance_scale(i, num_steps: int, scale, schedule: str = "constant"):
  """The guidance scale at step ``i`` of ``num_steps``: ``constant``, or ``linear``
  ``1 + (scale - 1) (i + 1) / num_steps``, which reaches ``scale`` at the last step
  (MUSE-style: early steps fix the layout with little guidance).

  ``i`` is a Python int (a loop unrolled at trace time: Python arithmetic) or traced
  (a ``lax.scan`` step: float32). A sampler whose first step is unguided counts it
  as step -1 of the others: VAR's rule ``1 + (scale - 1) k / (S - 1)`` over scales
  ``k = 0..S-1`` is ``guidance_scale(k - 1, S - 1, ...)``.
  """
  if schedule == "constant":
    return scale
  if schedule == "linear":
    if isinstance(i, int):
      return 1.0 + (scale - 1.0) * ((i + 1) / num_steps)
    return 1.0 + (scale - 1.0) * ((jnp.asarray(i, jnp.float32) + 1.0) / num_steps)
  raise ValueError(f"Unknown guidance schedule {schedule!r}; use one of "
                   f"{', '.join(CFG_SCHEDULES)}.")
