"""Metric writers: JSONL (one object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import os
from typing import Dict

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard/``.

  Only process 0 writes; the other processes' writers do nothing.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
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
