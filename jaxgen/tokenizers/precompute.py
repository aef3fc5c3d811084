"""``jaxgen tokenize``: encode a dataset once with a frozen tokenizer, and read it back.

Writes, in ``out_dir``::

  tokens.json            kind, shapes, vocabulary, latent scale, source tokenizer
  {split}_codes.npy      int32 (N, h, w) codes ("vq"), (N, sum s^2) scale-major
                         flattened codes ("msvq", VAR's order), or float32 (N, h, w, c)
                         scaled latents ("kl")
  {split}_labels.npy     int32 (N,)

The files are plain ``.npy`` written through ``np.lib.format.open_memmap`` (no need to
hold a split in memory) and read memory-mapped by the registered ``tokens`` dataset,
which grain shards, shuffles and batches like any other source. Codes are stored
under the example key ``"codes"``, latents under ``"image"`` (so latent flow trains on
them unchanged).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgen import registry
from jaxgen.data import datasets, pipeline
from jaxgen.data.idx import DataError

META = "tokens.json"


def tokenize_dataset(tok, spec: datasets.DatasetSpec, *, pp: str, out_dir: str,
                     splits: Sequence[str], batch_size: int = 250, progress: bool = True
                     ) -> Dict[str, int]:
  """Encodes every example of ``splits``; returns the number written per split."""
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  code_shape = None
  for split in splits:
    n = spec.splits[split]
    ds = pipeline.eval_dataset(spec, split=split, pp=pp, batch_size=batch_size)
    codes_mm = labels_mm = None
    start = 0
    tmp = {k: os.path.join(out_dir, f"{split}_{k}.tmp.npy") for k in ("codes", "labels")}
    for batch in tqdm(ds, desc=f"tokenize {split}", unit="batch", disable=not progress,
                      total=-(-n // batch_size)):
      x, y = batch["image"], batch["label"]
      m = len(x)
      if m < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)])
      c = flatten_codes(tok.encode(x), tok.kind)[:m]
      if codes_mm is None:
        code_shape = c.shape[1:]
        codes_mm = np.lib.format.open_memmap(tmp["codes"], "w+", c.dtype, (n,) + code_shape)
        labels_mm = np.lib.format.open_memmap(tmp["labels"], "w+", np.int32, (n,))
      codes_mm[start:start + m] = c
      labels_mm[start:start + m] = y
      start += m
    codes_mm.flush()
    labels_mm.flush()
    del codes_mm, labels_mm
    for k, path in tmp.items():
      os.replace(path, os.path.join(out_dir, f"{split}_{k}.npy"))
    written[split] = start
  meta = dict(kind=tok.kind, code_shape=list(code_shape), vocab_size=tok.vocab_size,
              grid_shape=_jsonable(tok.grid_shape), latent_scale=tok.latent_scale,
              tokenizer_workdir=os.path.abspath(tok.workdir) if tok.workdir else None,
              source_dataset=spec.name, num_classes=spec.num_classes,
              class_names=list(spec.class_names), splits=written)
  with open(os.path.join(out_dir, META + ".tmp"), "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(os.path.join(out_dir, META + ".tmp"), os.path.join(out_dir, META))
  return written


def flatten_codes(codes, kind: str) -> np.ndarray:
  """Per-example arrays to store: msvq's list of (N, s, s) maps becomes (N, sum s^2)."""
  if kind == "msvq":
    return np.concatenate([np.asarray(c).reshape(len(c), -1) for c in codes], axis=1)
  return np.asarray(codes)


def unflatten_msvq(flat: np.ndarray, scales: Sequence[int]):
  """Inverse of ``flatten_codes`` for "msvq": (N, sum s^2) -> list of (N, s, s)."""
  out, i = [], 0
  for s in scales:
    out.append(flat[:, i:i + s * s].reshape(len(flat), s, s))
    i += s * s
  if i != flat.shape[1]:
    raise ValueError(f"{flat.shape[1]} tokens per example, scales {tuple(scales)} need {i}.")
  return out


def _jsonable(x):
  return [list(t) for t in x] if isinstance(x, list) else list(x)


class _TokenSource:
  """Random-access source over memory-mapped ``.npy`` files (what grain needs)."""

  def __init__(self, codes: np.ndarray, labels: np.ndarray, key: str):
    self.codes, self.labels, self.key = codes, labels, key

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {self.key: np.asarray(self.codes[i]), "label": int(self.labels[i])}


def has_meta(directory: str) -> bool:
  """Whether ``directory`` holds codes' ``tokens.json``."""
  return os.path.isfile(os.path.join(directory or "", META))


def read_meta(directory: str) -> dict:
  path = os.path.join(directory or "", META)
  if not has_meta(directory):
    raise DataError(f"No {META} in config.data.data_dir={directory!r}: write one with "
                    "`jaxgen tokenize --workdir TOKENIZER_RUN --out DIR` and point "
                    "config.data.data_dir at DIR.")
  with open(path) as f:
    return json.load(f)


@registry.DATASETS.register("tokens")
class TokenDataset(datasets.Dataset):
  """Codes or latents written by ``jaxgen tokenize`` into ``config.data.data_dir``."""

  def describe(self, data_cfg) -> datasets.DatasetSpec:
    """From ``tokens.json``; without one (``jaxgen info``, sampling a run on a machine
    without its codes) the classes and splits of ``config.data.source_dataset``, the
    image dataset the codes encode, and ``config.data.code_shape`` (default none: a
    token model's config has it; a latent model's config gives its latents' shape)."""
    directory = data_cfg.get("data_dir")
    if not has_meta(directory) and data_cfg.get("source_dataset"):
      src = datasets.describe(ml_collections.ConfigDict(dict(name=data_cfg.source_dataset)))
      return dataclasses.replace(src, name=f"tokens({src.name})",
                                 image_shape=tuple(data_cfg.get("code_shape") or ()),
                                 has_captions=False)
    meta = read_meta(directory)
    return datasets.DatasetSpec(
        name=f"tokens({meta['source_dataset']})", image_shape=tuple(meta["code_shape"]),
        num_classes=meta["num_classes"], class_names=meta["class_names"],
        splits=dict(meta["splits"]), source=datasets._no_source)  # pylint: disable=protected-access

  def load(self, data_cfg) -> datasets.DatasetSpec:
    directory = data_cfg.get("data_dir")
    key = "image" if read_meta(directory)["kind"] == "kl" else "codes"  # no codes: stop
    spec = self.describe(data_cfg)
    sources = {}

    def source(split):
      if split not in spec.splits:
        raise DataError(f"{directory} has no split {split!r}; it has "
                        f"{', '.join(spec.splits)}.")
      if split not in sources:
        sources[split] = _TokenSource(
            np.load(os.path.join(directory, f"{split}_codes.npy"), mmap_mode="r"),
            np.load(os.path.join(directory, f"{split}_labels.npy"), mmap_mode="r"), key)
      return sources[split]

    spec.source = source
    return spec
