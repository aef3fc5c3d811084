"""Gaussian diffusion: schedules and respacing equal the official DiT tables; the
posterior, KL and discretised likelihood equal independent NumPy/SciPy computations;
with the exact epsilon of a 1-D Gaussian mixture plugged in, DDPM, DDIM and
DPM-Solver++(2M) reproduce the data's mean and variance, DDIM (eta=0) converges to
the probability-flow ODE's exact map as steps grow; the scan equals a Python loop;
DiT-style guidance; the paradigm's loss decreases on a fixed batch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxgen.losses import diffusion as dl
from jaxgen.samplers import cfg as cfg_lib, diffusion as ds, loop

REF = os.path.join(os.path.dirname(__file__), "data", "dit_diffusion_reference.npz")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("count", [1000, 250, 50])
def test_tables_equal_the_official_dit_code(schedule, count):
  ref = np.load(REF)
  d = dl.GaussianDiffusion.create(schedule, 1000)
  if count != 1000:
    d = d.respace(count)
  key = f"{schedule}_{count}"
  np.testing.assert_array_equal(d.timesteps, ref[f"{key}_timestep_map"])
  c1, c2 = d.posterior_mean_coefs
  for name, ours in (("betas", d.betas), ("alphas_cumprod", d.alphas_cumprod),
                     ("posterior_variance", d.posterior_variance),
                     ("posterior_log_variance_clipped", d.posterior_log_variance_clipped),
                     ("posterior_mean_coef1", c1), ("posterior_mean_coef2", c2)):
    np.testing.assert_allclose(ours, ref[f"{key}_{name}"], rtol=1e-12, atol=1e-15,
                               err_msg=name)


def test_posterior_equals_gaussian_conditioning():
  """q(x_{t-1} | x_t, x_0) from the joint Gaussian of (x_{t-1}, x_t) given x_0."""
  d = dl.GaussianDiffusion.create("linear", 1000).respace(50)
  ab, ab_prev, beta = d.alphas_cumprod, d.alphas_cumprod_prev, d.betas
  x0, xt = 0.3, -0.7
  ts = np.array([1, 10, 49])
  mean, logvar = d.q_posterior(jnp.full((3, 1), x0), jnp.full((3, 1), xt), jnp.asarray(ts))
  for j, t in enumerate(ts):
    # x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) n1; x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) n2
    m1, v1 = np.sqrt(ab_prev[t]) * x0, 1 - ab_prev[t]
    a = np.sqrt(1 - beta[t])
    m2, v2, c12 = a * m1, a * a * v1 + beta[t], a * v1
    np.testing.assert_allclose(float(mean[j, 0]), m1 + c12 / v2 * (xt - m2), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.exp(logvar[j, 0])), v1 - c12 ** 2 / v2, rtol=1e-4)


def test_kl_and_discretised_likelihood_against_scipy():
  m1, lv1, m2, lv2 = 0.2, np.log(0.3), -0.1, np.log(0.5)
  p, q = stats.norm(m1, np.exp(lv1 / 2)), stats.norm(m2, np.exp(lv2 / 2))
  kl_ref, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -10, 10)
  np.testing.assert_allclose(float(dl.normal_kl(m1, lv1, m2, lv2)), kl_ref, rtol=1e-5)
  x = np.array([-1.0, -0.5, 0.0, 0.25, 1.0], np.float32)  # uint8 levels in [-1, 1]
  mean, log_scale = 0.1, np.log(0.6)  # edges within 2 sd: the tanh CDF is exact to 1e-3
  n = stats.norm(mean, np.exp(log_scale))
  lo, hi = x - 1 / 255, x + 1 / 255
  prob = np.where(x < -0.999, n.cdf(hi), np.where(x > 0.999, n.sf(lo), n.cdf(hi) - n.cdf(lo)))
  ours = dl.discretized_gaussian_log_likelihood(jnp.asarray(x), mean, log_scale)
  np.testing.assert_allclose(np.asarray(ours), np.log(prob), rtol=2e-3)  # tanh-approx CDF


def test_parameterisations_round_trip():
  d = dl.GaussianDiffusion.create("cosine", 100)
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  x0, eps = jax.random.normal(k[0], (4, 3)), jax.random.normal(k[1], (4, 3))
  t = jnp.array([0, 10, 50, 99])
  xt = d.q_sample(x0, t, eps)
  for pred in dl.PREDICTIONS:
    np.testing.assert_allclose(d.predict_x0(d.target(x0, eps, t, pred), xt, t, pred), x0,
                               rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(d.eps_from_x0(x0, xt, t), eps, rtol=1e-3, atol=1e-3)


# -- samplers with the exact epsilon of a 1-D Gaussian mixture ----------------------
W, MU, S = np.array([0.3, 0.7]), np.array([-0.6, 0.5]), np.array([0.15, 0.25])
MIX_MEAN = float(W @ MU)
MIX_VAR = float(W @ (S ** 2 + MU ** 2) - MIX_MEAN ** 2)


def exact_eps_fn(full: dl.GaussianDiffusion, w=W, mu=MU, s=S):
  """E[eps | x_t] of the mixture, for the network's time input (original index)."""
  ab_tab = jnp.asarray(full.alphas_cumprod, jnp.float32)

  def fn(x, t_in):
    ab = ab_tab[t_in.astype(jnp.int32)][:, None]
    var = ab * s ** 2 + 1 - ab
    logp = jnp.log(w) - 0.5 * jnp.log(var) - 0.5 * (x - jnp.sqrt(ab) * mu) ** 2 / var
    post = jax.nn.softmax(logp, axis=-1)
    eps = jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / var
    return jnp.sum(post * eps, axis=-1, keepdims=True)

  return fn


