"""Frozen networks: trained weights a paradigm uses but never trains, passed to every
jitted program as arguments.

A tokenizer (MaskGIT, MAGE, raster AR, VAR, latent flow and diffusion) or a text
encoder run inside the step (``config.text.encode_in_step``) is a *frozen network*: it
keeps its weights in a `FrozenField`, and a paradigm lists the ones it uses in
``Paradigm.frozen_networks()``. The loop and the sampler then build their programs
with `Frozen`::

  frozen = Frozen(paradigm.frozen_networks(), mesh)   # placed with the mesh's shardings
  step = frozen.jit(train_step, in_shardings=(state_sh, batch_sh), donate_argnums=(0,))
  step(state, batch)                                   # = jitted(frozen.values, state, batch)

Inside the program each network's field reads the traced argument (`bind`), so the
paradigm's code reads ``self.tokenizer.variables`` alike eagerly and under jit, and
the weights are never baked into the compiled program as constants (hundreds of MB at
ImageNet scale, replicated on every device and compiled again per run). The shardings
come from the network's logical axis names and the one rules table
(`jaxgen.sharding.mesh.LOGICAL_RULES`), as for trained parameters.

A run also records which frozen networks it was trained with (`write_record`, in
``<workdir>/frozen_networks.json``): its tokenizer's workdir, checkpoint step and a
fingerprint of that checkpoint. Resuming or sampling with another tokenizer is refused
(`check_record`) with both named, instead of decoding with weights the model never saw.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from jaxgen import fileio
from jaxgen.errors import ConfigError
from jaxgen.sharding import mesh as mesh_lib

RECORD_FILE = "frozen_networks.json"

_BOUND: contextvars.ContextVar = contextvars.ContextVar("jaxgen_frozen_bound", default=None)


class FrozenField:
  """A class attribute holding a frozen network's weights (a pytree). Read inside
  `bind` (i.e. inside a program built by `Frozen.jit`), it gives the traced argument;
  elsewhere the stored arrays. ``FrozenField.stored(obj, name)`` always gives the
  stored ones (for eager conveniences called while a program is being traced)."""

  def __set_name__(self, owner, name):
    self.name = name
    self.slot = "_frozen_" + name

  def __get__(self, obj, owner=None):
    if obj is None:
      return self
    bound = _BOUND.get()
    if bound is not None and id(obj) in bound:
      return bound[id(obj)]
    return getattr(obj, self.slot)

  def __set__(self, obj, value):
    setattr(obj, self.slot, value)

  @staticmethod
  def stored(obj, name: str):
    return getattr(obj, "_frozen_" + name)


class FrozenNetwork:
  """What `Frozen` needs of a network. Subclasses declare their weights as a
  `FrozenField` named by ``frozen_field`` and implement `abstract_weights`."""

  frozen_field = "params"

  def abstract_weights(self) -> Any:
    """The weights' abstract tree, with logical-axis boxes where the network names its
    axes (``nn.Partitioned``): what the shardings are derived from."""
    raise NotImplementedError

  def identity(self) -> Optional[Dict[str, Any]]:
    """What identifies these weights in a run's record (None: not recorded)."""
    return None

  @property
  def stored_weights(self):
    return FrozenField.stored(self, self.frozen_field)


@contextlib.contextmanager
def bind(networks: Dict[str, FrozenNetwork], values: Dict[str, Any]) -> Iterator[None]:
  """Within it, each network's `FrozenField` reads ``values[name]``."""
  outer = _BOUND.get() or {}
  token = _BOUND.set({**outer, **{id(net): values[name] for name, net in networks.items()}})
  try:
    yield
  finally:
    _BOUND.reset(token)


def _place(tree, shardings):
  """Host (or single-device) arrays, maybe in logical-axis boxes -> global arrays in
  ``shardings`` (every process holds the whole value: each one puts its own shards)."""
  tree = nn.meta.unbox(tree)
  def put(x, sharding):
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
  return jax.tree.map(put, tree, shardings)


