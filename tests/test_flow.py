"""Rectified-flow losses and time sampling against NumPy; the loss falls on a fixed
batch; the paradigm's sampler equals an explicit Euler integration."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, special

from jaxgen.losses import flow as fl
from jaxgen.samplers import microbatch

from helpers import jaxpr_eqns


def test_interpolation_and_velocity_loss_match_numpy():
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((4, 3, 3, 1)).astype(np.float32)
  eps = rng.standard_normal((4, 3, 3, 1)).astype(np.float32)
  t = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
  xt = fl.interpolate(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
  np.testing.assert_allclose(xt, (1 - t)[:, None, None, None] * x0 +
                             t[:, None, None, None] * eps, rtol=1e-6)
  pred = rng.standard_normal(x0.shape).astype(np.float32)
  w = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
  loss, per = fl.velocity_loss(jnp.asarray(pred), jnp.asarray(x0), jnp.asarray(eps),
                               jnp.asarray(w))
  ref = ((pred - (eps - x0)) ** 2).mean(axis=(1, 2, 3)) * w
  np.testing.assert_allclose(per, ref, rtol=1e-5)
  np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)


def test_endpoints_of_the_path():
  x0, eps = jnp.ones((1, 2)), jnp.zeros((1, 2))
  np.testing.assert_allclose(fl.interpolate(x0, eps, jnp.array([0.0])), x0)
  np.testing.assert_allclose(fl.interpolate(x0, eps, jnp.array([1.0])), eps)


def test_logit_normal_density_matches_scipy_and_integrates_to_one():
  t = np.linspace(0.01, 0.99, 9)
  ours = np.asarray(fl.logit_normal_density(jnp.asarray(t), 0.3, 0.8))
  # scipy: density of sigmoid(N(m, s^2)) = normal.pdf(logit t) / (t (1 - t))
  from scipy.stats import norm
  ref = norm.pdf(special.logit(t), 0.3, 0.8) / (t * (1 - t))
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  total, _ = integrate.quad(lambda u: float(fl.logit_normal_density(jnp.float32(u))), 1e-6,
                            1 - 1e-6)
  assert abs(total - 1) < 1e-3


@pytest.mark.parametrize("method", ["uniform", "logit_normal", "mode"])
def test_time_sampling_range_and_moments(method):
  t = np.asarray(fl.sample_time(jax.random.PRNGKey(0), 20000, method))
  assert t.min() > 0 and t.max() < 1
  if method == "uniform":
    assert abs(t.mean() - 0.5) < 0.01 and abs(t.var() - 1 / 12) < 0.005
  elif method == "logit_normal":
    np.testing.assert_allclose(np.mean(special.logit(t)), 0.0, atol=0.03)
    np.testing.assert_allclose(np.std(special.logit(t)), 1.0, atol=0.03)
  else:
    assert abs(t.mean() - 0.5) < 0.02  # symmetric about 1/2


def _paradigm(make_config, model="dit"):
  from jaxgen.train import loop
  exp = loop.build(make_config(model), jax.devices()[:1])
  return exp


def test_flow_loss_falls_on_a_fixed_batch(make_config):
  exp = _paradigm(make_config)
  p = exp.paradigm
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8,) + p.image_shape), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  params = jax.tree.map(jnp.asarray, exp.init_state().params)
  tx = optax.adam(3e-3)
  opt = tx.init(params)
  key = jax.random.PRNGKey(0)  # same noise and times each step: a fixed objective

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(lambda q: p.loss(q, batch, key)[0])(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses = []
  for _ in range(60):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses[::10]
  assert all(b < a for a, b in zip(losses[::10], losses[10::10])), losses[::10]


@pytest.mark.parametrize("solver", ["euler", "dpm++2m"])
def test_flow_sampler_equals_explicit_python_loop(make_config, solver):
  """The paradigm's sampler with one-step Euler, and with the multistep DPM-Solver++(2M)
  (its carry holds the last data prediction ``D = x - t v``), against Python loops."""
  exp = _paradigm(make_config)
  p = exp.paradigm
  params = jax.tree.map(lambda x: x + 0.01, exp.init_state().params)  # non-zero output
  labels = jnp.array([0, 3])
  key = jax.random.PRNGKey(5)
  got = jax.jit(lambda r: p.sample(params, r, labels, steps=4, cfg_scale=1.0, solver=solver,
                                   shift=1.0))(key)
  x = jax.random.normal(key, (2,) + p.image_shape)
  ts = np.linspace(1, 0, 5)
  with np.errstate(divide="ignore"):
    lam = np.log1p(-ts) - np.log(ts)
  velocity = jax.jit(p.velocity)  # the Python-loop reference: one program for 4 calls
  d_prev = None
  for i in range(4):
    v = velocity(params, x, jnp.full((2,), ts[i], jnp.float32), labels)
    if solver == "euler":
      x = x + (ts[i + 1] - ts[i]) * v
      continue
    d = x - ts[i] * v
    d2 = d
    if 0 < i < 3:  # second order inside; the first step (from t = 1) and the last first
      k = (lam[i + 1] - lam[i]) / (2 * (lam[i] - lam[i - 1]))
      d2 = (1 + k) * d - k * d_prev
    x = ts[i + 1] / ts[i] * x - (1 - ts[i + 1]) * np.expm1(lam[i] - lam[i + 1]) * d2
    d_prev = d
  np.testing.assert_allclose(got, jnp.clip(x, -1, 1), rtol=1e-4, atol=1e-5)


def test_micro_batched_sampling_gives_the_same_samples(make_config, monkeypatch):
  """The chunk is the unit of randomness: guided sampling with 2 rows per network call
  (`samplers.microbatch`) gives the samples of one call over the chunk; `jaxgen
  sample`'s picker measures the candidates that fit and returns one of them."""
  from jaxgen import generate
  exp = _paradigm(make_config)
  p = exp.paradigm
  params = jax.tree.map(lambda x: x + 0.01, exp.init_state().params)
  labels = jnp.array([0, 3, 10, 7])
  run = lambda mb: jax.jit(lambda r: p.sample(params, r, labels, steps=3, cfg_scale=2.0,  # noqa: E731
                                              solver="heun", micro_batch=mb))(
      jax.random.PRNGKey(2))
  np.testing.assert_allclose(run(2), run(0), rtol=1e-5, atol=1e-6)
  monkeypatch.setattr(generate, "MICRO_BATCH_SMALLEST", 32)
  monkeypatch.setattr(generate, "MICRO_BATCH_TIMED_ROWS", 20)  # 22 and 33 timed on 1 call
  assert microbatch.candidate_rows(66, 32) == [22, 33, 66]  # 66's divisors <= 32, <= 64
  rows, report = generate.pick_micro_batch(exp, params, np.arange(66) % 10)
  times = dict(re.findall(r"(\d+): (\d+) ms", report))
  assert sorted(map(int, times)) == [22, 33, 66], report  # too few to stop early
  assert float(times[str(rows)]) == min(map(float, times.values())), report  # the fastest
  assert generate.needs_micro_batch(exp, 64, {}) and not generate.needs_micro_batch(
      exp, 63, {}) and not generate.needs_micro_batch(exp, 70, {"micro_batch": 35})


