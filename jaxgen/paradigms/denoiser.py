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

**Video.** Examples may be videos (T, H, W, C) (``moving_fashion_mnist``; a video
denoiser such as ``video_dit``): the losses, the samplers and CFG are rank-generic, and
`sample` returns (N, T, H, W, C) in [-1, 1]. A latent video run is the same latent run
with a causal video KL-VAE whose ``latent_shape`` is (T', h, w, z) and whose
``encode_fn`` / ``decode_fn`` map videos to such latents and back.

**Given first frames** (frame prediction / image-to-video; ``config.paradigm.
context_frames=k``, video only): the first ``k`` frames of the network's input (model
space: latent frames on latents) are the clean frames in training, for every example
whose condition is kept, and they are excluded from its loss; in sampling they replace
the noisy ones in the network's input at every step, and the sample keeps them
exactly. With ``context_dropout=True`` the examples whose condition is dropped (the
paradigm's ``label_dropout``) lose their given frames too (noised like the others and
in the loss), so CFG's null half runs without them (its context positions follow the
unconditional model) and a run can also sample without given frames. `sample` takes
them as ``context`` (N, k, ...) in model space.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict

import jax
import jax.numpy as jnp

from jaxgen import conditioning, registry
from jaxgen.config import ConfigError
from jaxgen.nn import layers
from jaxgen.paradigms.base import Paradigm, building_shapes_only
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.tokenizers import base as tok_base


# ``config.paradigm`` fields every denoiser paradigm declares (see the module docstring).
CONTEXT_FIELDS = dict(
    context_frames=0,         # video: the first k (model-space) frames are given, kept clean
    context_dropout=False,    # drop the given frames with the condition (CFG over them)
)

TEXT_MODELS = {"dit": ("cross_attention", "joint"), "video_dit": ("cross_attention",)}


