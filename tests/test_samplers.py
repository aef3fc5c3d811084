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


def _integrate(solver, n, t_start=1.0, t_end=0.0):
  """dx/dt = x * cos(t) from t_start to t_end: x(t_end) = x(t_start) * exp(sin(t_end) -
  sin(t_start))."""
  vel = lambda x, t: x * jnp.cos(t)[:, None]
  x1 = jnp.array([[1.0, -2.0]])
  x0 = ode.solve(solver, vel, ode.time_grid(n, t_start=t_start, t_end=t_end), x1)
  exact = np.asarray(x1) * np.exp(np.sin(t_end) - np.sin(t_start))
  return float(np.abs(np.asarray(x0) - exact).max())


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("midpoint", 2),
                                          ("ab2", 2), ("dpm++2m", 2)])
def test_solver_convergence_order(solver, order):
  # DPM-Solver++ steps in lambda = log((1 - t) / t), which is infinite at t = 1 and t = 0:
  # next to them its steps do not shrink with dt (exact there only for a diffusion's
  # D, see the test below), so its order is measured on [0.9, 0.1], where lambda is
  # smooth, with more steps (its first, Euler, step keeps it pre-asymptotic at 8).
  span, ns = ((0.9, 0.1), (16, 32, 64)) if solver == "dpm++2m" else ((1.0, 0.0), (8, 16, 32))
  errs = [_integrate(solver, n, *span) for n in ns]
  rates = [np.log2(errs[i] / errs[i + 1]) for i in range(2)]
  for r in rates:
    assert abs(r - order) < 0.25, (solver, errs, rates)


def test_heun_exact_on_linear_in_time_velocity():
  # v(x, t) = 2t: x(0) = x(1) - 1; trapezoid rule is exact for linear integrands.
  step = ode.heun_step(lambda x, t: jnp.broadcast_to(2 * t[:, None], x.shape),
                       ode.time_grid(3))
  x0 = loop.run_loop(step, jnp.full((1, 2), 5.0), 3)
  np.testing.assert_allclose(x0, 4.0, rtol=1e-6)


def test_ab2_exact_on_linear_in_time_velocity_on_a_shifted_grid():
  # v = 3 - 4t: x(0) = x(1) - (3 - 2) = x(1) - 1; AB2's linear extrapolation is exact
  # for it whatever the step sizes (its first step, Euler, is exact for a constant).
  vel = lambda x, t: jnp.broadcast_to((3.0 - 4.0 * t)[:, None], x.shape)
  ts = ode.time_grid(5, shift=3.0)
  # Euler's first step overshoots the -4t part by 2 dt^2 (dt < 0); AB2 must carry
  # exactly that error and add none.
  dt0 = float(ts[1] - ts[0])
  x0 = ode.solve("ab2", vel, ts, jnp.full((1, 2), 5.0))
  np.testing.assert_allclose(x0, 4.0 + 2.0 * dt0 ** 2, rtol=1e-5)


def test_dpm_solver_exact_for_a_single_data_point():
  # The flow of one data point c: x_t = (1 - t) c + t eps, v = (x - c) / t, D = c: the
  # data-prediction exponential integrator lands on c with any grid and step count.
  c = jnp.array([[0.3, -1.2, 2.0]])
  vel = lambda x, t: (x - c) / t[:, None]
  for n, shift in ((1, 1.0), (3, 1.0), (7, 3.0)):
    x0 = ode.solve("dpm++2m", vel, ode.time_grid(n, shift), jnp.array([[1.0, 0.5, -0.7]]))
    np.testing.assert_allclose(x0, c, rtol=1e-5, atol=1e-6)


def _multistep_numpy(solver, vel, ts, x):
  """Float64 loops of the textbook formulas (no tables, no carry)."""
  ts = np.asarray(ts, np.float64)
  with np.errstate(divide="ignore"):
    lam = np.log1p(-ts) - np.log(ts)  # lambda = log(alpha / sigma); -inf at 1, inf at 0
  prev = None
  for i in range(len(ts) - 1):
    t, tn = ts[i], ts[i + 1]
    v = np.asarray(vel(x, t), np.float64)
    if solver == "ab2":  # Euler, then the linear extrapolation of the last two v
      r = 0.0 if prev is None else (tn - t) / (t - ts[i - 1])
      x, prev = x + (tn - t) * ((1 + r / 2) * v - (r / 2) * (0 if prev is None else prev)), v
      continue
    d = x - t * v  # DPM-Solver++(2M): data prediction, lower order first and last
    h = lam[i + 1] - lam[i]
    if prev is not None and tn > 0:
      k = h / (2 * (lam[i] - lam[i - 1]))  # 1 / (2 r); 0 after a step from t = 1
      d, prev = (1 + k) * d - k * prev, d
    else:
      prev = d
    x = (tn / t) * x - (1 - tn) * np.expm1(-h) * d
  return x


@pytest.mark.parametrize("solver", ["ab2", "dpm++2m"])
def test_multistep_solvers_match_float64_loops_in_scan_and_python(solver):
  w = np.array([[0.6, -0.3], [0.2, 0.9]])
  vel_np = lambda x, t: np.tanh(x @ w) * (1 + t) - x
  vel = lambda x, t: jnp.tanh(x @ jnp.asarray(w, jnp.float32)) * (1 + t[:, None]) - x
  ts = ode.time_grid(6, shift=2.0)
  x1 = np.array([[1.0, -2.0], [0.5, 0.1]])
  ref = _multistep_numpy(solver, vel_np, ts, x1)
  scanned = jax.jit(lambda x: ode.solve(solver, vel, ts, x))(jnp.asarray(x1, jnp.float32))
  plain = ode.solve(solver, vel, ts, jnp.asarray(x1, jnp.float32), loop.run_loop_python)
  np.testing.assert_allclose(scanned, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=1e-5)


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
