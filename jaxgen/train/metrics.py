"""Metric writers: JSONL (one object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard/``.

  Only process 0 writes; the other processes' writers do nothing. ``start_step``: the
  step a run starts or resumes from. Rows after it were written by an earlier attempt
  that did not reach its next checkpoint; they are moved to
  ``metrics.rolled_back.jsonl`` (so each step appears once in ``metrics.jsonl``) and
  TensorBoard is told to drop its events after that step.
  """

  def __init__(self, workdir: str, start_step: Optional[int] = None):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if start_step is not None:
      _roll_back(path, start_step)
    self._jsonl = open(path, "a", buffering=1)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30,
                               purge_step=None if start_step is None else start_step + 1)
    except ImportError:  # TensorBoard files are optional; JSONL is always written
      self._tb = None

  def write_scalars(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.active:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k, v, int(step))

  def write_image(self, step: int, name: str, image_hwc: np.ndarray) -> None:
    if self.active and self._tb is not None:
      self._tb.add_image(name, image_hwc, int(step), dataformats="HWC")

  def close(self) -> None:
    if not self.active:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _roll_back(path: str, start_step: int) -> None:
  """Moves the rows of ``path`` with a step after ``start_step`` to
  ``metrics.rolled_back.jsonl`` beside it (atomically; nothing is dropped)."""
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep, later = [], []
  for line in lines:
    try:
      step = int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
      later.append(line if line.endswith("\n") else line + "\n")
      continue
    (later if step > start_step else keep).append(line)
  if not later:
    return
  with open(os.path.join(os.path.dirname(path), "metrics.rolled_back.jsonl"), "a") as f:
    f.writelines(later)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)
