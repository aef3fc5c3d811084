"""Files on local disks and in cloud storage (``gs://``, ``s3://``, ...), one way.

Every file jaxgen writes into a workdir (config, metrics, manifests, sample grids and
``.npz`` files, the lock) goes through these functions; orbax writes the checkpoints
themselves and takes the same paths. Local paths use the operating system directly
(atomic ``os.replace``, ``flock``); remote ones use ``etils.epath`` (which orbax uses
too): ``gs://`` needs ``gcsfs`` (or TensorFlow's gfile) installed. An object store
commits whole objects, so a remote write is atomic as well; appends are emulated by
rewriting the object (fine for a metrics file, not for big ones).

This module imports nothing from jaxgen, so every layer may use it.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import Iterator, Tuple

from etils import epath


def is_remote(path) -> bool:
  """Whether ``path`` is a URI of a remote store (``scheme://...``)."""
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """An absolute local path, or the URI unchanged (``os.path.abspath`` would turn
  ``gs://b/x`` into a local directory ``gs:/b/x``)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(*parts) -> str:
  return os.path.join(*(os.fspath(p) for p in parts))


def isfile(path) -> bool:
  return epath.Path(path).is_file() if is_remote(path) else os.path.isfile(path)


def isdir(path) -> bool:
  return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def makedirs(path) -> None:
  if is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def size(path) -> int:
  return epath.Path(path).stat().length if is_remote(path) else os.path.getsize(path)


def open_file(path, mode: str = "r"):
  """``open`` for local paths, ``epath.Path.open`` for remote ones."""
  return epath.Path(path).open(mode) if is_remote(path) else open(path, mode)


def read_text(path) -> str:
  with open_file(path, "r") as f:
    return f.read()


def write_bytes(path, data: bytes) -> None:
  """Writes ``path`` whole and atomically (a local temp file renamed over it; one
  object put for a remote store), creating its directory."""
  path = os.fspath(path)
  makedirs(os.path.dirname(path) or ".")
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  tmp = os.path.join(os.path.dirname(path) or ".", "." + os.path.basename(path) + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def save_with(path, save_fn) -> None:
  """Writes what ``save_fn(file_object)`` produces (``np.savez``, ``PIL.Image.save``)
  to ``path``, atomically (see `write_bytes`)."""
  buf = io.BytesIO()
  save_fn(buf)
  write_bytes(path, buf.getvalue())


def walk_files(directory) -> Iterator[Tuple[str, str]]:
  """``(path relative to directory, full path)`` of every file below ``directory``."""
  directory = os.fspath(directory)
  if is_remote(directory):
    for root, _, files in epath.Path(directory).walk():
      for name in files:
        full = os.path.join(os.fspath(root), name)
        yield os.path.relpath(full, directory), full
    return
  for root, _, files in os.walk(directory):
    for name in files:
      full = os.path.join(root, name)
      yield os.path.relpath(full, directory), full


def move(src, dst) -> None:
  """Moves a file or directory (a remote rename copies, then deletes)."""
  makedirs(os.path.dirname(os.fspath(dst)))
  if is_remote(src) or is_remote(dst):
    epath.Path(src).rename(dst)
  else:
    shutil.move(os.fspath(src), os.fspath(dst))
