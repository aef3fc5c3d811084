"""Gaussian diffusion (DDPM): noise schedules, the forward process, its posterior, the
model's parameterisations and the training losses, as DiT / ADM / improved DDPM define
them (read from facebookresearch/DiT ``diffusion/gaussian_diffusion.py``,
``respace.py`` and ``diffusion_utils.py``; tests compare with NumPy closed forms and
with tables made by that code, ``tests/data/make_dit_diffusion_reference.py``).

Discrete time: ``t = 0 .. T-1`` (0 is one step of noise), ``alpha_bar_t = prod (1 -
beta_s)``, ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``. The network is
fed the (original, un-respaced) timestep index as a float, as DiT does. Its output is
``eps``, ``x0`` or ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (the
``prediction``), plus, with ``learn_sigma``, C more channels ``v_var`` in [-1, 1] that
interpolate the log-variance between the posterior's (min) and beta's (max).

All tables are computed in float64 with NumPy and used as float32 constants.
"""

from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")


def beta_schedule(name: str, num_steps: int) -> np.ndarray:
  """``num_steps`` betas (float64). ``linear``: Ho et al.'s 1e-4..0.02 over 1000 steps,
  scaled by 1000 / num_steps; ``cosine``: Nichol & Dhariwal's squared cosine
  (``squaredcos_cap_v2``), betas capped at 0.999."""
  if name == "linear":
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  if name == "cosine":
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / num_steps) / f(i / num_steps), 0.999)
                     for i in range(num_steps)], np.float64)
  raise ValueError(f"Unknown noise schedule {name!r}; use one of {', '.join(SCHEDULES)}.")


