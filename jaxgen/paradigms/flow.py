"""Rectified flow (class- or text-conditional), on any backbone registered in MODELS.

Model: any denoiser ``f(x_t, t * time_scale, cond, train) -> velocity`` (DiT,
U-Net, ...); ``cond`` is a label array, or the text dict of `jaxgen.conditioning` for
text-conditioned models (``config.text.encoder`` set). Loss: velocity regression on
straight paths with uniform / logit-normal / mode time sampling and optional weighting;
condition dropout to the null class / null text ("") trains the unconditional model
for CFG. Sampler: an ODE step (Euler, Heun, midpoint) run by the shared scan loop from
noise (t=1) to data (t=0), with CFG against the null condition.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp

from jaxgen import conditioning, registry
from jaxgen.config import ConfigError
from jaxgen.losses import flow as flow_losses
from jaxgen.paradigms.base import Paradigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import loop, ode


@registry.PARADIGMS.register("flow")
class RectifiedFlow(Paradigm):
  """config.paradigm fields: time_sampling, time_mean, time_std, loss_weighting,
  label_dropout (p(condition -> null): label or caption dropout), time_scale.
  config.sample: steps, solver, cfg_scale, shift. config.text: see
  `jaxgen.conditioning.TextConditioner`."""

  supports_text = True

  def __init__(self, config, dataset):
    super().__init__(config, dataset)
    self.model = registry.MODELS.get(config.model.name)(
        config.model, image_shape=self.image_shape, num_classes=self.num_classes,
        dtype=self.compute_dtype)

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
    text = conditioning.uses_text(config)
    mode = config.model.get("text_conditioning", "none") or "none"
    if text and (config.model.name != "dit" or mode == "none"):
      raise ConfigError("config.text.encoder is set: the model must be a DiT with "
                        "config.model.text_conditioning='cross_attention' or 'joint'.")
    if not text and mode != "none":
      raise ConfigError(f"config.model.text_conditioning={mode!r} needs a text encoder "
                        "(config.text.encoder).")

  def _dummy_inputs(self, batch: int = 1):
    return (jnp.zeros((batch,) + self.image_shape, jnp.float32),
            jnp.zeros((batch,), jnp.float32),
            self.conditioner.model_input(self.conditioner.dummy(batch)))

  def init_params(self, rng):
    return self.model.init(rng, *self._dummy_inputs())["params"]

  def velocity(self, params, x, t_b, cond, train: bool = False, rng=None):
    """The network's velocity; ``cond``: the model's condition input (a label array or
    the text dict)."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, x, t_b * self.config.paradigm.time_scale,
                            cond, train=train, rngs=rngs)

  def loss(self, params, batch, rng, train: bool = True):
    p = self.config.paradigm
    x0 = batch["image"]
    b = x0.shape[0]
    r_t, r_eps, r_drop, r_model = jax.random.split(rng, 4)
    t = flow_losses.sample_time(r_t, b, p.time_sampling, p.time_mean, p.time_std)
    eps = jax.random.normal(r_eps, x0.shape, x0.dtype)
    cond = self.condition(batch, r_drop, train)
    x_t = flow_losses.interpolate(x0, eps, t)
    pred = self.velocity(params, x_t, t, cond, train=train, rng=r_model)
    w = flow_losses.weight(t, p.loss_weighting, p.time_mean, p.time_std)
    loss, _ = flow_losses.velocity_loss(pred, x0, eps, w)
    return loss, {}

  def sample(self, params, rng, labels, *, steps=None, cfg_scale=None, solver=None,
             shift=None):
    """Images for ``labels``: a label array, or for text runs a condition dict
    (`TextConditioner.for_sampling` of prompts; labels give their classes' short
    captions); CFG against the null condition."""
    s = self.config.sample
    steps = s.steps if steps is None else steps
    cfg_scale = s.cfg_scale if cfg_scale is None else cfg_scale
    solver = s.solver if solver is None else solver
    shift = s.shift if shift is None else shift
    cond = self.sampling_condition(labels)
    model_fn = cfg_lib.guided(lambda x, t, y: self.velocity(params, x, t, y),
                              self.null_condition(), cfg_scale)
    step_fn = ode.get_solver(solver)(lambda x, t: model_fn(x, t, cond),
                                     ode.time_grid(steps, shift))
    batch = cfg_lib.batch_size(cond)
    noise = jax.random.normal(rng, (batch,) + self.image_shape, jnp.float32)
    x0 = loop.run_loop(step_fn, noise, steps)
    return jnp.clip(x0, -1.0, 1.0)

  def model_summary(self) -> Dict[str, Any]:
    return dict(module=self.model, inputs=self._dummy_inputs(),
                fixed_params=getattr(self.model, "fixed_parameter_count", lambda: 0)())