class Frozen:
  """The frozen networks of an experiment, placed on its mesh; builds programs that
  take their weights as arguments (see the module docstring)."""

  def __init__(self, networks: Dict[str, Optional[FrozenNetwork]], mesh=None):
    self.networks = {k: v for k, v in networks.items() if v is not None}
    self.mesh = mesh
    if mesh is None:
      self.shardings = None
      self.values = {k: net.stored_weights for k, net in self.networks.items()}
    else:
      self.shardings = {k: mesh_lib.tree_shardings(net.abstract_weights(), mesh)
                        for k, net in self.networks.items()}
      # The network keeps its own copy for eager calls (`jaxgen tokenize`, prompts):
      # a network may serve several experiments, on other meshes.
      self.values = {k: _place(net.stored_weights, self.shardings[k])
                     for k, net in self.networks.items()}

  def jit(self, fn: Callable, *, in_shardings: Optional[Sequence[Any]] = None,
          out_shardings: Any = None, donate_argnums: Sequence[int] = ()) -> "FrozenJitted":
    """``jax.jit(fn)`` whose program takes the frozen weights as a leading argument
    (sharded as placed); ``in_shardings`` / ``donate_argnums`` refer to ``fn``'s own
    arguments."""
    networks = self.networks

    def with_weights(values, *args):
      with bind(networks, values):
        return fn(*args)

    kw = {}
    if in_shardings is not None:
      if self.shardings is None:
        raise ValueError("Frozen.jit with in_shardings needs a mesh: Frozen(networks, mesh).")
      kw["in_shardings"] = (self.shardings,) + tuple(in_shardings)
    if out_shardings is not None:
      kw["out_shardings"] = out_shardings
    jitted = jax.jit(with_weights, donate_argnums=tuple(i + 1 for i in donate_argnums), **kw)
    return FrozenJitted(jitted, self)


class FrozenJitted:
  """A program from `Frozen.jit`: called (or lowered) with ``fn``'s arguments only."""

  def __init__(self, jitted, frozen: Frozen):
    self.jitted = jitted
    self.frozen = frozen

  def __call__(self, *args):
    return self.jitted(self.frozen.values, *args)

  def lower(self, *args) -> "_WithWeights":
    """The lowered program; its ``compile()`` is called with ``fn``'s arguments too."""
    return _WithWeights(self.jitted.lower(self.frozen.values, *args), self.frozen)


class _WithWeights:
  """A lowered or compiled program that supplies the frozen weights when called;
  everything else (``as_text``, ``cost_analysis``, ...) is the wrapped object's."""

  def __init__(self, inner, frozen: Frozen):
    self._inner = inner
    self._frozen = frozen

  def compile(self) -> "_WithWeights":
    return _WithWeights(self._inner.compile(), self._frozen)

  def __call__(self, *args):
    return self._inner(self._frozen.values, *args)

  def __getattr__(self, name):
    return getattr(self._inner, name)


# -------------------------------------------------------- which networks a run needs


def identities(networks: Dict[str, Optional[FrozenNetwork]]) -> Dict[str, Dict[str, Any]]:
  out = {}
  for name, net in networks.items():
    ident = net.identity() if net is not None else None
    if ident is not None:
      out[name] = ident
  return out


def write_record(workdir: str, networks: Dict[str, Optional[FrozenNetwork]]) -> None:
  """Writes ``<workdir>/frozen_networks.json`` (process 0) when there is something to
  record; `check_record` first when the file exists (a resumed run)."""
  record = identities(networks)
  if not record or jax.process_index() != 0:
    return
  fileio.write_text(os.path.join(workdir, RECORD_FILE), json.dumps(record, indent=1))


def read_record(workdir: str) -> Optional[Dict[str, Dict[str, Any]]]:
  path = os.path.join(workdir, RECORD_FILE)
  if not fileio.isfile(path):
    return None
  return json.loads(fileio.read_text(path))


def check_record(workdir: str, networks: Dict[str, Optional[FrozenNetwork]]) -> None:
  """Raises `ConfigError` when a network differs from the one ``workdir``'s run was
  trained with (its record), naming both; a run without a record passes."""
  record = read_record(workdir) or {}
  now = identities(networks)
  for name, was in record.items():
    have = now.get(name)
    if have is None:
      continue  # e.g. a tokenizer only needed to decode, not loaded by this command
    differ = [k for k in ("kind", "latent_shape", "latent_scale", "fingerprint")
              if was.get(k) is not None and have.get(k) is not None and was[k] != have[k]]
    if differ:
      shown = lambda d: (f"{d.get('workdir')} step {d.get('step')} ("
                         + ", ".join(f"{k}={d.get(k)}" for k in differ) + ")")
      raise ConfigError(
          f"{workdir} was trained with the {name} {shown(was)}, but this command loads "
          f"{shown(have)}. A model means nothing with another {name}'s weights: point "
          f"--config.tokenizer.workdir at the one it was trained with (and "
          f"--config.tokenizer.step={was.get('step')} if that run trained on), or train "
          "a new model on this one.")


def embedded_constant_bytes(lowered) -> int:
  """Bytes of the dense array constants embedded in a lowered program (its StableHLO
  text): what `Frozen.jit` keeps out of programs. Splats and scalars are not counted."""
  text = lowered.as_text()
  return sum(len(m) // 2 for m in re.findall(r'dense<"0x([0-9A-Fa-f]+)">', text))
