"""Rectified flow (class- or text-conditional), on any backbone registered in MODELS.

Model: any denoiser ``f(x_t, t * time_scale, cond, train) -> velocity`` (DiT,
U-Net, ...); ``cond`` is a label array, or the text dict of `jaxgen.conditioning` for
text-conditioned models (``config.text.encoder`` set). Loss: velocity regression on
straight paths with uniform / logit-normal / mode time sampling and optional weighting;
condition dropout to the null class / null text ("") trains the unconditional model
for CFG. Sampler: an ODE step (Euler, Heun, midpoint; the multistep AB2 and
DPM-Solver++(2M)) run by the shared scan loop from noise (t=1) to data (t=0), with CFG
against the null condition.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import flow as flow_losses
from jaxgen.paradigms.denoiser import CONTEXT_FIELDS, DenoiserParadigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import microbatch
from jaxgen.samplers import ode
from jaxgen.samplers import options as options_lib


@dataclasses.dataclass(frozen=True)
class FlowOptions(options_lib.Guided, options_lib.MicroBatched):
  """Rectified-flow sampling: an ODE ``solver`` over ``steps`` steps of the time grid
  from noise (t = 1) to data (t = 0), SD3-shifted by ``shift`` (1 = uniform)."""
  steps: int = 20
  solver: str = "heun"
  shift: float = 1.0
  ignored = ("eta", "cfg_channels", "clip_denoised")  # diffusion's, in the shared preset

  def check(self, where: str) -> None:
    super().check(where)
    options_lib.at_least(where, "steps", self.steps, 1)
    options_lib.choose(where, "solver", self.solver, ode.SOLVERS)
    if options_lib.concrete(self.shift) and self.shift <= 0:
      raise ConfigError(f"{where}.shift={self.shift} must be > 0 (1 = uniform).")


@registry.PARADIGMS.register("flow")
class FlowParadigm(DenoiserParadigm):
  """config.paradigm fields: time_sampling, time_mean, time_std, loss_weighting,
  label_dropout (p(condition -> null): label or caption dropout), time_scale.
  config.sample: `FlowOptions`. config.text: see `jaxgen.conditioning.TextConditioner`."""

  Options = FlowOptions
  FIELDS = dict(
      **CONTEXT_FIELDS,              # given first frames of videos (denoiser.py)
      time_sampling="logit_normal",  # uniform | logit_normal | mode (SD3)
      time_mean=0.0,
      time_std=1.0,
      loss_weighting="none",    # none | logit_normal
      label_dropout=0.1,        # p(label -> null class) for classifier-free guidance
      time_scale=1000.0,        # t in [0, 1] is fed to the network as t * time_scale
  )

  @classmethod
  def validate_config(cls, config) -> None:
    p = config.paradigm
    if p.time_sampling not in flow_losses.TIME_SAMPLINGS:
      raise ConfigError(f"config.paradigm.time_sampling={p.time_sampling!r}; use one of "
                        f"{', '.join(flow_losses.TIME_SAMPLINGS)}.")
    if p.loss_weighting not in flow_losses.WEIGHTINGS:
      raise ConfigError(f"config.paradigm.loss_weighting={p.loss_weighting!r}; use one of "
                        f"{', '.join(flow_losses.WEIGHTINGS)}.")
    if config.model.get("learn_sigma", False):
      raise ConfigError("config.model.learn_sigma=True: a flow predicts a velocity, not "
                        "a variance; set it False (learn_sigma is for "
                        "config.paradigm.name='diffusion').")
    cls.validate_denoiser(config)

  def velocity(self, params, x, t_b, cond, train: bool = False, rng=None):
    """The network's velocity; ``cond``: the model's condition input (a label array or
    the text dict)."""
    return self.network(params, x, t_b * self.config.paradigm.time_scale, cond,
                        train=train, rng=rng)

  def loss(self, params, batch, rng, train: bool = True):
    p = self.config.paradigm
    x0 = self.to_model_space(batch)
    b = x0.shape[0]
    r_t, r_eps, r_drop, r_model = jax.random.split(rng, 4)
    t = flow_losses.sample_time(r_t, b, p.time_sampling, p.time_mean, p.time_std)
    eps = jax.random.normal(r_eps, x0.shape, x0.dtype)
    cond = self.conditioner.train_input(batch, r_drop, train)
    x_t = flow_losses.interpolate(x0, eps, t)
    x_t, keep = self.context_input(x_t, x0, r_drop, train)
    pred = self.velocity(params, x_t, t, cond, train=train, rng=r_model)
    w = flow_losses.weight(t, p.loss_weighting, p.time_mean, p.time_std)
    per_example = self.context_loss(
        lambda v, a, e: flow_losses.velocity_loss(v, a, e, w)[1], keep, pred, x0, eps)
    return jnp.mean(per_example), {}

  def sample(self, params, rng, labels, options=None, context=None, **overrides):
    """Images (videos: (N, T, H, W, C)) for ``labels``: a label array, or for text runs
    a condition dict (`TextConditioner.for_sampling` of prompts; labels give their
    classes' short captions); CFG against the null condition. ``context``: the given
    first frames (N, context_frames, ...) of a run with ``context_frames``."""
    o = self.sample_options(options, **overrides)
    cond = self.conditioner.sampling_input(labels)
    net, cond, null = self.with_context(lambda x, t, y: self.velocity(params, x, t, y),
                                        cond, self.conditioner.null_input(), context)
    batch = cfg_lib.batch_size(cond)
    model_fn = microbatch.split_calls(cfg_lib.guided(net, null, o.cfg_scale), batch,
                                      self.micro_batch(o, context))
    noise = jax.random.normal(rng, (batch,) + tuple(self.model_shape), jnp.float32)
    x0 = ode.solve(o.solver, lambda x, t: model_fn(x, t, cond),
                   ode.time_grid(o.steps, o.shift), noise)
    return self.to_images(self.finish_context(x0, context))
