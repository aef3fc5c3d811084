"""The shared scan sampler loop, ODE solvers, time grids and CFG against references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.samplers import cfg, loop, microbatch, ode


def test_scan_loop_equals_python_loop():
  key = jax.random.PRNGKey(0)
  w = jax.random.normal(key, (4, 4)) * 0.3

  def step(carry, i):
    x, rng = carry
    rng, sub = jax.random.split(rng)
    return (jnp.tanh(x @ w) + 0.1 * i + 0.01 * jax.random.normal(sub, x.shape), rng)

  init = (jnp.ones((2, 4)), jax.random.PRNGKey(1))
  scanned = jax.jit(lambda c: loop.run_loop(step, c, 7))(init)
  plain = loop.run_loop_python(step, init, 7)
  np.testing.assert_allclose(scanned[0], plain[0], rtol=1e-5, atol=1e-6)


def test_sampler_body_traced_once_whatever_the_number_of_steps():
  traces = []

  def step(x, i):
    traces.append(1)  # runs at trace time only
    return x + i

  for n in (2, 64):
    traces.clear()
    jax.jit(lambda x: loop.run_loop(step, x, n))(jnp.zeros(()))
    assert len(traces) == 1


def test_time_grid_matches_numpy_with_shift():
  g = ode.time_grid(4, shift=3.0)
  t = np.linspace(1, 0, 5)
  np.testing.assert_allclose(g, 3 * t / (1 + 2 * t), rtol=1e-6)
  np.testing.assert_allclose(ode.time_grid(4), t, rtol=1e-6)


def _integrate(solver, n):
  """dx/dt = x * cos(t) from t=1 to t=0: x(0) = x(1) * exp(sin(0) - sin(1))."""
  vel = lambda x, t: x * jnp.cos(t)[:, None]
  step = ode.get_solver(solver)(vel, ode.time_grid(n))
  x1 = jnp.array([[1.0, -2.0]])
  x0 = loop.run_loop(step, x1, n)
  exact = np.asarray(x1) * np.exp(0.0 - np.sin(1.0))
  return float(np.abs(np.asarray(x0) - exact).max())


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_solver_convergence_order(solver, order):
  errs = [_integrate(solver, n) for n in (8, 16, 32)]
  rates = [np.log2(errs[i] / errs[i + 1]) for i in range(2)]
  for r in rates:
    assert abs(r - order) < 0.25, (solver, errs, rates)


def test_heun_exact_on_linear_in_time_velocity():
  # v(x, t) = 2t: x(0) = x(1) - 1; trapezoid rule is exact for linear integrands.
  step = ode.heun_step(lambda x, t: jnp.broadcast_to(2 * t[:, None], x.shape),
                       ode.time_grid(3))
  x0 = loop.run_loop(step, jnp.full((1, 2), 5.0), 3)
  np.testing.assert_allclose(x0, 4.0, rtol=1e-6)


def _toy_model(x, t, y):
  """A conditional 'model' whose output depends on x, t and the label."""
  return jnp.sin(x) * (1 + y[:, None].astype(jnp.float32)) + t[:, None]


def test_cfg_scale_one_equals_conditional_model():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  t = jnp.array([0.1, 0.5, 0.9])
  y = jnp.array([0, 1, 2])
  # An array scale takes the full two-stream path.
  guided = cfg.guided(_toy_model, jnp.int32(7), jnp.float32(1.0))
  np.testing.assert_allclose(guided(x, t, y), _toy_model(x, t, y), rtol=1e-6, atol=1e-6)
  # A Python 1.0 skips the unconditional stream altogether.
  assert cfg.guided(_toy_model, 7, 1.0) is _toy_model


def test_cfg_matches_numpy_formula():
  x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
  t = np.linspace(0, 1, 4).astype(np.float32)
  y = np.array([1, 2, 3, 0])
  s = 2.5
  out = cfg.guided(_toy_model, jnp.int32(9), s)(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y))
  cond = np.sin(x) * (1 + y[:, None]) + t[:, None]
  uncond = np.sin(x) * 10 + t[:, None]
  np.testing.assert_allclose(out, uncond + s * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_unknown_solver_is_refused():
  with pytest.raises(ValueError, match="Unknown ODE solver"):
    ode.get_solver("rk45")


def test_micro_batched_calls_equal_one_call_and_numpy():
  """`microbatch.split_calls` cuts the rows of every per-row argument (an array, a dict
  condition) into slices, passes a scalar whole to each call and puts the outputs back
  in order: the same as one call, and as NumPy."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((12, 3, 2)).astype(np.float32)
  cond = {"w": rng.standard_normal((12, 2)).astype(np.float32),
          "id": np.arange(12, dtype=np.int32)}
  calls = []

  def fn(x, t, c):
    calls.append(x.shape[0])
    out = jnp.tanh(x * t) @ jnp.ones((2, 2)) + c["w"][:, None, :]
    return out, c["id"] * 2

  want = (np.tanh(x * 0.5) @ np.ones((2, 2)) + cond["w"][:, None, :], cond["id"] * 2)
  for rows, seen in ((0, 12), (12, 12), (4, 4), (5, 4)):  # 5 -> the divisor 4
    calls.clear()
    split = microbatch.split_calls(fn, 12, rows)
    got = jax.jit(lambda *a: split(*a))(x, 0.5, cond)  # noqa: B023  (a fresh trace)
    assert calls == [seen], (rows, calls)  # traced once, on slices of `seen` rows
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])
  assert microbatch.divisor_at_most(500, 64) == 50 and microbatch.divisor_at_most(7, 3) == 1
  assert microbatch.candidate_rows(500, 32) == [25, 50, 125, 250, 500]
  assert microbatch.candidate_rows(70, 32) == [35, 70]
  assert microbatch.candidate_rows(20, 32) == [20]
