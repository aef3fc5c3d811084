"""Samplers of Gaussian diffusion as step functions of the shared sampler loop.

Each sampler runs over the steps of a (respaced) `GaussianDiffusion`, from its last
step (pure noise) to step 0; step ``i`` of the loop is diffusion step
``k = num_steps - 1 - i``. ``model_fn(x, t_input) -> output`` is the network (with
guidance folded in), fed the original timestep index; its output is the mean
parameterisation (``eps``, ``x0`` or ``v``), plus the variance channels with
``learn_sigma``.

- ``ddpm``: ancestral sampling, x_{t-1} ~ p(x_{t-1} | x_t) with the model's (learned or
  fixed-large) variance, no noise at the last step (DiT's ``p_sample_loop``).
- ``ddim``: Song et al.'s update with ``eta`` (0: deterministic, the probability-flow
  ODE's discretisation; 1: DDPM-like noise), DiT's ``ddim_sample``.
- ``dpm++2m``: DPM-Solver++(2M) (Lu et al. 2022), data prediction, second-order
  multistep in log-SNR time, first order on its first step and the last step to clean
  data. Deterministic.
Stochastic samplers draw their noise from the loop's per-step key (`loop.run_loop`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.losses.diffusion import GaussianDiffusion, timestep_inputs
from jaxgen.samplers import loop

SOLVERS = ("ddpm", "ddim", "dpm++2m")


def needs_rng(solver: str, eta: float = 0.0) -> bool:
  return solver == "ddpm" or (solver == "ddim" and eta > 0)


def _prediction_fn(model_fn, diffusion, prediction, learn_sigma, clip_denoised):
  """(x, k) -> (mean, log_var, x0) of p(x_{k-1} | x_k) for the diffusion step k."""
  def fn(x, k):
    t = jnp.full((x.shape[0],), k, jnp.int32)
    out = model_fn(x, timestep_inputs(diffusion, t))
    return diffusion.p_mean_variance(out, x, t, prediction, learn_sigma, clip_denoised)
  return fn


def ddpm_step(model_fn: Callable, diffusion: GaussianDiffusion, *, prediction="eps",
              learn_sigma=False, clip_denoised=False):
  n = diffusion.num_steps
  predict = _prediction_fn(model_fn, diffusion, prediction, learn_sigma, clip_denoised)

  def step(x, i, key):
    k = n - 1 - i
    mean, log_var, _ = predict(x, k)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return mean + (k != 0).astype(x.dtype) * jnp.exp(0.5 * log_var) * noise

  return step


def ddim_step(model_fn: Callable, diffusion: GaussianDiffusion, *, eta: float = 0.0,
              prediction="eps", learn_sigma=False, clip_denoised=False):
  n = diffusion.num_steps
  predict = _prediction_fn(model_fn, diffusion, prediction, learn_sigma, clip_denoised)
  ab_tab = jnp.asarray(diffusion.alphas_cumprod, jnp.float32)
  ab_prev_tab = jnp.asarray(diffusion.alphas_cumprod_prev, jnp.float32)

  def update(x, i, key):
    k = n - 1 - i
    _, _, x0 = predict(x, k)
    t = jnp.full((x.shape[0],), k, jnp.int32)
    eps = diffusion.eps_from_x0(x0, x, t)
    ab, ab_prev = ab_tab[k], ab_prev_tab[k]
    sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab)) * jnp.sqrt(1 - ab / ab_prev)
    x_next = x0 * jnp.sqrt(ab_prev) + jnp.sqrt(1 - ab_prev - sigma ** 2) * eps
    if key is not None:
      noise = jax.random.normal(key, x.shape, x.dtype)
      x_next = x_next + (k != 0).astype(x.dtype) * sigma * noise
    return x_next

  if eta > 0:
    return update
  return lambda x, i: update(x, i, None)


def dpm_solver_pp_2m_step(model_fn: Callable, diffusion: GaussianDiffusion, *,
                          prediction="eps", learn_sigma=False, clip_denoised=False):
  """The carry is ``(x, x0 of the previous step)``; start it with `dpm_init`."""
  n = diffusion.num_steps
  predict = _prediction_fn(model_fn, diffusion, prediction, learn_sigma, clip_denoised)
  ab = diffusion.alphas_cumprod
  alpha, sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
  lam = np.log(alpha) - np.log(sigma)
  # Step i goes from k = n-1-i to k-1 (k = 0: to clean data, where lambda = inf).
  ks = np.arange(n - 1, -1, -1)
  to_clean = ks == 0
  k_next = np.maximum(ks - 1, 0)
  h = np.where(to_clean, 1.0, lam[k_next] - lam[ks])
  h_prev = np.concatenate([[1.0], h[:-1]])
  tabs = {name: jnp.asarray(v, jnp.float32) for name, v in dict(
      ratio=sigma[k_next] / sigma[ks], alpha_next=alpha[k_next],
      expm1=np.expm1(-h), r=h_prev / h).items()}

  def step(carry, i):
    x, x0_prev = carry
    k = n - 1 - i
    _, _, x0 = predict(x, k)
    r = tabs["r"][i]
    second = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    d = jnp.where(i == 0, x0, second)
    x_next = tabs["ratio"][i] * x - tabs["alpha_next"][i] * tabs["expm1"][i] * d
    x_next = jnp.where(k == 0, x0, x_next)  # the last step lands on the data prediction
    return x_next, x0

  return step


def dpm_init(noise):
  return noise, jnp.zeros_like(noise)


def sample(model_fn: Callable, diffusion: GaussianDiffusion, noise, rng, *,
           solver: str = "ddpm", eta: float = 0.0, prediction: str = "eps",
           learn_sigma: bool = False, clip_denoised: bool = False, loop_fn=None):
  """Runs ``solver`` over every step of ``diffusion`` from ``noise``; returns x_0.
  ``loop_fn``: the loop (`loop.run_loop`, or `loop.run_loop_python` in tests)."""
  loop_fn = loop_fn or loop.run_loop
  kw = dict(prediction=prediction, learn_sigma=learn_sigma, clip_denoised=clip_denoised)
  n = diffusion.num_steps
  if solver == "ddpm":
    return loop_fn(ddpm_step(model_fn, diffusion, **kw), noise, n, rng=rng)
  if solver == "ddim":
    step = ddim_step(model_fn, diffusion, eta=eta, **kw)
    return loop_fn(step, noise, n, rng=rng if eta > 0 else None)
  if solver == "dpm++2m":
    x, _ = loop_fn(dpm_solver_pp_2m_step(model_fn, diffusion, **kw), dpm_init(noise), n)
    return x
  raise ValueError(f"Unknown diffusion sampler {solver!r}; use one of {', '.join(SOLVERS)}.")
