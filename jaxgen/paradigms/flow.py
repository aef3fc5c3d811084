"""Rectified flow (class-conditional), on any backbone registered in MODELS.

Model: any denoiser ``f(x_t, t * time_scale, label, train) -> velocity`` (DiT,
U-Net, ...). Loss: velocity regression on straight paths with uniform /
logit-normal / mode time sampling and optional weighting; label dropout to the null
class trains the unconditional model for CFG. Sampler: an ODE step (Euler, Heun,
midpoint) run by the shared scan loop from noise (t=1) to data (t=0), with CFG.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import flow as flow_losses
from jaxgen.paradigms.base import Paradigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import loop, ode


@registry.PARADIGMS.register("flow")
class RectifiedFlow(Paradigm):
  """config.paradigm fields: time_sampling, time_mean, time_std, loss_weighting,
  label_dropout, time_scale. config.sample: steps, solver, cfg_scale, shift."""

  def __init__(self, config, dataset):
    super().__init__(config, dataset)
    self.model = registry.MODELS.get(config.model.name)(
        config.model, image_shape=self.image_shape, num_classes=self.num_classes,
        dtype=self.compute_dtype)
    self.null_label = self.num_classes

  @classmethod
  def validate_config(cls, config) -> None:
    p = config.paradigm
    if p.time_sampling not in flow_losses.TIME_SAMPLINGS:
      raise ConfigError(f"config.paradigm.time_sampling={p.time_sampling!r}; use one of "
                        f"{', '.join(flow_losses.TIME_SAMPLINGS)}.")
    if p.loss_weighting not in flow_losses.WEIGHTINGS:
      raise ConfigError(f"config.paradigm.loss_weighting={p.loss_weighting!r}; use one of "
                        f"{', '.join(flow_losses.WEIGHTINGS)}.")
    if not 0.0 <= p.label_dropout < 1.0:
      raise ConfigError(f"config.paradigm.label_dropout={p.label_dropout} must be in [0, 1).")
    if config.sample.solver not in ode.SOLVERS:
      raise ConfigError(f"config.sample.solver={config.sample.solver!r}; use one of "
                        f"{', '.join(ode.SOLVERS)}.")
    if config.sample.steps < 1:
      raise ConfigError(f"config.sample.steps={config.sample.steps} must be >= 1.")

  def _dummy_inputs(self, batch: int = 1):
    return (jnp.zeros((batch,) + self.image_shape, jnp.float32),
            jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.int32))

  def init_params(self, rng):
    return self.model.init(rng, *self._dummy_inputs())["params"]

  def velocity(self, params, x, t_b, labels, train: bool = False, rng=None):
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, x, t_b * self.config.paradigm.time_scale,
                            labels, train=train, rngs=rngs)

  def loss(self, params, batch, rng, train: bool = True):
    p = self.config.paradigm
    x0, labels = batch["image"], batch["label"]
    b = x0.shape[0]
    r_t, r_eps, r_drop, r_model = jax.random.split(rng, 4)
    t = flow_losses.sample_time(r_t, b, p.time_sampling, p.time_mean, p.time_std)
    eps = jax.random.normal(r_eps, x0.shape, x0.dtype)
    if train and p.label_dropout > 0:
      drop = jax.random.bernoulli(r_drop, p.label_dropout, (b,))
      labels = jnp.where(drop, self.null_label, labels)
    x_t = flow_losses.interpolate(x0, eps, t)
    pred = self.velocity(params, x_t, t, labels, train=train, rng=r_model)
    w = flow_losses.weight(t, p.loss_weighting, p.time_mean, p.time_std)
    loss, _ = flow_losses.velocity_loss(pred, x0, eps, w)
    return loss, {}

  def sample(self, params, rng, labels, *, steps=None, cfg_scale=None, solver=None,
             shift=None):
    s = self.config.sample
    steps = s.steps if steps is None else steps
    cfg_scale = s.cfg_scale if cfg_scale is None else cfg_scale
    solver = s.solver if solver is None else solver
    shift = s.shift if shift is None else shift
    model_fn = cfg_lib.guided(lambda x, t, y: self.velocity(params, x, t, y),
                              jnp.int32(self.null_label), cfg_scale)
    step_fn = ode.get_solver(solver)(lambda x, t: model_fn(x, t, labels),
                                     ode.time_grid(steps, shift))
    noise = jax.random.normal(rng, (labels.shape[0],) + self.image_shape, jnp.float32)
    x0 = loop.run_loop(step_fn, noise, steps)
    return jnp.clip(x0, -1.0, 1.0)

  def model_summary(self) -> Dict[str, Any]:
    return dict(module=self.model, inputs=self._dummy_inputs(),
                fixed_params=getattr(self.model, "fixed_parameter_count", lambda: 0)())