def _run(solver, steps, n=8000, eta=0.0, seed=0):
  full = dl.GaussianDiffusion.create("linear", 1000)
  d = full.respace(steps)
  noise = jax.random.normal(jax.random.PRNGKey(seed), (n, 1))
  fn = jax.jit(lambda z, r: ds.sample(exact_eps_fn(full), d, z, r, solver=solver, eta=eta))
  return np.asarray(fn(noise, jax.random.PRNGKey(seed + 1)))[:, 0], np.asarray(noise)[:, 0]


@pytest.mark.parametrize("solver,steps,eta", [("ddpm", 250, 0.0), ("ddim", 200, 0.0),
                                              ("ddim", 250, 1.0), ("dpm++2m", 100, 0.0)])
def test_samplers_reproduce_the_mixture(solver, steps, eta):
  x, _ = _run(solver, steps, eta=eta)
  se = np.sqrt(MIX_VAR / len(x))
  assert abs(x.mean() - MIX_MEAN) < 5 * se + 0.01, (x.mean(), MIX_MEAN)
  assert abs(x.var() / MIX_VAR - 1) < 0.06, (x.var(), MIX_VAR)
  below = float(W @ stats.norm.cdf(-MU / S))  # P(x < 0) of the mixture (0.316)
  assert abs(float((x < 0).mean()) - below) < 0.015, (float((x < 0).mean()), below)


def test_ddim_and_dpm_solver_converge_to_the_probability_flow_map():
  """One Gaussian: the ODE maps x_T to mu + s (x_T - sqrt(ab_T) mu) / sd_T exactly.
  DDIM (eta=0) converges to it at first order, DPM-Solver++(2M) at second order: 4x
  the steps divide the error by about 4 and 16 (here 3.6 and 17.8, in float64)."""
  mu, s = 0.4, 0.3
  full = dl.GaussianDiffusion.create("linear", 1000)
  ab_T = full.alphas_cumprod[-1]
  z = jax.random.normal(jax.random.PRNGKey(0), (256, 1))
  exact = mu + s * (np.asarray(z) - np.sqrt(ab_T) * mu) / np.sqrt(ab_T * s * s + 1 - ab_T)
  model = exact_eps_fn(full, np.array([1.0]), np.array([mu]), np.array([s]))
  err = {}
  for solver in ("ddim", "dpm++2m"):
    for steps in (250, 1000):
      x = jax.jit(lambda v: ds.sample(model, full.respace(steps), v, None, solver=solver))(z)
      err[solver, steps] = float(np.abs(np.asarray(x) - exact).max())
  ddim_ratio = err["ddim", 250] / err["ddim", 1000]
  dpm_ratio = err["dpm++2m", 250] / err["dpm++2m", 1000]
  assert 2.5 < ddim_ratio < 6 and dpm_ratio > 8, err
  assert err["dpm++2m", 1000] < 1e-3 and err["dpm++2m", 250] < err["ddim", 250], err


