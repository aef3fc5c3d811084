"""The one sampler loop: ``lax.scan`` over steps with a carry.

A sampler is a step function ``step_fn(carry, i) -> carry`` (the model is a callback
inside it); the loop does not know whether the carry holds an image being
integrated, a token grid being unmasked or a KV cache. Compile time does not grow with
the number of steps because the body is traced once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

StepFn = Callable[..., Any]


_ON_STEP = contextvars.ContextVar("jaxgen_sampler_on_step", default=None)


@contextlib.contextmanager
def report_steps(callback: Callable[[Any, int], None]):
  """Loops traced within it call ``callback(i, num_steps)`` on the host after each step
  (`jax.debug.callback`: a progress bar's ticks; it is compiled into the program, so
  trace (first call ``jax.jit``) inside the context). Under a sharded program the
  callback may run once per device."""
  token = _ON_STEP.set(callback)
  try:
    yield
  finally:
    _ON_STEP.reset(token)


def run_loop(step_fn: StepFn, carry: Any, num_steps: int, *, rng: Any = None,
             unroll: int = 1) -> Any:
  """Runs ``carry = step_fn(carry, i)`` for ``i = 0..num_steps-1`` under ``lax.scan``.

  With ``rng`` (stochastic samplers: DDPM, DDIM with eta > 0), the step is
  ``step_fn(carry, i, key_i)`` with ``key_i = fold_in(rng, i)``: each step draws its
  own noise, the same in the scan and in `run_loop_python`. Inside `report_steps`,
  each step also reports ``(i, num_steps)`` to the host.
  """
  on_step = _ON_STEP.get()

  def body(c, i):
    c = step_fn(c, i) if rng is None else step_fn(c, i, jax.random.fold_in(rng, i))
    if on_step is not None:
      jax.debug.callback(functools.partial(on_step, num_steps=num_steps), i)
    return c, None

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
