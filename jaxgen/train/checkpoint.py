"""Checkpoints: the only module that imports orbax.

One checkpoint holds every part of a run: the train state (all networks, optimizer
states, EMA, rng), the grain data-iterator state of every process, and the config as
JSON. Saves are asynchronous and atomic (orbax commits a step only when complete), so
a crash never leaves a half-written checkpoint behind as the newest one.

Every checkpoint is verified: once its save has finished, process 0 writes a manifest
(``jaxgen_manifest.json``: size and SHA-256 of each file) into its directory; a restore
checks the files against it and the restored arrays for non-finite values. A damaged
checkpoint (a flipped byte, a truncated, emptied or deleted file) is reported in one
line and the newest intact one is used instead; a training run moves the damaged one
to ``<workdir>/damaged_checkpoints/`` (nothing is deleted). Older checkpoints are
deleted (``keep``) only after a newer one has been verified. A failed save (disk full,
permissions) raises `CheckpointSaveError` at the first step after it failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from typing import Any, Callable, List, Optional, Tuple

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from jaxgen import fileio
from jaxgen.errors import CheckpointError, CheckpointMismatchError, CheckpointSaveError  # noqa: F401  (re-exported)

MANIFEST = "jaxgen_manifest.json"
DAMAGED_DIR = "damaged_checkpoints"


class Checkpointer:
  """Wraps an orbax ``CheckpointManager`` rooted at ``<workdir>/checkpoints``.

  ``keep``: the number of newest verified checkpoints kept (0 or None: all).
  ``cleanup_tmp``: remove unfinished saves of a crashed run; only for the one run that
  holds the workdir's lock (a reader must not delete a live run's save in progress).
  """

  def __init__(self, workdir: str, *, keep: Optional[int] = 3, async_save: bool = True,
               cleanup_tmp: bool = False):
    self.workdir = fileio.absolute(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.keep = keep
    self._unverified: List[int] = []   # saved by this object, manifest not written yet
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=cleanup_tmp),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # -- saving -----------------------------------------------------------------------

  def save(self, step: int, state: Any, data_iter: Any = None, config=None,
           force: bool = False) -> bool:
    """Starts an asynchronous save of ``step`` after verifying the previous one."""
    self.finalize()
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict())
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if saved:
      self._unverified.append(step)
    return saved

  def poll(self) -> None:
    """Called every step: surfaces a failed background save at once, and (single
    process) verifies a finished save without waiting for the next one."""
    if not self._unverified:
      return
    done, failed = self._save_thread_state()
    # One process: verify a finished save now. Several: a failure is raised at once;
    # verification waits for the next save or the end, where every process does it at
    # the same step (deleting old checkpoints has a barrier).
    if failed or (done and jax.process_count() == 1):
      self.finalize()

  def _save_thread_state(self) -> Tuple[bool, bool]:
    """``(finished, failed)`` of the background save, without waiting for it."""
    thread = getattr(self._manager, "_finalize_thread", None)  # orbax 0.11-0.12
    if thread is not None and hasattr(thread, "map"):
      done = thread.map(lambda t: t is None or not t.is_alive())
      failed = thread.map(lambda t: t is not None and not t.is_alive()
                          and getattr(t, "exception", None) is not None)
      return bool(done), bool(failed)
    return not self._manager.is_saving_in_progress(), False

  def finalize(self) -> None:
    """Waits for the saves in flight, writes their manifests, then deletes the
    checkpoints beyond ``keep`` (never before a newer one is verified)."""
    if not self._unverified:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._unverified[-1], e) from e
    for step in self._unverified:
      if jax.process_index() == 0:
        try:
          write_manifest(self.step_dir(step), step)
        except OSError as e:
          raise self._save_error(step, e) from e
    self._unverified = []
    if jax.process_count() > 1:  # every process sees the manifests before deciding
      _barrier("jaxgen_manifests_written")
    self._garbage_collect()

  def _garbage_collect(self) -> None:
    if not self.keep or self.keep <= 0:
      return
    self._manager.reload()
    steps = sorted(self.all_steps())
    verified = [s for s in steps if fileio.isfile(os.path.join(self.step_dir(s), MANIFEST))]
    if len(verified) < self.keep:
      return
    oldest_kept = verified[-self.keep]
    for s in steps:
      if s < oldest_kept:
        self._manager.delete(s)

  def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
    self._unverified = []
    self._manager.reload()
    intact = [s for s in sorted(self.all_steps(), reverse=True)
              if fileio.isfile(os.path.join(self.step_dir(s), MANIFEST))]
    newest = (f"the newest verified checkpoint is step {intact[0]}" if intact
              else "no checkpoint was verified yet")
    return CheckpointSaveError(
        f"Saving checkpoint step {step} in {self.directory} failed: {_reason(error)}. "
        f"Training stopped at once; nothing older was deleted and {newest}. Free disk "
        "space or fix the permissions, then run the same command to resume.")

  def wait(self) -> None:
    self.finalize()

  def close(self) -> None:
    try:
      self.finalize()
    finally:
      self._manager.close()

  # -- reading ----------------------------------------------------------------------

  def check_compatible(self, abstract_state: Any, step: Optional[int] = None,
                       what: str = "state", skip: Tuple[str, ...] = ()) -> None:
    """Refuses (with a message naming both shapes) a checkpoint whose arrays differ
    in structure or shape from ``abstract_state`` (except the top-level parts in
    ``skip``). Reads metadata only."""
    step = self.latest_step() if step is None else step
    meta = self._manager.item_metadata(step)["state"]
    meta = getattr(meta, "tree", meta)
    drop = lambda d: {k: v for k, v in d.items() if k.split("/")[0] not in skip}
    stored = drop(_shapes(meta))
    wanted = drop(_shapes(serialization.to_state_dict(abstract_state)))
    where = f"{self.directory}/{step}"
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    bad = [(k, stored[k], wanted[k]) for k in wanted if k in stored and stored[k] != wanted[k]]
    differ = missing + extra + [k for k, _, _ in bad]
    only_optimizer = differ and all(k.startswith("opt_state") for k in differ)
    fix = ("Only the optimizer state differs (e.g. grad_clip or the optimizer changed): "
           "pass --reset-optimizer to resume the parameters and EMA with a fresh "
           "optimizer state, or use the config this workdir was trained with"
           if only_optimizer else
           "Use a new --workdir for a new model, or the config this workdir was trained with")
    if missing or extra:
      raise CheckpointMismatchError(
          f"The checkpoint {where} was written for another model: the config's {what} "
          f"has {len(missing)} arrays the checkpoint lacks (e.g. {missing[:3]}) and the "
          f"checkpoint has {len(extra)} the config lacks (e.g. {extra[:3]}). {fix} "
          f"({self.workdir}/config.json). Nothing was changed.")
    if bad:
      k, s, w = bad[0]
      raise CheckpointMismatchError(
          f"The checkpoint {where} does not fit the config: {len(bad)} arrays differ in "
          f"shape, e.g. {k}: checkpoint {s} vs config {w}. {fix} "
          f"({self.workdir}/config.json). Nothing was changed.")

  def restore(self, abstract_state: Any, data_iter: Any = None,
              step: Optional[int] = None, fresh_optimizer: Optional[Callable[[], Any]] = None
              ) -> Any:
    """Restores the state (into the shardings of ``abstract_state``) and, if given,
    sets ``data_iter`` to where it was; returns the state. No verification: see
    `restore_newest_intact`.

    ``fresh_optimizer``: a function returning a newly initialised state; everything
    but its ``opt_state`` is then restored from the checkpoint (a resume after a
    change of optimizer hyper-parameters that changes the state's layout)."""
    step = self.latest_step() if step is None else step
    skip = ("opt_state",) if fresh_optimizer is not None else ()
    self.check_compatible(abstract_state, step, skip=skip)
    items = {}
    if fresh_optimizer is None:
      items["state"] = ocp.args.StandardRestore(abstract_state)
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self._manager.restore(step, args=ocp.args.Composite(**items)) if items else {}
    if fresh_optimizer is None:
      return out["state"]
    target = {k: v for k, v in serialization.to_state_dict(abstract_state).items()
              if k not in skip}
    args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(
        sharding=a.sharding, global_shape=a.shape, dtype=a.dtype), target)
    with ocp.PyTreeCheckpointer() as reader:
      parts = reader.restore(os.path.join(self.step_dir(step), "state"),
                             args=ocp.args.PyTreeRestore(item=target, restore_args=args,
                                                         partial_restore=True))
    fresh = fresh_optimizer()
    return serialization.from_state_dict(fresh, {**serialization.to_state_dict(fresh), **parts})

  def restore_parts(self, target: dict, step: Optional[int] = None) -> dict:
    """Only the parts of the state named by ``target`` (a nested dict of abstract arrays:
    a subset of the state's state dict, e.g. ``{"params": {"autoencoder": ...},
    "model_state": ...}``), as host NumPy arrays: a frozen network's weights, read
    without its optimizer state or any other network. No verification (see
    `restore_newest_intact`); a missing array or another shape raises
    `CheckpointMismatchError` naming it."""
    step = self.latest_step() if step is None else step
    meta = self._manager.item_metadata(step)["state"]
    stored = _shapes(getattr(meta, "tree", meta))
    wanted = _shapes(target)
    where = f"{self.directory}/{step}"
    missing = sorted(set(wanted) - set(stored))
    if missing:
      raise CheckpointMismatchError(
          f"The checkpoint {where} lacks {len(missing)} arrays the model needs (e.g. "
          f"{missing[:3]}): it was written for another model.")
    bad = [(k, stored[k], wanted[k]) for k in wanted if stored[k] != wanted[k]]
    if bad:
      k, s, w = bad[0]
      raise CheckpointMismatchError(
          f"The checkpoint {where} does not fit the model: {len(bad)} arrays differ in "
          f"shape, e.g. {k}: checkpoint {s} vs model {w}.")
    args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype),
                        target)
    with ocp.PyTreeCheckpointer() as reader:
      return reader.restore(os.path.join(self.step_dir(step), "state"),
                            args=ocp.args.PyTreeRestore(item=target, restore_args=args,
                                                        partial_restore=True))

  def verify(self, step: int) -> Optional[str]:
    """What is wrong with the files of ``step`` (None: they match its manifest, or it
    has none, as checkpoints of older versions)."""
    return check_manifest(self.step_dir(step))

  def restore_newest_intact(self, abstract_state: Any, data_iter: Any = None, *,
                            steps=None, quarantine: bool = False,
                            fresh_optimizer: Optional[Callable[[], Any]] = None,
                            all_finite: Optional[Callable[[Any], Any]] = None,
                            warn: Optional[Callable[[str], None]] = None,
                            parts: Optional[dict] = None):
    """``(state, step)`` of the newest checkpoint (of ``steps``, default all) whose
    files match its manifest, that can be read and (``all_finite``) holds only finite
    values; ``(None, None)`` when there are no checkpoints. With ``parts`` (a target of
    `restore_parts`) only those parts are read, as NumPy arrays, in place of the state. Each damaged newer one is
    reported with ``warn`` in one line and, with ``quarantine`` (the training run),
    moved to ``<workdir>/damaged_checkpoints/``. A checkpoint of another model raises
    `CheckpointMismatchError`; no intact one raises `CheckpointError`."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    steps = sorted(self.all_steps() if steps is None else steps, reverse=True)
    damaged = []
    for step in steps:
      problem = self.verify(step)
      if problem is None:
        try:
          state = (self.restore_parts(parts, step) if parts is not None else
                   self.restore(abstract_state, data_iter, step,
                                fresh_optimizer=fresh_optimizer))
        except CheckpointMismatchError:  # another model, not damage: refuse
          raise
        except Exception as e:  # pylint: disable=broad-except
          problem = f"it cannot be read ({_reason(e)})"
        else:
          if all_finite is not None and not bool(all_finite(state)):
            problem = "it holds non-finite values (NaN or inf)"
      if problem is None:
        for bad, why in damaged:
          if quarantine:
            dest = self._quarantine(bad)
            warn(f"jaxgen: warning: checkpoint step {bad} is damaged: {why}. Moved it to "
                 f"{dest}; resuming from step {step}, the newest intact checkpoint.")
          else:
            warn(f"jaxgen: warning: checkpoint step {bad} in {self.directory} is damaged: "
                 f"{why}. Using step {step}, the newest intact checkpoint.")
        return state, step
      damaged.append((step, problem))
    if damaged:
      listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
      raise CheckpointError(
          f"No intact checkpoint in {self.directory} ({listed}). Nothing was changed: "
          "restore them from a copy, or move them away (or use a new --workdir) to start "
          "from scratch.")
    return None, None

  def _quarantine(self, step: int) -> str:
    """Moves a damaged step out of the checkpoints (process 0), so that the run can
    save that step number again; nothing is deleted."""
    dest = os.path.join(self.workdir, DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      fileio.move(self.step_dir(step), dest)
    if jax.process_count() > 1:
      _barrier(f"jaxgen_quarantine_{step}")
    self._manager.reload()
    return dest


def _barrier(name: str) -> None:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices(name)


def _reason(error: BaseException) -> str:
  """A one-line cause: the innermost OSError of the chain, or the OS error inside a
  tensorstore message (``... local file "F" ... [os_error_code='28']``), else the
  error's first line."""
  seen, e = set(), error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    e = e.__cause__ or e.__context__
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  code = re.search(r"os_error_code='?(\d+)", line)
  if code:
    path = re.search(r'local file "([^"]+)"', line)
    return os.strerror(int(code.group(1))) + (f": {path.group(1)}" if path else "")
  return line if len(line) <= 300 else line[:300] + "..."


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with fileio.open_file(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def write_manifest(step_dir: str, step: int) -> None:
  """Writes ``step_dir/jaxgen_manifest.json``: size and SHA-256 of every file."""
  files = {rel: [fileio.size(p), _file_digest(p)]
           for rel, p in sorted(fileio.walk_files(step_dir)) if rel != MANIFEST}
  fileio.write_text(os.path.join(step_dir, MANIFEST),
                    json.dumps({"step": step, "files": files}, indent=1, sort_keys=True))


def fingerprint(step_dir: str) -> Optional[str]:
  """A short identity of a checkpoint's contents: the SHA-256 of its manifest (which
  lists the size and SHA-256 of every file), or None for a checkpoint without one."""
  path = os.path.join(step_dir, MANIFEST)
  if not fileio.isfile(path):
    return None
  files = json.loads(fileio.read_text(path))["files"]
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def check_manifest(step_dir: str) -> Optional[str]:
  """None when every file of ``step_dir`` matches its manifest (or there is no
  manifest), else what differs, in a few words."""
  path = os.path.join(step_dir, MANIFEST)
  if not fileio.isfile(path):
    return None
  try:
    files = json.loads(fileio.read_text(path))["files"]
  except (OSError, ValueError, KeyError) as e:
    return f"its manifest {MANIFEST} is unreadable ({e})"
  for rel, (size, digest) in files.items():
    p = os.path.join(step_dir, rel)
    if not fileio.isfile(p):
      return f"{rel} is missing"
    actual = fileio.size(p)
    if actual != size:
      return f"{rel} has {actual} bytes, {size} were written"
    if _file_digest(p) != digest:
      return f"{rel} does not match its SHA-256 checksum"
  return None
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
  fileio.write_text(os.path.join(workdir, "config.json"),
                    json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))


def read_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, "config.json")
  if not fileio.isfile(path):
    return None
  return json.loads(fileio.read_text(path))