def test_scan_equals_python_loop_and_same_key_same_samples():
  full = dl.GaussianDiffusion.create("cosine", 1000)
  d = full.respace(8)
  noise = jax.random.normal(jax.random.PRNGKey(3), (16, 1))
  rng = jax.random.PRNGKey(4)
  model = exact_eps_fn(full)
  for solver, eta in (("ddpm", 0.0), ("ddim", 0.5), ("dpm++2m", 0.0)):
    a = jax.jit(lambda z: ds.sample(model, d, z, rng, solver=solver, eta=eta))(noise)
    b = jax.jit(lambda z: ds.sample(model, d, z, rng, solver=solver, eta=eta,  # unrolled
                                    loop_fn=loop.run_loop_python))(noise)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(a), np.asarray(noise))


def test_guidance_on_some_channels_as_dit_forward_with_cfg():
  """DiT guides the first 3 output channels and takes the rest (the learned variance)
  from the conditional pass."""
  def model(x, y):
    return jnp.concatenate([x + y[:, None, None, None] * jnp.arange(1.0, 9.0)], -1)

  x = jnp.ones((2, 2, 2, 8))
  y = jnp.array([3.0, 5.0])
  out = jax.jit(cfg_lib.guided(model, jnp.float32(0.0), 4.0, channels=3))(x, y)
  cond, uncond = model(x, y), model(x, jnp.zeros(2))
  np.testing.assert_allclose(out[..., :3], uncond[..., :3] + 4.0 * (cond - uncond)[..., :3])
  np.testing.assert_allclose(out[..., 3:], cond[..., 3:])


def test_training_loss_refuses_a_channel_mismatch():
  d = dl.GaussianDiffusion.create("linear", 10)
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="2 channels for 1-channel data; learn_sigma=False"):
    dl.training_loss(d, jnp.zeros((2, 4, 4, 2)), x, x, x, jnp.array([1, 2]),
                     prediction="eps", learn_sigma=False)


# -- the paradigm --------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusion_exp(fake_fmnist_dir, data_dir):
  from helpers import tiny_config
  import common
  from jaxgen.train import loop
  c = tiny_config(fake_fmnist_dir, data_dir, "dit", num_steps=30)
  c.paradigm = common.diffusion_paradigm(num_timesteps=100)
  c.model.learn_sigma = True
  c.sample.solver, c.sample.steps, c.sample.cfg_scale = "ddpm", 4, 2.0
  c.optim.lr, c.optim.warmup_steps, c.optim.grad_clip = 2e-3, 0, 0.0
  return loop.build(c, jax.devices()[:1])


def test_paradigm_loss_decreases_on_a_fixed_batch_and_samples(diffusion_exp):
  """The hybrid loss (MSE + VB of the learned variance) decreases on one fixed batch;
  every sampler gives finite images of the data's shape."""
  from jaxgen.sharding import mesh as mesh_lib
  from jaxgen.train import loop
  exp = diffusion_exp
  step_fn, _ = loop.make_train_step(exp)
  batch = mesh_lib.global_batch(next(loop.make_data_iterator(exp)), exp.mesh)
  state = exp.init_state()
  losses = []
  for _ in range(30):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
  assert {"mse", "vb"} <= set(metrics)
  labels = jnp.arange(4) % 10
  for solver in ("ddpm", "dpm++2m"):  # (DDIM: the sampler tests above)
    x = jax.jit(lambda p, r: exp.paradigm.sample(p, r, labels, solver=solver, steps=2))(
        state.params, jax.random.PRNGKey(0))
    assert x.shape == (4,) + exp.paradigm.image_shape and bool(jnp.isfinite(x).all())
  # Ancestral draws belong to the chunk: 2 rows per network call, the same samples.
  split = jax.jit(lambda p, r: exp.paradigm.sample(p, r, labels, solver="ddpm", steps=2,
                                                   micro_batch=2))(
      state.params, jax.random.PRNGKey(0))
  whole = jax.jit(lambda p, r: exp.paradigm.sample(p, r, labels, solver="ddpm", steps=2))(
      state.params, jax.random.PRNGKey(0))
  np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)


def test_config_errors_name_the_field(fake_fmnist_dir, data_dir):
  from helpers import tiny_config
  import common
  from jaxgen import config as config_lib
  c = tiny_config(fake_fmnist_dir, data_dir, "dit")
  c.model.learn_sigma = True
  with pytest.raises(config_lib.ConfigError, match="a flow predicts a velocity"):
    config_lib.validate(c)
  c.paradigm = common.diffusion_paradigm()
  c.sample.solver = "heun"
  with pytest.raises(config_lib.ConfigError, match="sample.solver='heun'; use one of ddpm"):
    config_lib.validate(c)
  c.sample.solver, c.sample.steps = "ddim", 2000
  with pytest.raises(config_lib.ConfigError, match="take 1..1000"):
    config_lib.validate(c)
