"""ODE solvers for flow models as step functions of the shared sampler loop.

Convention (rectified flow, SD3): ``x_t = (1 - t) x_0 + t * noise``; data at t=0,
noise at t=1; the model predicts the velocity ``v = dx/dt = noise - x_0`` and sampling
integrates from t=1 down to t=0.

One-step solvers (Euler, Heun, midpoint) carry ``x``; the multistep ones (``ab2``,
``dpm++2m``) carry ``(x, the previous step's model output)`` and cost one model call a
step at second order. `solve` starts and ends either kind.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from jaxgen.samplers import loop

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


def ab2_step(velocity_fn: VelocityFn, ts: jnp.ndarray):
  """Adams-Bashforth 2 with variable steps: ``x += dt ((1 + c) v_i - c v_{i-1})``,
  ``c = dt_i / (2 dt_{i-1})`` (the linear extrapolation of the last two velocities over
  the step); the first step is Euler. One model call per step; carry ``(x, v_prev)``."""
  dts = ts[1:] - ts[:-1]
  c = dts / (2.0 * jnp.concatenate([dts[:1], dts[:-1]]))
  c = c.at[0].set(0.0)

  def step(carry, i):
    x, v_prev = carry
    v = velocity_fn(x, _full(ts[i], x))
    return x + dts[i] * ((1.0 + c[i]) * v - c[i] * v_prev), v

  return step


def dpm_solver_pp_2m_step(velocity_fn: VelocityFn, ts: jnp.ndarray):
  """DPM-Solver++(2M) (Lu et al. 2022) on the flow's data prediction
  ``D = x - t v`` with ``alpha_t = 1 - t``, ``sigma_t = t``, ``lambda = log(alpha /
  sigma)``: ``x' = (t'/t) x + (1 - t') (1 - e^{-h}) ((1 + c) D_i - c D_{i-1})``,
  ``h = lambda' - lambda``, ``c = h_i / (2 h_{i-1})``. The first step (from t = 1, where
  lambda = -inf) and the last (to t = 0, lambda = +inf) are first order, and the first
  is the Euler step; exact whenever D is constant (the flow of a single data point). One
  model call per step; carry ``(x, D_prev)``."""
  t, t_next = ts[:-1], ts[1:]
  lam = lambda s: jnp.log1p(-s) - jnp.log(s)  # -inf at t = 1, +inf at t = 0
  h = lam(t_next) - lam(t)
  h_prev = jnp.concatenate([jnp.full((1,), jnp.inf, h.dtype), h[:-1]])
  c = h / (2.0 * h_prev)
  c = jnp.where(jnp.isfinite(c), c, 0.0)  # first order next to t = 1 and at t = 0
  gain = (1.0 - t_next) * -jnp.expm1(-h)

  def step(carry, i):
    x, d_prev = carry
    d = x - ts[i] * velocity_fn(x, _full(ts[i], x))
    d2 = (1.0 + c[i]) * d - c[i] * d_prev
    return (t_next[i] / t[i]) * x + gain[i] * d2, d

  return step


SOLVERS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step,
           "ab2": ab2_step, "dpm++2m": dpm_solver_pp_2m_step}
MODEL_CALLS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "ab2": 1, "dpm++2m": 1}
MULTISTEP = ("ab2", "dpm++2m")


def get_solver(name: str):
  if name not in SOLVERS:
    raise ValueError(f"Unknown ODE solver {name!r}; use one of {', '.join(SOLVERS)}.")
  return SOLVERS[name]


def solve(name: str, velocity_fn: VelocityFn, ts: jnp.ndarray, x: jnp.ndarray,
          loop_fn=None) -> jnp.ndarray:
  """Integrates ``dx/dt = velocity_fn(x, t)`` over the grid ``ts`` from ``x`` with
  solver ``name`` in the shared loop (``loop_fn``: `loop.run_loop`, or
  `loop.run_loop_python` in tests); returns x at ``ts[-1]``."""
  step = get_solver(name)(velocity_fn, ts)
  n = ts.shape[0] - 1
  if name in MULTISTEP:
    x, _ = (loop_fn or loop.run_loop)(step, (x, jnp.zeros_like(x)), n)
    return x
  return (loop_fn or loop.run_loop)(step, x, n)
