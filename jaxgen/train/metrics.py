"""Metric writers: JSONL (one object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

import jax
import numpy as np

from jaxgen import fileio


class MetricWriter:
  """Writes scalars to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard/``.

  Only process 0 writes; the other processes' writers do nothing. ``start_step``: the
  step a run starts or resumes from. Rows after it were written by an earlier attempt
  that did not reach its next checkpoint; they are moved to
  ``metrics.rolled_back.jsonl`` (so each step appears once in ``metrics.jsonl``) and
  TensorBoard is told to drop its events after that step. In a remote workdir
  (``gs://...``) the JSONL file is rewritten whole at each log (object stores cannot
  append), and TensorBoard files are written if tensorboardX can reach the store.
  """

  def __init__(self, workdir: str, start_step: Optional[int] = None):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    fileio.makedirs(workdir)
    self._path = os.path.join(workdir, "metrics.jsonl")
    if start_step is not None:
      _roll_back(self._path, start_step)
    self._remote_rows: Optional[List[str]] = None
    if fileio.is_remote(workdir):
      self._remote_rows = _read_lines(self._path)
      self._jsonl = None
    else:
      self._jsonl = open(self._path, "a", buffering=1)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if fileio.is_remote(workdir) and not _tensorboard_reaches(workdir):
        raise ImportError(f"tensorboardX cannot write to {workdir} here")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30,
                               purge_step=None if start_step is None else start_step + 1)
    except ImportError as e:  # TensorBoard files are optional; JSONL is always written
      if fileio.is_remote(workdir):
        logging.warning("No TensorBoard files in %s (%s); metrics.jsonl is written.",
                        workdir, e)
      self._tb = None
    except Exception as e:  # pylint: disable=broad-except  # e.g. a store it cannot reach
      logging.warning("No TensorBoard files in %s (%s); metrics.jsonl is written.",
                      workdir, e)
      self._tb = None

  def write_scalars(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.active:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    line = json.dumps({"step": int(step), **clean}) + "\n"
    if self._remote_rows is not None:
      self._remote_rows.append(line)
      fileio.write_text(self._path, "".join(self._remote_rows))
    else:
      self._jsonl.write(line)
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k, v, int(step))

  def write_image(self, step: int, name: str, image_hwc: np.ndarray) -> None:
    if self.active and self._tb is not None:
      self._tb.add_image(name, image_hwc, int(step), dataformats="HWC")

  def close(self) -> None:
    if not self.active:
      return
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _tensorboard_reaches(uri: str) -> bool:
  """Whether tensorboardX has a writer for ``uri``'s store with its client installed
  (``gs://``: google-cloud-storage; ``s3://``: boto3)."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  flag = {"gs": "GCS_ENABLED", "s3": "S3_ENABLED"}.get(uri.split("://")[0])
  return bool(flag and getattr(record_writer, flag, False))


def _read_lines(path: str) -> List[str]:
  if not fileio.isfile(path):
    return []
  return fileio.read_text(path).splitlines(keepends=True)


def _roll_back(path: str, start_step: int) -> None:
  """Moves the rows of ``path`` with a step after ``start_step`` to
  ``metrics.rolled_back.jsonl`` beside it (nothing is dropped)."""
  keep, later = [], []
  for line in _read_lines(path):
    try:
      step = int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
      later.append(line if line.endswith("\n") else line + "\n")
      continue
    (later if step > start_step else keep).append(line)
  if not later:
    return
  rolled = os.path.join(os.path.dirname(path), "metrics.rolled_back.jsonl")
  fileio.write_text(rolled, "".join(_read_lines(rolled) + later))
  fileio.write_text(path, "".join(keep))