class DenoiserParadigm(Paradigm):
  """Base of `FlowParadigm` and `DiffusionParadigm`."""

  supports_text = True
  supports_autocast = True  # config.train.autocast: DiT, U-Net, video DiT
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
    self.context_frames = int(config.paradigm.context_frames)
    self.context_dropout = bool(config.paradigm.context_dropout)
    if self.context_frames:
      shape = tuple(self.model_shape)
      if len(shape) != 4 or not 0 < self.context_frames < shape[0]:
        what = (f"videos of {shape[0]} frames" if len(shape) == 4
                else f"images {shape} (not videos)")
        raise ConfigError(f"config.paradigm.context_frames={self.context_frames}: the "
                          f"network denoises {what}; give 1..T-1 first frames of a video "
                          "(or 0: none).")

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
    """Sampled examples as images in [-1, 1]: decoded by the tokenizer on latents
    (returned as they are while tracing inside `undecoded`)."""
    if self.tokenizer is not None:
      if getattr(self, "_undecoded", False):
        return x
      return self.tokenizer.decode_fn(self.tokenizer.variables, x)
    return jnp.clip(x, -1.0, 1.0)

  @contextlib.contextmanager
  def undecoded(self):
    """``sample`` traced inside this context returns the sampler's latents without the
    tokenizer's decoder: what `generate.pick_micro_batch` times (the network calls the
    micro-batch splits; a latent video run's decoder, compiled once per candidate,
    made the measurement take minutes)."""
    prev, self._undecoded = getattr(self, "_undecoded", False), True
    try:
      yield
    finally:
      self._undecoded = prev

  def example_batch(self, batch_size: int):
    batch = super().example_batch(batch_size)
    batch["image"] = jax.ShapeDtypeStruct((batch_size,) + tuple(self.data_shape), jnp.float32)
    return batch

  # -- given first frames (see the module docstring) -----------------------------------
  def context_input(self, x_t, x0, rng, train: bool):
    """Training: ``x_t`` with the first ``context_frames`` frames clean (``x0``'s) for
    the examples that keep them, and ``keep`` (B,) bool; ``(x_t, None)`` without given
    frames. ``rng`` is the condition dropout's: the same examples lose both."""
    k = self.context_frames
    if not k:
      return x_t, None
    b = x_t.shape[0]
    keep = jnp.ones((b,), bool)
    p = self.conditioner.dropout
    if self.context_dropout and train and p > 0:
      keep = ~conditioning.drop_mask(rng, b, p)
    given = replace_context(x_t, x0[:, :k])
    return jnp.where(keep.reshape((b,) + (1,) * (x_t.ndim - 1)), given, x_t), keep

  def context_loss(self, per_example_fn, keep, *arrays):
    """``per_example_fn(*arrays)`` (B,) per example, over the frames after the given
    ones where ``keep`` (all frames elsewhere, or everywhere when ``keep`` is None)."""
    full = per_example_fn(*arrays)
    if keep is None:
      return full
    k = self.context_frames
    future = per_example_fn(*(a[:, k:] for a in arrays))
    return jax.tree.map(lambda f, u: jnp.where(keep, f, u), future, full)

  def with_context(self, net_fn, cond, null, context):
    """``(net_fn', cond', null')`` for sampling with given first frames ``context`` (N, k,
    ...) in model space (None: none given): ``net_fn(x, t, y)`` whose input keeps the
    given frames where the condition's ``keep`` flag is set (the conditional rows; the
    null rows too unless ``context_dropout``), for CFG's doubled batch as for one
    batch; on a doubled batch the given frames' outputs are the null half's (they follow
    the unconditional model). Unchanged without ``context_frames``."""
    if not self.context_frames:
      return net_fn, cond, null
    n = cfg_lib.batch_size(cond)
    k = self.context_frames
    if context is not None:
      context = jnp.asarray(context, jnp.float32)
      want = (n, k) + tuple(self.model_shape[1:])
      if context.shape != want:
        raise ValueError(f"context: given first frames of shape {context.shape}; this run "
                         f"takes {want} (N, config.paradigm.context_frames, ...) in the "
                         "network's space.")

    def call(x, t, y_keep):
      y, keep = y_keep
      if context is not None:
        given = jnp.concatenate([context] * (x.shape[0] // n), axis=0)
        keep_x = keep.reshape((-1,) + (1,) * (x.ndim - 1))
        x = jnp.where(keep_x, replace_context(x, given), x)
      out = net_fn(x, t, y)
      if x.shape[0] == 2 * n:  # [cond; null]: the given frames follow the null half
        out = out.at[:n, :k].set(out[n:, :k])
      return out

    keep = jnp.full((n,), context is not None)
    null_keep = jnp.bool_(context is not None and not self.context_dropout)
    return call, (cond, keep), (null, null_keep)

  def given_frames(self) -> int:
    """The pixel frames that make the ``context_frames`` given (model-space) frames:
    as many on pixels; on a causal video VAE's latents, the 1 + ft (k - 1) frames that
    encode alone into the first k latent frames (causality: the same latents as the
    whole clip's first k)."""
    k = self.context_frames
    if not k or self.tokenizer is None:
      return k
    t, t_lat = self.image_shape[0], self.model_shape[0]
    return 1 + (t - 1) // max(t_lat - 1, 1) * (k - 1)

  def sample_from_frames(self, params, rng, labels, frames, options=None, **overrides):
    """`sample` with given first frames: ``frames`` (N, `given_frames`, H, W, C) in
    [-1, 1], taken to the network's space (encoded by the tokenizer on latents) as
    ``context``; the samples keep them (exactly on pixels; on latents, their latents)."""
    if not self.context_frames:
      raise ConfigError(f"The {self.name!r} run was trained without given frames "
                        "(config.paradigm.context_frames=0): it cannot continue them.")
    context = self.to_model_space({"image": jnp.asarray(frames, jnp.float32)})
    if context.shape[1] != self.context_frames:
      raise ValueError(f"{frames.shape[1]} given frames make {context.shape[1]} frames in "
                       f"the network's space; the run takes {self.context_frames} "
                       f"(give {self.given_frames()} frames).")
    return self.sample(params, rng, labels, options, context=context, **overrides)

  def micro_batch(self, options, context) -> int:
    """Rows per network call in the sampler (`samplers.microbatch`): the option, or 0
    (the whole chunk) when first frames are given (their closure holds all the rows)."""
    return 0 if context is not None and self.context_frames else options.micro_batch

  def finish_context(self, x0, context):
    """The sample with its given first frames exactly (in model space)."""
    if not self.context_frames or context is None:
      return x0
    return replace_context(x0, jnp.asarray(context, x0.dtype))

  @classmethod
  def validate_denoiser(cls, config) -> None:
    """The checks every denoiser paradigm makes (text conditioning, given frames, sampler
    steps)."""
    p = config.paradigm
    if not 0.0 <= p.label_dropout < 1.0:
      raise ConfigError(f"config.paradigm.label_dropout={p.label_dropout} "
                        "must be in [0, 1).")
    if int(p.context_frames) < 0:
      raise ConfigError(f"config.paradigm.context_frames={p.context_frames} must be >= 0 "
                        "(0: no given frames).")
    if p.context_dropout and (not p.context_frames or p.label_dropout <= 0):
      raise ConfigError("config.paradigm.context_dropout=True drops the given first frames "
                        "with the condition: it needs context_frames > 0 and "
                        f"label_dropout > 0 (have {p.context_frames}, {p.label_dropout}).")
    text = conditioning.uses_text(config)
    mode = config.model.get("text_conditioning", "none") or "none"
    modes = TEXT_MODELS.get(config.model.name, ())
    if text and mode not in modes:
      raise ConfigError("config.text.encoder is set: the model must be a DiT with "
                        "config.model.text_conditioning='cross_attention' or 'joint', or "
                        "a video_dit with 'cross_attention'.")
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
    with layers.autocast(self.autocast_dtype):  # config.train.autocast (else a no-op)
      return self.model.apply({"params": params}, x, t_in, cond, train=train, rngs=rngs)

  def model_summary(self) -> Dict[str, Any]:
    return dict(module=self.model, inputs=self._dummy_inputs(),
                fixed_params=getattr(self.model, "fixed_parameter_count", lambda: 0)())


def replace_context(x, given):
  """``x`` (B, T, ...) with its first ``given.shape[1]`` frames replaced by ``given``."""
  return jnp.concatenate([given.astype(x.dtype), x[:, given.shape[1]:]], axis=1)


def _configured_tokenizer(config) -> str:
  return config.tokenizer.workdir if "tokenizer" in config else ""
