"""Gaussian diffusion (DDPM / improved DDPM / DiT), class- or text-conditional, on any
denoiser registered in MODELS (DiT, U-Net).

Training: ``t`` uniform over the ``num_timesteps`` steps of a linear or cosine beta
schedule, ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps``; the network, fed
the timestep index, predicts ``eps``, ``x0`` or ``v`` (mean-squared error) and, with
``config.model.learn_sigma`` (DiT), C more channels for the variance, trained by the
variational bound with the mean held fixed (the hybrid loss: ``mse + vlb_weight *
vb``; DiT uses 1). Condition dropout to the null class / text trains the
unconditional model for classifier-free guidance.

Sampling (`jaxgen.samplers.diffusion`, on the shared scan loop): DDPM ancestral, DDIM
(``eta``) or DPM-Solver++(2M) over ``config.sample.steps`` steps of the respaced
process (DiT's 250 of 1000). Guidance follows the official DiT ``forward_with_cfg``:
the conditional and unconditional passes run as one doubled batch, the mean channels
are guided and the learned variance comes from the conditional pass;
``config.sample.cfg_channels=3`` guides only the first 3 channels as the official code
does by default (for its exact reproduction), 0 guides all mean channels (the standard
rule, our default).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import diffusion as diffusion_losses
from jaxgen.paradigms.denoiser import CONTEXT_FIELDS, DenoiserParadigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import microbatch
from jaxgen.samplers import diffusion as diffusion_samplers
from jaxgen.samplers import options as options_lib


@dataclasses.dataclass(frozen=True)
class DiffusionOptions(options_lib.Guided, options_lib.MicroBatched):
  """Diffusion sampling: ``solver`` (ddpm ancestral | ddim | dpm++2m) over ``steps``
  respaced steps (DiT: 250 of 1000); ``eta`` for DDIM (0 deterministic .. 1
  DDPM-like); ``cfg_channels``: guide the first k output channels (the official DiT's
  exact rule: 3), 0 = all mean channels; ``clip_denoised``: clip each x0 prediction to
  [-1, 1] (pixel runs only)."""
  steps: int = 250
  solver: str = "ddpm"
  eta: float = 0.0
  cfg_channels: int = 0
  clip_denoised: bool = False
  ignored = ("shift",)  # rectified flow's, in the shared preset

  def check(self, where: str) -> None:
    super().check(where)
    options_lib.at_least(where, "steps", self.steps, 1)
    options_lib.choose(where, "solver", self.solver, diffusion_samplers.SOLVERS)
    options_lib.at_least(where, "eta", self.eta, 0.0)
    options_lib.at_least(where, "cfg_channels", self.cfg_channels, 0, " (0 = all)")


@registry.PARADIGMS.register("diffusion")
class DiffusionParadigm(DenoiserParadigm):
  """config.paradigm fields: schedule (linear | cosine), num_timesteps, prediction
  (eps | x0 | v), vlb_weight, label_dropout. config.model.learn_sigma: a 2C-channel
  output with the learned variance (DiT). config.sample: `DiffusionOptions`."""

  Options = DiffusionOptions
  FIELDS = dict(                # DiT's settings
      **CONTEXT_FIELDS,         # given first frames of videos (denoiser.py)
      schedule="linear",        # linear (Ho et al. 1e-4..0.02) | cosine (Nichol & Dhariwal)
      num_timesteps=1000,       # training steps of the forward process
      prediction="eps",         # eps | x0 | v: what the network's mean output predicts
      vlb_weight=1.0,           # learn_sigma: loss = mse + vlb_weight * vb (DiT: 1)
      label_dropout=0.1,        # p(label -> null class) for classifier-free guidance
  )

  def __init__(self, config, dataset, **frozen):
    super().__init__(config, dataset, **frozen)
    p = config.paradigm
    self.learn_sigma = bool(config.model.get("learn_sigma", False))
    self.prediction = p.prediction
    self.diffusion = diffusion_losses.GaussianDiffusion.create(p.schedule, p.num_timesteps)

  @classmethod
  def validate_config(cls, config) -> None:
    p = config.paradigm
    for field, value, known in (("paradigm.schedule", p.schedule, diffusion_losses.SCHEDULES),
                                ("paradigm.prediction", p.prediction,
                                 diffusion_losses.PREDICTIONS)):
      if value not in known:
        raise ConfigError(f"config.{field}={value!r}; use one of {', '.join(known)}.")
    _check_steps(cls.Options.from_config(config.sample, p.name), p.num_timesteps,
                 "config.sample")
    if config.model.get("learn_sigma", False) and p.prediction != "eps":
      raise ConfigError("config.model.learn_sigma=True is DiT/ADM's setting with "
                        f"epsilon prediction; config.paradigm.prediction={p.prediction!r} "
                        "is not supported with it.")
    cls.validate_denoiser(config)

  def loss(self, params, batch, rng, train: bool = True):
    d = self.diffusion
    x0 = self.to_model_space(batch)
    b = x0.shape[0]
    r_t, r_eps, r_drop, r_model = jax.random.split(rng, 4)
    t = jax.random.randint(r_t, (b,), 0, d.num_steps)
    eps = jax.random.normal(r_eps, x0.shape, x0.dtype)
    x_t = d.q_sample(x0, t, eps)
    x_t, keep = self.context_input(x_t, x0, r_drop, train)
    cond = self.conditioner.train_input(batch, r_drop, train)
    out = self.network(params, x_t, diffusion_losses.timestep_inputs(d, t), cond,
                       train=train, rng=r_model)
    loss_b, terms = self.context_loss(
        lambda o, a, x, e: diffusion_losses.training_loss(
            d, o, a, x, e, t, prediction=self.prediction, learn_sigma=self.learn_sigma,
            vlb_weight=self.config.paradigm.vlb_weight), keep, out, x0, x_t, eps)
    return jnp.mean(loss_b), {k: jnp.mean(v) for k, v in terms.items()}

  def sample_options(self, options=None, **overrides):
    o = super().sample_options(options, **overrides)
    _check_steps(o, self.diffusion.num_steps, "sample")
    return o

  def sample(self, params, rng, labels, options=None, context=None, **overrides):
    """Images (videos: (N, T, H, W, C)) for ``labels`` (a label array, or for text runs
    a condition dict) with the solver over ``steps`` respaced steps; CFG against the
    null condition. ``context``: the given first frames (N, context_frames, ...) of a
    run with ``context_frames``."""
    o = self.sample_options(options, **overrides)
    c = self.model_shape[-1]
    channels = o.cfg_channels or (c if self.learn_sigma else None)
    cond = self.conditioner.sampling_input(labels)
    net, cond, null = self.with_context(lambda x, t, y: self.network(params, x, t, y),
                                        cond, self.conditioner.null_input(), context)
    batch = cfg_lib.batch_size(cond)
    guided = microbatch.split_calls(
        cfg_lib.guided(net, null, o.cfg_scale, channels=channels), batch,
        self.micro_batch(o, context))
    r_noise, r_steps = jax.random.split(rng)
    noise = jax.random.normal(r_noise, (batch,) + tuple(self.model_shape), jnp.float32)
    x0 = diffusion_samplers.sample(
        lambda x, t: guided(x, t, cond), self.diffusion.respace(o.steps), noise, r_steps,
        solver=o.solver, eta=o.eta, prediction=self.prediction,
        learn_sigma=self.learn_sigma, clip_denoised=o.clip_denoised)
    return self.to_images(self.finish_context(x0, context))


def _check_steps(o: DiffusionOptions, num_timesteps: int, where: str) -> None:
  if options_lib.concrete(o.steps) and o.steps > num_timesteps:
    raise ConfigError(f"{where}.steps={o.steps}: take 1..{num_timesteps} "
                      "(config.paradigm.num_timesteps) sampling steps.")
