"""The train state every paradigm uses, and its creation already sharded."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from jaxgen.sharding import mesh as mesh_lib


@struct.dataclass
class TrainState:
  """step, params, EMA params, optimizer state, rng.

  ``params`` may hold several networks (e.g. ``{"generator": ..., "discriminator":
  ...}``) with one optax transform per network (``optax.multi_transform``); the state
  and checkpoints do not care. ``rng`` is a raw uint32 key; per-step keys are
  ``fold_in(rng, step)``, so a resumed run draws the same randomness.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def create_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
  """Builds a (possibly logically boxed) state; ``init_params(rng)`` may return boxes."""
  init_rng, state_rng = jax.random.split(rng)
  params = init_params(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=state_rng)


def sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  mesh: Mesh, rng: jax.Array) -> Tuple[Callable[[], TrainState], Any, Any]:
  """Returns ``(init_fn, abstract_state, shardings)``.

  Shardings come from the logical axis names of the parameters (optimizer moments
  and EMA inherit them); ``init_fn()`` creates the state directly in those
  shardings, never materialising it whole on one device.
  """
  boxed = jax.eval_shape(lambda: create_state(init_params, tx, rng))
  shardings = mesh_lib.tree_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)

  @jax.jit
  def _init():
    return nn.meta.unbox(create_state(init_params, tx, rng))

  def init_fn():
    with mesh_lib.activate(mesh):
      return jax.jit(_init, out_shardings=shardings)()

  return init_fn, abstract, shardings


def count_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