def space_timesteps(num_steps: int, count: int) -> np.ndarray:
  """``count`` timesteps of ``0..num_steps-1``, evenly strided and rounded, as the
  official ``space_timesteps(num_steps, str(count))`` (one section) picks them."""
  if not 1 <= count <= num_steps:
    raise ValueError(f"Cannot take {count} sampling steps from a {num_steps}-step "
                     f"diffusion; use 1..{num_steps}.")
  stride = 1 if count <= 1 else (num_steps - 1) / (count - 1)
  return np.array(sorted({round(i * stride) for i in range(count)}), np.int64)


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
  """The tables of one (possibly respaced) diffusion process.

  ``timesteps[i]`` is the original timestep index of step ``i`` (what the network is
  fed); for the full process it is ``i``.
  """
  betas: np.ndarray
  timesteps: np.ndarray

  @classmethod
  def create(cls, schedule: str = "linear", num_steps: int = 1000) -> "GaussianDiffusion":
    betas = beta_schedule(schedule, num_steps)
    return cls(betas, np.arange(num_steps))

  def respace(self, count: int) -> "GaussianDiffusion":
    """The process on ``count`` of its steps (DiT's ``SpacedDiffusion``): betas
    recomputed so that alpha_bar at the kept steps is unchanged."""
    keep = space_timesteps(self.num_steps, count)
    ab = self.alphas_cumprod[keep]
    betas = 1.0 - ab / np.concatenate([[1.0], ab[:-1]])
    return GaussianDiffusion(betas, self.timesteps[keep])

  @property
  def num_steps(self) -> int:
    return len(self.betas)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    return np.cumprod(1.0 - self.betas)

  @property
  def alphas_cumprod_prev(self) -> np.ndarray:
    return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

  @property
  def posterior_variance(self) -> np.ndarray:
    ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
    return self.betas * (1.0 - ab_prev) / (1.0 - ab)

  @property
  def posterior_log_variance_clipped(self) -> np.ndarray:
    """log of the posterior variance, its 0 at t=0 replaced by the value at t=1."""
    v = self.posterior_variance
    return np.log(np.concatenate([v[1:2], v[1:]])) if len(v) > 1 else np.log(v)

  @property
  def posterior_mean_coefs(self):
    ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
    c1 = self.betas * np.sqrt(ab_prev) / (1.0 - ab)
    c2 = (1.0 - ab_prev) * np.sqrt(1.0 - self.betas) / (1.0 - ab)
    return c1, c2

  # -- JAX side: per-example lookups (t: int32 [B]) -----------------------------------
  def _at(self, table: np.ndarray, t, like):
    vals = jnp.asarray(table, jnp.float32)[t]
    return vals.reshape((-1,) + (1,) * (like.ndim - 1))

  def q_sample(self, x0, t, eps):
    ab = self._at(self.alphas_cumprod, t, x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps

  def q_posterior(self, x0, x_t, t):
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    c1, c2 = self.posterior_mean_coefs
    mean = self._at(c1, t, x_t) * x0 + self._at(c2, t, x_t) * x_t
    return mean, self._at(self.posterior_log_variance_clipped, t, x_t)

  def predict_x0(self, out, x_t, t, prediction: str):
    """x_0 from the network's mean output (``eps``, ``x0`` or ``v``)."""
    ab = self._at(self.alphas_cumprod, t, x_t)
    if prediction == "eps":
      return (x_t - jnp.sqrt(1.0 - ab) * out) / jnp.sqrt(ab)
    if prediction == "x0":
      return out
    if prediction == "v":
      return jnp.sqrt(ab) * x_t - jnp.sqrt(1.0 - ab) * out
    raise ValueError(f"Unknown prediction {prediction!r}; use one of {PREDICTIONS}.")

  def eps_from_x0(self, x0, x_t, t):
    ab = self._at(self.alphas_cumprod, t, x_t)
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)

  def target(self, x0, eps, t, prediction: str):
    """What the network's mean output regresses to."""
    if prediction == "eps":
      return eps
    if prediction == "x0":
      return x0
    if prediction == "v":
      ab = self._at(self.alphas_cumprod, t, x0)
      return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0
    raise ValueError(f"Unknown prediction {prediction!r}; use one of {PREDICTIONS}.")

  def model_log_variance(self, t, like, var_values=None):
    """The reverse step's log-variance: learned (``var_values`` in [-1, 1] between the
    posterior's clipped log-variance and log beta: LEARNED_RANGE) or, without them,
    DDPM's fixed-large choice (beta_t, with the posterior variance at t=0)."""
    if var_values is None:
      fixed = np.log(np.concatenate([self.posterior_variance[1:2], self.betas[1:]]))
      return self._at(fixed, t, like)
    min_log = self._at(self.posterior_log_variance_clipped, t, like)
    max_log = self._at(np.log(self.betas), t, like)
    frac = (var_values + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log

  def p_mean_variance(self, out, x_t, t, prediction: str, learn_sigma: bool,
                      clip_denoised: bool = False):
    """``(mean, log_variance, x0_pred)`` of p(x_{t-1} | x_t) from the network output
    ``out`` (C channels, or 2C with ``learn_sigma``)."""
    var_values = None
    if learn_sigma:
      out, var_values = jnp.split(out, 2, axis=-1)
    x0 = self.predict_x0(out, x_t, t, prediction)
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    mean, _ = self.q_posterior(x0, x_t, t)
    return mean, self.model_log_variance(t, x_t, var_values), x0


# -- the variational bound ---------------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF used by ADM / DiT."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(x) of a Gaussian discretised to 256 bins over [-1, 1] (the edges open),
  elementwise, in nats; ``x`` holds uint8 values rescaled to [-1, 1]."""
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def vb_terms_bits(diffusion: GaussianDiffusion, x0, x_t, t, model_mean, model_log_var):
  """Per-example term of the variational bound in bits per dimension: the decoder NLL
  at t=0, else KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))."""
  true_mean, true_log_var = diffusion.q_posterior(x0, x_t, t)
  kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2)
  nll = -_mean_flat(discretized_gaussian_log_likelihood(
      x0, model_mean, 0.5 * model_log_var)) / math.log(2)
  return jnp.where(t == 0, nll, kl)


def training_loss(diffusion: GaussianDiffusion, out, x0, x_t, eps, t, *, prediction: str,
                  learn_sigma: bool, vlb_weight: float = 1.0):
  """Per-example loss and its parts: the mean-squared error of the mean output, plus
  (``learn_sigma``) ``vlb_weight`` times the bound term of the learned variance with the
  mean output held fixed (stop-gradient), as DiT trains it (``vlb_weight=1``; improved
  DDPM's hybrid loss is 0.001 in RESCALED_MSE units, i.e. ``num_steps / 1000``)."""
  if out.shape[-1] != x0.shape[-1] * (2 if learn_sigma else 1):
    raise ValueError(f"The network gives {out.shape[-1]} channels for {x0.shape[-1]}-channel "
                     f"data; learn_sigma={learn_sigma} needs "
                     f"{x0.shape[-1] * (2 if learn_sigma else 1)}.")
  terms = {}
  if learn_sigma:
    mean_out, var_values = jnp.split(out, 2, axis=-1)
    frozen = jax.lax.stop_gradient(mean_out)
    x0_pred = diffusion.predict_x0(frozen, x_t, t, prediction)
    model_mean, _ = diffusion.q_posterior(x0_pred, x_t, t)
    model_log_var = diffusion.model_log_variance(t, x_t, var_values)
    terms["vb"] = vb_terms_bits(diffusion, x0, x_t, t, model_mean, model_log_var)
  else:
    mean_out = out
  target = diffusion.target(x0, eps, t, prediction)
  terms["mse"] = _mean_flat(jnp.square(mean_out.astype(jnp.float32) - target))
  loss = terms["mse"] + (vlb_weight * terms["vb"] if learn_sigma else 0.0)
  return loss, terms


def timestep_inputs(diffusion: GaussianDiffusion, t) -> jnp.ndarray:
  """The network's time input for step indices ``t`` of this (respaced) process: the
  original timestep index as float32."""
  return jnp.asarray(diffusion.timesteps, jnp.float32)[t]

