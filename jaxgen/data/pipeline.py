"""grain pipelines over random-access (array_record) sources, split per process.

``source -> [process_index::process_count] -> shuffle(seed) -> repeat -> pp ->
batch(per-process batch)``. The iterator is a grain ``DatasetIterator`` whose
``get_state()/set_state()`` the checkpoint stores, so a resumed run reads exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Optional

import grain
import numpy as np

from jaxgen.data import datasets, preprocess
from jaxgen.data.idx import DataError


def per_process_batch(global_batch: int, process_count: int, data_parallel: int) -> int:
  """Checks that the global batch splits evenly; returns this process's share."""
  if global_batch % process_count:
    raise DataError(f"config.train.batch_size={global_batch} does not divide over "
                    f"{process_count} processes; use a multiple of {process_count}.")
  if global_batch % data_parallel:
    raise DataError(f"config.train.batch_size={global_batch} does not divide over the "
                    f"{data_parallel} data-parallel devices of the mesh; use a multiple "
                    f"of {data_parallel} or change config.mesh.")
  return global_batch // process_count


def train_dataset(spec: datasets.DatasetSpec, *, split: str, pp: str, batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  num_epochs: Optional[int] = None) -> grain.MapDataset:
  """Shuffled, repeated, preprocessed and batched dataset of this process's examples.

  ``batch_size`` is the per-process batch.
  """
  ds = grain.MapDataset.source(spec.source(split))
  ds = ds[process_index::process_count]
  if len(ds) < batch_size:
    raise DataError(f"split {split!r} has {len(ds)} examples on this process, fewer "
                    f"than the per-process batch {batch_size}.")
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  ds = ds.random_map(preprocess.parse(pp), seed=seed + 1)
  return ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)


def eval_dataset(spec: datasets.DatasetSpec, *, split: str, pp: str, batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Ordered, single-pass dataset (the last batch may be short)."""
  ds = grain.MapDataset.source(spec.source(split))[process_index::process_count]
  ds = ds.random_map(preprocess.parse(pp), seed=0)
  return ds.batch(batch_size, drop_remainder=False, batch_fn=_stack)


def _stack(examples):
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
