"""One mesh with axes ("data", "fsdp", "context", "tensor") and one logical-axis rules
table.

Models name the axes of their parameters and activations logically (``"embed"``,
``"mlp"``, ...); ``LOGICAL_RULES`` says which mesh axis each name is split over. The
same model then runs data-parallel, FSDP (ZeRO-3), sequence-parallel (``"context"``:
the token axis of activations, ``"length"``, split over it; long video token
sequences) or tensor-parallel by changing only ``config.mesh``. The batch is split over
("data", "fsdp") only: the ``context`` devices of one data shard see the same examples
and each holds a slice of their tokens. A dimension that does not divide evenly over its mesh axis is kept
whole (replicated) rather than failing, so small models run on any mesh.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.errors import ConfigError

MESH_AXES = ("data", "fsdp", "context", "tensor")

# logical name -> mesh axis (or axes, or None = replicated). The one table.
LOGICAL_RULES = (
    # Activations.
    ("batch", ("data", "fsdp")),  # examples: split over every data-parallel axis
    ("length", "context"),        # token positions: sequence (context) parallelism
    ("act_embed", None),          # model width of activations: whole on each device
    ("act_mlp", "tensor"),        # MLP hidden activations: Megatron-style split
    ("act_heads", "tensor"),      # attention heads of activations
    ("kv", None),                 # features within one head
    # Parameters.
    ("embed", "fsdp"),            # model width of weights: sharded for FSDP / ZeRO-3
    ("embed_out", None),          # second width axis of square (embed, embed) weights
    ("mlp", "tensor"),            # MLP / adaLN hidden of weights: tensor parallel
    ("qkv", "tensor"),            # fused q/k/v outputs (head-major): tensor parallel
    ("heads", "tensor"),
    ("vocab", None),              # class / token tables: small here, replicated
    ("freq", None),               # sinusoidal feature inputs
    ("patch_out", None),          # final patch projection
    ("norm", None),               # norm scales and biases
    ("conv_h", None), ("conv_w", None),
    ("conv_in", None),
    ("conv_out", "tensor"),       # conv output channels: tensor parallel
    ("patch_0", None), ("patch_1", None), ("patch_2", None),
    ("layers", None),             # stacked (nn.scan) layer axis
)


def make_mesh(mesh_cfg, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Mesh from ``config.mesh`` (data, fsdp, context, tensor sizes; one may be -1 = the
  rest; a missing one is 1).

  Raises:
    ConfigError (a ValueError): the sizes cannot tile the devices; the message says
      how many devices there are and what the sizes multiply to.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  n = len(devices)
  shown = " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
  here = f"{n} {devices[0].platform.upper() if devices else ''} device(s) in this run"
  fix = ("Set config.mesh.data/fsdp/context/tensor so that they multiply to "
         f"{n}, or one of them to -1 (= the rest), e.g. --config.mesh.data=-1.")
  if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
    raise ConfigError(f"config.mesh {shown}: each size must be >= 1, and at most one -1. "
                      f"{fix}")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if n % known:
      raise ConfigError(f"config.mesh {shown}: the fixed axes multiply to {known}, which "
                        f"does not divide the {here}. {fix}")
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ConfigError(f"config.mesh {shown} multiplies to {math.prod(sizes)} devices, but "
                      f"there are {here}. {fix}")
  try:
    grid = jax.experimental.mesh_utils.create_device_mesh(sizes, devices=devices)
  except Exception:  # pylint: disable=broad-except  # e.g. CPU devices without topology
    grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def _fit(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide evenly."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = tuple(a for a in names if mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in kept)
    if not kept or dim % size:
      out.append(None)
    else:
      out.append(kept[0] if len(kept) == 1 else kept)
  return P(*out)


def tree_shardings(abstract_boxed, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a tree whose leaves may be ``nn.Partitioned`` boxes.

  Returns a tree with the structure of the *unboxed* tree. Boxes around leaf-less
  values (optax's ``MaskedNode`` in the state of a masked or multi-transform optimizer)
  are dropped first: they hold no array to place.
  """
  abstract_boxed = jax.tree.map(
      lambda x: x.unbox() if isinstance(x, nn.meta.AxisMetadata) and not jax.tree.leaves(
          x.unbox()) else x,
      abstract_boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  logical = nn.get_partition_spec(abstract_boxed)
  physical = nn.logical_to_mesh(logical, rules)
  unboxed = nn.meta.unbox(abstract_boxed)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit(spec, np.shape(leaf), mesh)),
      physical, unboxed, is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) axis over ("data", "fsdp"), the rest whole."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch, mesh: Mesh):
  """Process-local numpy batch (leading axis = this process's examples) -> global
  ``jax.Array`` sharded over the data axes of ``mesh``."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x),
      local_batch)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_RULES):
  """Context in which logical activation constraints resolve against ``mesh``.

  Flax resolves ``nn.with_logical_constraint`` only while an abstract mesh is set
  (``jax.set_mesh``); under the legacy ``with mesh:`` alone every activation
  constraint was silently dropped (tests/test_video_dit.py checks the compiled
  program keeps them)."""
  with mesh, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def to_host(x):
  """A (possibly multi-host sharded) array as one numpy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
