"""The Paradigm interface: a model, a loss, a train step and a sampler.

The shared loop, checkpoints, CLI and evaluation talk to a paradigm only through
this interface. A paradigm overrides ``init_params``, ``loss`` and ``sample``; the
default ``train_step`` (one optimizer, optional gradient accumulation, EMA) serves
every single-network paradigm, and two-network paradigms (GAN, tokenizer) override it.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data import preprocess
from jaxgen.train import optim
from jaxgen.train.state import TrainState

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]


def preprocessed_shape(pp: str, stored_shape) -> Tuple[int, ...]:
  """Shape of an image after the ``pp`` string (runs it once on a blank example)."""
  ex = {"image": np.zeros(stored_shape, np.uint8), "label": 0, "caption_short": "",
        "caption_detailed": ""}  # captioned data: pp may start with choose_caption
  return tuple(preprocess.parse(pp)(ex, np.random.default_rng(0))["image"].shape)


class Paradigm:
  """Base class. Subclasses register with ``@registry.PARADIGMS.register(name)``."""

  def __init__(self, config, dataset):
    self.config = config
    self.dataset = dataset
    self.image_shape = preprocessed_shape(config.data.pp, dataset.image_shape)
    self.num_classes = dataset.num_classes
    self.compute_dtype = jnp.dtype(config.train.compute_dtype)

  @classmethod
  def validate_config(cls, config) -> None:
    """Raises ``jaxgen.config.ConfigError`` for fields this paradigm cannot use."""

  # -- what a paradigm implements ---------------------------------------------------
  def init_params(self, rng: jax.Array) -> Any:
    """Parameters (with logical-axis boxes) for a fresh run."""
    raise NotImplementedError

  def loss(self, params: Any, batch: Batch, rng: jax.Array, train: bool = True
           ) -> Tuple[jax.Array, Metrics]:
    raise NotImplementedError

  def sample(self, params: Any, rng: jax.Array, labels: jax.Array, **kwargs) -> jax.Array:
    """Images in [-1, 1], NHWC, for ``labels`` (the null label = unconditional)."""
    raise NotImplementedError

  def example_batch(self, batch_size: int) -> Batch:
    """Abstract batch (ShapeDtypeStructs) as the data pipeline delivers it."""
    return {"image": jax.ShapeDtypeStruct((batch_size,) + self.image_shape, jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def model_summary(self) -> Dict[str, Any]:
    """Callable + example inputs of the main network, for ``jaxgen info``."""
    raise NotImplementedError

  # -- shared defaults a paradigm may override ---------------------------------------
  default_params = "ema"  # which weights `jaxgen sample` / frozen use take by default

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
    """Images for the loop's PNG grid: ``num`` EMA samples, each class in turn."""
    labels = jnp.arange(num, dtype=jnp.int32) % max(self.num_classes, 1)
    return self.sample(state.ema_params, rng, labels)

  def preview_columns(self, num: int):
    """Columns of the preview grid (a row per class when ``num`` allows)."""
    nc = max(self.num_classes, 1)
    return nc if num % nc == 0 else None

  # -- shared default -------------------------------------------------------------
  def train_step(self, state: TrainState, batch: Batch, *,
                 tx: optax.GradientTransformation, schedule: optax.Schedule
                 ) -> Tuple[TrainState, Metrics]:
    """One optimizer update; averages gradients over ``config.optim.grad_accum``
    micro-batches; updates the EMA."""
    rng = jax.random.fold_in(state.rng, state.step)
    accum = self.config.optim.grad_accum
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    with jax.named_scope("loss_and_grad"):
      if accum == 1:
        (loss, metrics), grads = grad_fn(state.params, batch, rng)
      else:
        loss, metrics, grads = self._accumulate(grad_fn, state.params, batch, rng, accum)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                   lr=schedule(state.step))
    return self.apply_gradients(state, grads, tx), metrics

  def apply_gradients(self, state: TrainState, grads: Any,
                      tx: optax.GradientTransformation, **replace) -> TrainState:
    """The optimizer update, the EMA update and step + 1 (plus any ``replace``d
    fields, e.g. a new ``model_state``)."""
    with jax.named_scope("update"):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema = optim.ema_update(state.ema_params, params,
                             optim.ema_decay(self.config.optim, state.step))
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state, **replace)

  @staticmethod
  def _accumulate(grad_fn, params, batch, rng, accum):
    micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

    def body(carry, inputs):
      i, mb = inputs
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
      acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
      return acc, None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng)))
    zeros = (zeros[0][0], zeros[0][1], zeros[1])
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
    return jax.tree.map(lambda x: x / accum, total)
