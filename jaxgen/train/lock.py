"""A workdir lock: one training run per workdir.

``<workdir>/train.lock`` holds the host, pid and start time of the run that trains
there, and that process holds an exclusive ``flock`` on it while it runs. A second
run on the same host finds the flock taken and stops with `WorkdirLockedError`. A
run that ends empties the file; one that died (``kill -9``, a crash, a lost machine)
leaves its details in the file but not the flock: the next run on that host takes the
lock over and says so. A file left by another host cannot be checked from here (flock
does not span machines on every file system): the message says how to remove it if
that run is gone. In a remote
workdir (``gs://...``) there is no flock: the file alone is the lock (best effort).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Optional

import jax

from jaxgen import fileio
from jaxgen.errors import WorkdirLockedError

LOCK_FILE = "train.lock"


class WorkdirLock:
  """Context manager holding ``<workdir>/train.lock`` (process 0 only: the other
  processes of a multi-host run share the lock of their process 0)."""

  def __init__(self, workdir: str, warn: Optional[Callable[[str], None]] = None):
    self.path = os.path.join(fileio.absolute(workdir), LOCK_FILE)
    self._warn = warn or (lambda msg: print(msg, file=sys.stderr))
    self._fd = None
    self._remote = False

  def acquire(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    if fileio.is_remote(self.path):
      return self._acquire_remote()
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _describe(_read(fd))
      os.close(fd)
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)} is in use by another training run ({holder}). "
          "Wait for it to finish or stop it, or train in another --workdir.") from None
    previous = _read(fd)
    if previous and previous.get("host") not in (None, socket.gethostname()):
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)} is locked by a training run on another machine "
          f"({_describe(previous)}). If that run is no longer running, delete "
          f"{self.path} and run again; otherwise train in another --workdir.")
    if previous:
      self._warn_stale(previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_this_run()).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def _warn_stale(self, previous: dict) -> None:
    self._warn(f"jaxgen: warning: taking over the lock of a run that ended without "
               f"releasing it ({_describe(previous)}; not running any more).")

  def _acquire_remote(self) -> "WorkdirLock":
    """A remote store has no flock: the lock file alone, checked by pid on this host
    (best effort: two runs starting within the same second can both pass)."""
    previous = {}
    if fileio.isfile(self.path):
      text = fileio.read_text(self.path)
      previous = json.loads(text) if text.strip() else {}
    if previous:
      here = previous.get("host") == socket.gethostname()
      if not here or _running(previous.get("pid")):
        where = "" if here else " on another machine"
        raise WorkdirLockedError(
            f"{os.path.dirname(self.path)} is in use by another training run{where} "
            f"({_describe(previous)}). Wait for it to finish or stop it, or train in "
            f"another --workdir; if that run is gone, delete {self.path}.")
      self._warn_stale(previous)
    fileio.write_text(self.path, json.dumps(_this_run()))
    self._remote = True
    return self

  def release(self) -> None:
    if self._remote:
      fileio.write_text(self.path, "")  # released cleanly
      self._remote = False
      return
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly (kept: removing
    except OSError:              # it would let two runs lock two different files)
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _this_run() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv}


def _running(pid) -> bool:
  """Whether process ``pid`` runs on this host."""
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, TypeError, ValueError):
    return False
  except PermissionError:  # it exists, owned by someone else
    return True
  return True


def _read(fd) -> dict:
  try:
    raw = os.pread(fd, 1 << 16, 0)
    return json.loads(raw) if raw.strip() else {}
  except (OSError, ValueError):
    return {"unreadable": True}


def _describe(info: dict) -> str:
  if not info or info.get("unreadable"):
    return "no details in the lock file"
  return (f"pid {info.get('pid')} on host {info.get('host')}, started "
          f"{info.get('started')}")
