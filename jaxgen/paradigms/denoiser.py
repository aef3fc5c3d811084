"""What the flow and diffusion paradigms share: one denoising network.

A denoiser is any model registered in MODELS with the signature ``f(x, t, cond,
train) -> output`` (DiT, U-Net): ``t`` is a float per example (flow: ``t *
time_scale``; diffusion: the timestep index), ``cond`` a label array or the text dict
of `jaxgen.conditioning`. This base builds it, initialises it, applies it and
describes it for ``jaxgen info``; its subclasses add the loss and the sampler.
"""

from __future__ import annotations

from typing import Any, Dict

import jax.numpy as jnp

from jaxgen import conditioning, registry
from jaxgen.config import ConfigError
from jaxgen.paradigms.base import Paradigm


class DenoiserParadigm(Paradigm):
  """Base of `RectifiedFlow` and `GaussianDiffusionParadigm`."""

  supports_text = True
  output_channels_factor = 1  # the network's output channels per input channel

  def __init__(self, config, dataset):
    super().__init__(config, dataset)
    self.model = registry.MODELS.get(config.model.name)(
        config.model, image_shape=self.image_shape, num_classes=self.num_classes,
        dtype=self.compute_dtype)

  @classmethod
  def validate_denoiser(cls, config) -> None:
    """The checks every denoiser paradigm makes (text conditioning, sampler steps)."""
    if config.sample.steps < 1:
      raise ConfigError(f"config.sample.steps={config.sample.steps} must be >= 1.")
    if not 0.0 <= config.paradigm.label_dropout < 1.0:
      raise ConfigError(f"config.paradigm.label_dropout={config.paradigm.label_dropout} "
                        "must be in [0, 1).")
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

  def network(self, params, x, t_in, cond, train: bool = False, rng=None):
    """The network's output for time input ``t_in`` (already scaled) and the model's
    condition input ``cond`` (a label array or the text dict)."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, x, t_in, cond, train=train, rngs=rngs)

  def model_summary(self) -> Dict[str, Any]:
    return dict(module=self.model, inputs=self._dummy_inputs(),
                fixed_params=getattr(self.model, "fixed_parameter_count", lambda: 0)())
