"""The standard train step, composed from functions (a paradigm's ``train_step`` calls
them; two-network paradigms use `apply_gradients` on their own gradients).

`standard_step` is one optimizer update of a single loss: gradients averaged over
``config.optim.grad_accum`` micro-batches (`accumulate_gradients`, a ``lax.scan``),
then `apply_gradients`: the optimizer update, the EMA update and step + 1.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxgen.train import optim
from jaxgen.train.state import TrainState

Metrics = Dict[str, jax.Array]


def standard_step(loss_fn: Callable[..., Tuple[jax.Array, Metrics]], optim_cfg,
                  state: TrainState, batch, *, tx: optax.GradientTransformation,
                  schedule: optax.Schedule) -> Tuple[TrainState, Metrics]:
  """One update of ``loss_fn(params, batch, rng) -> (loss, metrics)``; the step's rng
  is ``fold_in(state.rng, state.step)``."""
  rng = jax.random.fold_in(state.rng, state.step)
  accum = optim_cfg.grad_accum
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  with jax.named_scope("loss_and_grad"):
    if accum == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, rng)
    else:
      loss, metrics, grads = accumulate_gradients(grad_fn, state.params, batch, rng, accum)
  metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                 lr=schedule(state.step))
  return apply_gradients(optim_cfg, state, grads, tx), metrics


def apply_gradients(optim_cfg, state: TrainState, grads: Any,
                    tx: optax.GradientTransformation, **replace) -> TrainState:
  """The optimizer update, the EMA update (``optim_cfg``'s decay) and step + 1 (plus
  any ``replace``d fields, e.g. a new ``model_state``)."""
  with jax.named_scope("update"):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optim.ema_update(state.ema_params, params, optim.ema_decay(optim_cfg, state.step))
  return state.replace(step=state.step + 1, params=params, ema_params=ema,
                       opt_state=opt_state, **replace)


def accumulate_gradients(grad_fn, params, batch, rng, accum: int):
  """``(loss, metrics, grads)`` averaged over ``accum`` micro-batches of ``batch``
  (micro-batch ``i`` uses ``fold_in(rng, i)``)."""
  micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

  def body(carry, inputs):
    i, mb = inputs
    (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng)))
  zeros = (zeros[0][0], zeros[0][1], zeros[1])
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
  return jax.tree.map(lambda x: x / accum, total)
