"""The one sampler loop: ``lax.scan`` over steps with a carry.

A sampler is a step function ``step_fn(carry, i) -> carry`` (the model is a callback
inside it); the loop does not know whether the carry holds an image being
integrated, a token grid being unmasked or a KV cache. Compile time does not grow with
the number of steps because the body is traced once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array], Any]


def run_loop(step_fn: StepFn, carry: Any, num_steps: int, *, unroll: int = 1) -> Any:
  """Runs ``carry = step_fn(carry, i)`` for ``i = 0..num_steps-1`` under ``lax.scan``."""

  def body(c, i):
    return step_fn(c, i), None

  carry, _ = jax.lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32),
                          unroll=unroll)
  return carry


def run_loop_python(step_fn: StepFn, carry: Any, num_steps: int) -> Any:
  """The same loop in plain Python (reference for tests and debugging)."""
  for i in range(num_steps):
    carry = step_fn(carry, jnp.int32(i))
  return carry
