"""Checkpoints: the only module that imports orbax.

One checkpoint holds every part of a run: the train state (all networks, optimizer
states, EMA, rng), the grain data-iterator state of every process, and the config as
JSON. Saves are asynchronous and atomic (orbax commits a step only when complete), so
a crash never leaves a half-written checkpoint behind as the newest one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization


class CheckpointMismatchError(RuntimeError):
  """The checkpoint in a workdir belongs to another model or config shape."""


class Checkpointer:
  """Wraps an orbax ``CheckpointManager`` rooted at ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def save(self, step: int, state: Any, data_iter: Any = None, config=None,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict())
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def restore_config(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out["config"]

  def check_compatible(self, abstract_state: Any, step: Optional[int] = None,
                       what: str = "state") -> None:
    """Refuses (with a message naming both shapes) a checkpoint whose arrays differ
    in structure or shape from ``abstract_state``. Reads metadata only."""
    step = self.latest_step() if step is None else step
    meta = self._manager.item_metadata(step)["state"]
    meta = getattr(meta, "tree", meta)
    stored = _shapes(meta)
    wanted = _shapes(serialization.to_state_dict(abstract_state))
    where = f"{self.directory}/{step}"
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
      raise CheckpointMismatchError(
          f"The checkpoint {where} was written for another model: the config's {what} "
          f"has {len(missing)} arrays the checkpoint lacks (e.g. {missing[:3]}) and the "
          f"checkpoint has {len(extra)} the config lacks (e.g. {extra[:3]}). Use a new "
          "--workdir for a new model, or the config this workdir was trained with "
          f"({os.path.dirname(self.directory)}/config.json). Nothing was changed.")
    bad = [(k, stored[k], wanted[k]) for k in wanted if stored[k] != wanted[k]]
    if bad:
      k, s, w = bad[0]
      raise CheckpointMismatchError(
          f"The checkpoint {where} does not fit the config: {len(bad)} arrays differ in "
          f"shape, e.g. {k}: checkpoint {s} vs config {w}. Use a new --workdir for a new "
          "model size, or the config this workdir was trained with "
          f"({os.path.dirname(self.directory)}/config.json). Nothing was changed.")

  def restore(self, abstract_state: Any, data_iter: Any = None,
              step: Optional[int] = None) -> Any:
    """Restores the state (into the shardings of ``abstract_state``) and, if given,
    sets ``data_iter`` to where it was; returns the state."""
    step = self.latest_step() if step is None else step
    self.check_compatible(abstract_state, step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    return out["state"]


def _shapes(tree, prefix: str = "") -> dict:
  """``{"a/b/0/c": shape}`` of a nested dict/list/tuple tree (orbax metadata or a
  state dict), with keys as strings so both spell the same path alike."""
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, (list, tuple)) and not hasattr(tree, "shape"):
    items = enumerate(tree)
  elif hasattr(tree, "shape"):
    return {prefix: tuple(tree.shape)}
  elif isinstance(tree, (int, float, np.number)):
    return {prefix: ()}
  else:  # None / empty optimizer states: nothing stored
    return {}
  out = {}
  for k, v in items:
    out.update(_shapes(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def write_config(workdir: str, config) -> None:
  """Writes ``<workdir>/config.json`` (process 0), readable by people and tools."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, ".config.json.tmp")
  with open(tmp, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, os.path.join(workdir, "config.json"))


def read_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
