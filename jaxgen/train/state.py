"""The train state every paradigm uses, and its creation already sharded."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from jaxgen.sharding import mesh as mesh_lib


@struct.dataclass
class TrainState:
  """step, params, EMA params, optimizer state, rng, and non-gradient model state.

  ``params`` may hold several networks (e.g. ``{"generator": ..., "discriminator":
  ...}``) with one optax transform per network (``optax.multi_transform``); the state
  and checkpoints do not care. ``rng`` is a raw uint32 key; per-step keys are
  ``fold_in(rng, step)``, so a resumed run draws the same randomness.
  ``model_state`` holds variable collections that are not trained by gradients (a
  VQ codebook's EMA statistics, usage counters): ``{}`` for most paradigms.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any = struct.field(default_factory=dict)


def create_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 rng: jax.Array, init_model_state: Optional[Callable[[jax.Array], Any]] = None
                 ) -> TrainState:
  """Builds a (possibly logically boxed) state; ``init_params(rng)`` may return boxes.
  ``init_model_state(rng)`` (same rng as the parameters) gives ``model_state``."""
  init_rng, state_rng = jax.random.split(rng)
  params = init_params(init_rng)
  model_state = init_model_state(init_rng) if init_model_state is not None else {}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=state_rng, model_state=model_state)


def sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  mesh: Mesh, rng: jax.Array,
                  init_model_state: Optional[Callable[[jax.Array], Any]] = None
                  ) -> Tuple[Callable[[], TrainState], Any, Any]:
  """Returns ``(init_fn, abstract_state, shardings)``.

  Shardings come from the logical axis names of the parameters (optimizer moments
  and EMA inherit them); ``init_fn()`` creates the state directly in those
  shardings, never materialising it whole on one device.
  """
  boxed = jax.eval_shape(lambda: create_state(init_params, tx, rng, init_model_state))
  shardings = mesh_lib.tree_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)

  @jax.jit
  def _init():
    return nn.meta.unbox(create_state(init_params, tx, rng, init_model_state))

  def init_fn():
    with mesh_lib.activate(mesh):
      return jax.jit(_init, out_shardings=shardings)()

  return init_fn, abstract, shardings


def all_finite(tree) -> jax.Array:
  """Whether every floating-point leaf of ``tree`` is finite (a scalar bool; one fused
  reduction when traced)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)

