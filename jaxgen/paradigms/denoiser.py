"""What the flow and diffusion paradigms share: one denoising network, in pixel space
or in a frozen KL-VAE's latent space.

A denoiser is any model registered in MODELS with the signature ``f(x, t, cond,
train) -> output`` (DiT, U-Net): ``t`` is a float per example (flow: ``t *
time_scale``; diffusion: the timestep index), ``cond`` a label array or the text dict
of `jaxgen.conditioning`. This base builds it, initialises it, applies it and
describes it for ``jaxgen info``; its subclasses add the loss and the sampler.

**Latent runs** (Stable Diffusion / DiT): with pre-computed latents
(``config.data.name="tokens"``, written by ``jaxgen tokenize`` of a KL-VAE run, scaled by
its fitted latent scale) or with ``config.tokenizer.workdir`` set on an image dataset
(encoded in the step), the network works on the latents (``model_shape``) and `sample`
decodes them through the frozen tokenizer, so ``jaxgen sample``, the preview grids and
``jaxgen eval`` see images (``image_shape``). The tokenizer is a frozen network
(`jaxgen.frozen`): an argument of the jitted programs, recorded with the run.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp

from jaxgen import conditioning, registry
from jaxgen.config import ConfigError
from jaxgen.paradigms.base import Paradigm, building_shapes_only
from jaxgen.tokenizers import base as tok_base


class DenoiserParadigm(Paradigm):
  """Base of `FlowParadigm` and `DiffusionParadigm`."""

  supports_text = True
  output_channels_factor = 1  # the network's output channels per input channel

  @classmethod
  def load_frozen(cls, config):
    """The KL tokenizer of a latent run (its latents, or encoding in the step); in
    `shapes_only` mode its shapes only (``jaxgen info``)."""
    on_latents = config.data.name == "tokens"
    workdir = tok_base.tokenizer_workdir(config, required=False) if (
        on_latents or _configured_tokenizer(config)) else ""
    if not workdir:
      if on_latents and not building_shapes_only():
        raise ConfigError(f"config.data.data_dir={config.data.get('data_dir')} holds "
                          "latents but no tokenizer is known to decode them: set "
                          "config.tokenizer.workdir to the KL-VAE run that wrote them.")
      return {}
    if building_shapes_only():
      return {"tokenizer": tok_base.Tokenizer.from_workdir(workdir, abstract=True)}
    return {"tokenizer": tok_base.load_frozen_tokenizer(
        config, workdir, ("kl",), f"the {config.paradigm.name!r} paradigm")}

  def __init__(self, config, dataset, tokenizer=None, **frozen):
    super().__init__(config, dataset, **frozen)
    self.data_shape = self.image_shape   # one preprocessed example of the data
    self.model_shape = self.image_shape  # what the network denoises
    self.tokenizer = None
    self.on_latents = config.data.name == "tokens"
    self.encode_in_step = False
    if tokenizer is not None:
      self._setup_latents(config, tokenizer)
    self.model = registry.MODELS.get(config.model.name)(
        config.model, image_shape=self.model_shape, num_classes=self.num_classes,
        dtype=self.compute_dtype)

  def _setup_latents(self, config, tok) -> None:
    self.encode_in_step = not self.on_latents
    if not building_shapes_only():  # `jaxgen info` has the tokenizer's shapes only
      self.tokenizer = tok
    workdir = tok.workdir
    latent = tuple(tok.latent_shape)
    if self.on_latents and tuple(self.data_shape) and tuple(self.data_shape) != latent:
      raise ConfigError(f"config.data.data_dir={config.data.data_dir} holds "
                        f"{self.data_shape} latents, but the tokenizer {workdir} makes "
                        f"{latent}: re-run `jaxgen tokenize --workdir {workdir}`.")
    self.model_shape = latent
    self.image_shape = tuple(tok.image_shape)

  def to_model_space(self, batch) -> jnp.ndarray:
    """The batch's examples in the network's space: images, or latents (pre-computed, or
    encoded here by the frozen tokenizer, scaled by its latent scale)."""
    x = batch["image"]
    if self.encode_in_step:
      x = jax.lax.stop_gradient(self.tokenizer.encode_fn(self.tokenizer.variables, x))
    return x

  def to_images(self, x) -> jnp.ndarray:
    """Sampled examples as images in [-1, 1]: decoded by the tokenizer on latents."""
    if self.tokenizer is not None:
      return self.tokenizer.decode_fn(self.tokenizer.variables, x)
    return jnp.clip(x, -1.0, 1.0)

  def example_batch(self, batch_size: int):
    batch = super().example_batch(batch_size)
    batch["image"] = jax.ShapeDtypeStruct((batch_size,) + tuple(self.data_shape), jnp.float32)
    return batch

  @classmethod
  def validate_denoiser(cls, config) -> None:
    """The checks every denoiser paradigm makes (text conditioning, sampler steps)."""
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
    meta = tok_base.tokens_meta(config, required=False)
    if meta is not None:
      tok_base.check_kind(meta["kind"], f"config.data.data_dir={config.data.data_dir}",
                          ("kl",), f"the {config.paradigm.name!r} paradigm")
    clip = getattr(cls.Options.from_config(config.sample, config.paradigm.name),
                   "clip_denoised", False)
    if (meta is not None or _configured_tokenizer(config)) and clip:
      raise ConfigError("config.sample.clip_denoised=True would clip latents to [-1, 1]; "
                        "set it False for a latent run (as DiT samples).")
    tok_base.tokenizer_workdir(config, required=False)  # codes and tokenizer agree

  def _dummy_inputs(self, batch: int = 1):
    return (jnp.zeros((batch,) + tuple(self.model_shape), jnp.float32),
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


def _configured_tokenizer(config) -> str:
  return config.tokenizer.workdir if "tokenizer" in config else ""
