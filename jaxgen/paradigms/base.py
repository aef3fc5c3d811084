"""The Paradigm interface: a model, a loss, a train step and a sampler.

The shared loop, checkpoints, CLI and evaluation talk to a paradigm only through
this interface. A paradigm overrides ``init_params``, ``loss`` and ``sample``; the
default ``train_step`` (one optimizer, optional gradient accumulation, EMA) serves
every single-network paradigm, and two-network paradigms (GAN, tokenizer) override it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Dict, Iterator, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxgen import conditioning
from jaxgen import config as config_lib
from jaxgen.data.preprocess import preprocessed_shape
from jaxgen.samplers import options as options_lib
from jaxgen.train import optim
from jaxgen.train import step as step_lib
from jaxgen.train.state import TrainState

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]

# What a run can be asked to do; the command line dispatches on these, never on
# paradigm names. "prompts" follows from the config (a text encoder), the rest are
# declared by the paradigm class (``capabilities``).
CAPABILITIES = {
    "samples": "samples images (flow, diffusion, MaskGIT, MAGE, autoregressive, VAR, "
               "GAN)",
    "reconstructs": "reconstructs images (a tokenizer: configs/fmnist_vqgan.py, "
                    "_vitvq, _msvq, _vae)",
    "features": "has a representation to probe (MAGE: configs/fmnist_mage.py)",
    "prompts": "is text-conditioned (config.text.encoder: configs/fmnist_t2i.py)",
}


_SHAPES_ONLY = contextvars.ContextVar("jaxgen_shapes_only", default=False)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
  """Within it, configs are validated and paradigms built from the config alone, for
  shapes and FLOPs (``jaxgen info``): no tokenizer weights, code files, perceptual
  weights or classifier are loaded (or trained)."""
  token = _SHAPES_ONLY.set(True)
  try:
    yield
  finally:
    _SHAPES_ONLY.reset(token)


def building_shapes_only() -> bool:
  """Whether the caller runs inside `shapes_only`."""
  return _SHAPES_ONLY.get()


class Paradigm:
  """Base class. Subclasses register with ``@registry.PARADIGMS.register(name)``.

  Conditioning is composed (`jaxgen.conditioning`): ``self.conditioner`` is class
  labels, or text when ``config.text.encoder`` is set and the paradigm
  ``supports_text``; its ``train_input`` / ``sampling_input`` / ``null_input`` give the
  model its condition input.
  """

  supports_text = False  # paradigms whose models take the text condition dict
  # paradigms that apply their network inside `layers.autocast` (config.train.autocast)
  supports_autocast = False
  capabilities = frozenset({"samples"})  # keys of CAPABILITIES, "prompts" aside
  # ``config.paradigm``'s fields (beside ``name``) with their defaults, declared once:
  # ``configs/common.py`` builds presets from them, `config.fill_defaults` completes
  # configs with them.
  FIELDS: Dict[str, Any] = {}
  # The typed sampling options `sample` takes (`jaxgen.samplers.options`): their
  # defaults, filled from ``config.sample``, overridable by name.
  Options = options_lib.SampleOptions

  def __init__(self, config, dataset, **frozen):
    """``frozen``: the trained networks `load_frozen` read (a ``tokenizer``); the
    constructor loads nothing and leaves ``dataset`` as it is (a text run's
    ``self.dataset`` is a new spec whose examples carry the text arrays)."""
    del frozen  # the paradigms with frozen networks take them by name
    self.config = config
    self.image_shape = preprocessed_shape(config.data.pp, dataset.image_shape)
    self.num_classes = dataset.num_classes
    # ``config.train.autocast``: the network is built in float32 and applied inside
    # ``layers.autocast(self.autocast_dtype)`` (matmul operands in compute_dtype)
    dtype = jnp.dtype(config.train.compute_dtype)
    autocast = bool(config.train.get("autocast", False)) and self.supports_autocast
    self.autocast_dtype = dtype if autocast else None
    self.compute_dtype = jnp.dtype(jnp.float32) if autocast else dtype
    self.name = config.paradigm.name
    dropout = config.paradigm.label_dropout if "label_dropout" in self.FIELDS else 0.0
    # conditioning (class labels or text), composed: `self.conditioner.train_input`,
    # ``.sampling_input``, ``.null_input`` give the model its condition input
    self.conditioner = conditioning.make_conditioner(config, dataset, dropout)
    if self.conditioner.kind == "text" and hasattr(dataset, "source"):
      dataset = self.conditioner.with_text(dataset)
    self.dataset = dataset

  @classmethod
  def build(cls, config, dataset) -> "Paradigm":
    """The paradigm of ``config`` over ``dataset``: its frozen networks read
    (`load_frozen`), then constructed with them."""
    return cls(config, dataset, **cls.load_frozen(config))

  @classmethod
  def load_frozen(cls, config) -> Dict[str, Any]:
    """The trained networks this paradigm's constructor takes (e.g. ``tokenizer``),
    read from their runs; none by default."""
    del config
    return {}

  @classmethod
  def validate_config(cls, config) -> None:
    """Raises ``jaxgen.config.ConfigError`` for fields this paradigm cannot use."""

  @classmethod
  def can(cls, capability: str, config) -> bool:
    """Whether a run of ``config`` has ``capability`` (a key of `CAPABILITIES`)."""
    if capability == "prompts":
      return cls.supports_text and config_lib.uses_text(config)
    return capability in cls.capabilities

  @classmethod
  def require(cls, capability: str, action: str, config, workdir: str = "") -> None:
    """Raises `ConfigError` unless a run of ``config`` can do ``action`` (e.g.
    ``--linear-probe``), naming the run and what ``action`` needs."""
    if not cls.can(capability, config):
      run = f"{workdir} holds" if workdir else "This config is"
      has = [CAPABILITIES[c] for c in sorted(cls.capabilities) if c != capability][:1]
      it = f" (it {has[0].split(' (')[0]})" if has else ""
      raise config_lib.ConfigError(f"{run} a {config.paradigm.name!r} run{it}; {action} "
                                   f"needs a run that {CAPABILITIES[capability]}.")

  # -- what a paradigm implements ---------------------------------------------------
  def init_params(self, rng: jax.Array) -> Any:
    """Parameters (with logical-axis boxes) for a fresh run."""
    raise NotImplementedError

  def loss(self, params: Any, batch: Batch, rng: jax.Array, train: bool = True
           ) -> Tuple[jax.Array, Metrics]:
    raise NotImplementedError

  def sample(self, params: Any, rng: jax.Array, labels: jax.Array, options=None,
             **overrides) -> jax.Array:
    """Images in [-1, 1], NHWC, for ``labels`` (the null label = unconditional), with
    ``sample_options(options, **overrides)``."""
    raise NotImplementedError

  def given_frames(self) -> int:
    """How many first frames (pixel space) `sample_from_frames` continues by default;
    0: this run cannot continue given frames (an image run, a video run trained
    without ``context_frames``, a paradigm that cannot decode from given tokens)."""
    return 0

  def sample_from_frames(self, params: Any, rng: jax.Array, labels: jax.Array,
                         frames: jax.Array, options=None, **overrides) -> jax.Array:
    """Videos (N, T, H, W, C) in [-1, 1] that continue the given first ``frames`` (N, F,
    H, W, C) in [-1, 1] (frame prediction; F = 1: image-to-video), for ``labels``,
    guided as `sample`. Paradigms with `given_frames` > 0 implement it."""
    raise config_lib.ConfigError(f"The {self.name!r} run cannot continue given frames.")

  def sample_options(self, options=None, **overrides):
    """``options`` (default: ``config.sample``'s) with ``overrides`` by name (None =
    keep); an option this paradigm does not have, or a bad value, is a `ConfigError`
    naming it."""
    if options is None:
      options = self.Options.from_config(self.config.sample, self.name)
    return options.replace(self.name, **overrides)

  def example_batch(self, batch_size: int) -> Batch:
    """Abstract batch (ShapeDtypeStructs) as the data pipeline delivers it."""
    return {"image": jax.ShapeDtypeStruct((batch_size,) + self.image_shape, jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            **self.conditioner.batch_fields(batch_size)}

  def model_summary(self) -> Dict[str, Any]:
    """Callable + example inputs of the main network, for ``jaxgen info``."""
    raise NotImplementedError

  # -- shared defaults a paradigm may override ---------------------------------------
  default_params = "ema"  # which weights `jaxgen sample` / frozen use take by default

  def frozen_networks(self) -> Dict[str, Any]:
    """The frozen networks this paradigm's programs use (`jaxgen.frozen`): its
    ``tokenizer`` when it has one, and the text encoder when text is encoded in the
    step. The loop and the sampler pass their weights to the jitted programs as
    arguments. None while building shapes only (``jaxgen info``)."""
    if building_shapes_only():
      return {}
    nets = {}
    if getattr(self, "tokenizer", None) is not None:
      nets["tokenizer"] = self.tokenizer
    if self.conditioner.kind == "text" and self.conditioner.encode_in_step:
      nets["text_encoder"] = self.conditioner.encoder
    return nets

  def init_model_state(self, rng: jax.Array) -> Dict[str, Any]:
    """Non-gradient variable collections (e.g. a VQ codebook's EMA statistics) kept in
    ``TrainState.model_state``; none by default."""
    del rng
    return {}

  def make_optimizer(self) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` from ``config.optim``; two-network paradigms return one
    ``optax.multi_transform`` with an optimizer per network."""
    return optim.make_optimizer(self.config.optim, self.config.train.num_steps)

  def preview(self, state: TrainState, rng: jax.Array, num: int) -> jax.Array:
    """Images for the loop's PNG grid: ``num`` EMA samples, each class in turn (text
    runs: each class's short caption)."""
    return self.sample(state.ema_params, rng, self.conditioner.preview_input(num))

  def preview_columns(self, num: int):
    """Columns of the preview grid (a column per class when ``num`` allows)."""
    nc = max(self.num_classes, 1)
    return nc if num % nc == 0 else None

  def train_step(self, state: TrainState, batch: Batch, *,
                 tx: optax.GradientTransformation, schedule: optax.Schedule
                 ) -> Tuple[TrainState, Metrics]:
    """One optimizer update of `loss` (`jaxgen.train.step.standard_step`: gradient
    accumulation over ``config.optim.grad_accum`` micro-batches, EMA); two-network
    paradigms override it."""
    return step_lib.standard_step(self.loss, self.config.optim, state, batch, tx=tx,
                                  schedule=schedule)