def test_autocast_config_builds_a_float32_network_applied_with_bf16_products(make_config):
  """``config.train.autocast`` with bfloat16: the paradigm builds the network in float32
  and applies it inside `layers.autocast`: its loss has bf16 products (accumulated in
  float32) and no bf16 activations; plain bfloat16 builds a bf16 network."""
  from jaxgen.train import loop  # pylint: disable=g-import-not-at-top
  batch = {"image": jnp.zeros((2, 32, 32, 1)), "label": jnp.zeros((2,), jnp.int32)}

  def traced(**train):
    exp = loop.build_abstract(make_config(**train), jax.devices()[:1])
    p = exp.paradigm
    jaxpr = jax.make_jaxpr(lambda q: p.loss(q, batch, jax.random.PRNGKey(0))[0])(
        exp.abstract_state.params)
    dots = [e for e in jaxpr_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    return p, {str(e.invars[0].aval.dtype) for e in dots}

  p, dot_dtypes = traced(compute_dtype="bfloat16", autocast=True)
  assert p.model.dtype == jnp.float32 and p.autocast_dtype == jnp.bfloat16
  assert dot_dtypes == {"bfloat16"}
  p, dot_dtypes = traced(compute_dtype="bfloat16")
  assert p.model.dtype == jnp.bfloat16 and p.autocast_dtype is None
  assert dot_dtypes == {"bfloat16"}
  p, dot_dtypes = traced()
  assert p.autocast_dtype is None and dot_dtypes == {"float32"}

