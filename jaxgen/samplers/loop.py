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

StepFn = Callable[..., Any]


def run_loop(step_fn: StepFn, carry: Any, num_steps: int, *, rng: Any = None,
             unroll: int = 1) -> Any:
  """Runs ``carry = step_fn(carry, i)`` for ``i = 0..num_steps-1`` under ``lax.scan``.

  With ``rng`` (stochastic samplers: DDPM, DDIM with eta > 0), the step is
  ``step_fn(carry, i, key_i)`` with ``key_i = fold_in(rng, i)``: each step draws its
  own noise, the same in the scan and in `run_loop_python`.
  """

  def body(c, i):
    if rng is None:
      return step_fn(c, i), None
    return step_fn(c, i, jax.random.fold_in(rng, i)), None

  carry, _ = jax.lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32),
                          unroll=unroll)
  return carry


def run_loop_python(step_fn: StepFn, carry: Any, num_steps: int, *, rng: Any = None) -> Any:
  """The same loop in plain Python (reference for tests and debugging)."""
  for i in range(num_steps):
    i = jnp.int32(i)
    carry = step_fn(carry, i) if rng is None else step_fn(
        carry, i, jax.random.fold_in(rng, i))
  return carry
