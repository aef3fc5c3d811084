"""ODE solvers for flow models as step functions of the shared sampler loop.

Convention (rectified flow, SD3): ``x_t = (1 - t) x_0 + t * noise``; data at t=0,
noise at t=1; the model predicts the velocity ``v = dx/dt = noise - x_0`` and sampling
integrates from t=1 down to t=0.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

VelocityFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # (x, t_b) -> v


def time_grid(num_steps: int, shift: float = 1.0, t_start: float = 1.0,
              t_end: float = 0.0) -> jnp.ndarray:
  """``num_steps + 1`` times from ``t_start`` to ``t_end``, uniform then shifted by
  ``t' = shift * t / (1 + (shift - 1) * t)`` (SD3's resolution shift; 1 = none)."""
  t = jnp.linspace(t_start, t_end, num_steps + 1, dtype=jnp.float32)
  return shift * t / (1.0 + (shift - 1.0) * t)


def _full(t, x):
  return jnp.full((x.shape[0],), t, dtype=jnp.float32)


def euler_step(velocity_fn: VelocityFn, ts: jnp.ndarray):
  """Explicit Euler: ``x += (t_{i+1} - t_i) v(x, t_i)``; one model call per step."""

  def step(x, i):
    t, t_next = ts[i], ts[i + 1]
    return x + (t_next - t) * velocity_fn(x, _full(t, x))

  return step


def heun_step(velocity_fn: VelocityFn, ts: jnp.ndarray):
  """Heun (explicit trapezoid, 2nd order): two model calls per step."""

  def step(x, i):
    t, t_next = ts[i], ts[i + 1]
    dt = t_next - t
    v0 = velocity_fn(x, _full(t, x))
    x_euler = x + dt * v0
    v1 = velocity_fn(x_euler, _full(t_next, x))
    return x + dt * 0.5 * (v0 + v1)

  return step


def midpoint_step(velocity_fn: VelocityFn, ts: jnp.ndarray):
  """Explicit midpoint (2nd order): two model calls per step."""

  def step(x, i):
    t, t_next = ts[i], ts[i + 1]
    dt = t_next - t
    x_mid = x + 0.5 * dt * velocity_fn(x, _full(t, x))
    return x + dt * velocity_fn(x_mid, _full(t + 0.5 * dt, x))

  return step


SOLVERS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step}
MODEL_CALLS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2}


def get_solver(name: str):
  if name not in SOLVERS:
    raise ValueError(f"Unknown ODE solver {name!r}; use one of {', '.join(SOLVERS)}.")
  return SOLVERS[name]
