"""Caption embeddings computed once with a frozen text encoder (``jaxgen embed-captions``).

Strings cannot enter a jitted step, and re-encoding every caption at every step wastes
the encoder's forward pass (a T5-XXL one dwarfs a small DiT's). So every caption of a
captioned dataset, short and detailed, is encoded once and cached beside the captions:

  <dir>/embeddings.json                  encoder, max_length, width; per split: sizes and
                                         a fingerprint of the captions it encoded
  <dir>/<split>_tokens.npy   (U, L, D)   float16, one row per distinct caption (memmap)
  <dir>/<split>_mask.npy     (U, L)      bool
  <dir>/<split>_pooled.npy   (U, D)      float16
  <dir>/<split>_short_index.npy (N,)     int32 row of each example's short caption
  <dir>/<split>_detailed_index.npy (N,)  int32 row of its detailed caption
  <dir>/null_{tokens,mask,pooled}.npy    the null text "" (float32)
  <dir>/classes_{tokens,mask,pooled}.npy the short caption of each class (previews)

Captions are de-duplicated (Fashion-MNIST's 10 short captions are 10 rows, not 60k).
`attach` makes the dataset's examples carry ``text_{short,detailed}_{tokens,mask,pooled}``
read from the memmaps; ``choose_caption(r)`` then keeps one set as ``text_*`` with the
same per-example draw that picks the string caption. A cache written by another encoder,
length or set of captions is refused with a message naming both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, Sequence

import numpy as np

from jaxgen.data import captions as captions_lib
from jaxgen.data import datasets
from jaxgen.data import preprocess
from jaxgen.data.idx import DataError

META_FILE = "embeddings.json"
FORMAT = 1
FIELDS = ("tokens", "mask", "pooled")


def captions_fingerprint(data_cfg, split: str, class_names: Sequence[str]) -> str:
  """A hash of the captions a split's examples can get: the short caption of each
  class and the bytes of the detailed captions file (if any); Moving Fashion-MNIST's
  settings, which make its captions."""
  h = hashlib.sha256()
  for k in range(len(class_names)):
    h.update(captions_lib.short_caption(k, class_names).encode() + b"\n")
  captions_dir = data_cfg.get("captions_dir", "")
  if data_cfg.get("name") == "folder":  # an image folder: its content and captions_file
    from jaxgen.data import folder  # pylint: disable=g-import-not-at-top
    h.update(folder.captions_key(data_cfg))
  elif data_cfg.get("name") == "moving_fashion_mnist":  # captions made with the videos
    from jaxgen.data import moving_fmnist  # pylint: disable=g-import-not-at-top
    h.update(moving_fmnist.Settings.from_config(data_cfg).name.encode())
  elif captions_dir:
    path = captions_lib.captions_path(captions_dir, split)
    if not os.path.isfile(path):
      raise DataError(f"No captions for split {split!r}: {path} does not exist.")
    with open(path, "rb") as f:
      h.update(f.read())
  else:
    h.update(b"<short captions only>")
  return h.hexdigest()[:16]


def _save(path: str, array: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def _encode_rows(encoder, texts: Sequence[str], batch: int = 1024):
  """(tokens float16, mask, pooled float16) of ``texts``, in chunks."""
  toks, masks, pools = [], [], []
  for i in range(0, len(texts), batch):
    t, m, p = encoder(list(texts[i:i + batch]))
    toks.append(t.astype(np.float16))
    masks.append(m)
    pools.append(p.astype(np.float16))
  return np.concatenate(toks), np.concatenate(masks), np.concatenate(pools)


def embed_captions(spec, data_cfg, encoder, out_dir: str, splits: Sequence[str],
                   progress: bool = True) -> Dict[str, dict]:
  """Encodes every caption of ``splits`` of the captioned dataset ``spec`` once with
  ``encoder`` and writes the cache described in the module docstring to ``out_dir``.
  Returns the per-split entries written to embeddings.json."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if not getattr(spec, "has_captions", False):
    raise DataError(f"Dataset {spec.name!r} carries no captions; use a captioned dataset "
                    "(config.data.name='fashion_mnist_captions').")
  os.makedirs(out_dir, exist_ok=True)
  entries = {}
  for split in splits:
    source = spec.source(split)
    n = len(source)
    short, detailed = [], []
    for start in range(0, n, 5000):
      idx = list(range(start, min(n, start + 5000)))
      exs = (source.__getitems__(idx) if hasattr(source, "__getitems__")
             else [source[i] for i in idx])
      short += [e["caption_short"] for e in exs]
      detailed += [e["caption_detailed"] for e in exs]
    unique = list(dict.fromkeys(short + detailed))
    row = {c: i for i, c in enumerate(unique)}
    shapes = {"tokens": ((len(unique), encoder.max_length, encoder.width), np.float16),
              "mask": ((len(unique), encoder.max_length), np.bool_),
              "pooled": ((len(unique), encoder.width), np.float16)}
    outs = {f: np.lib.format.open_memmap(os.path.join(out_dir, f"{split}_{f}.npy.tmp.npy"),
                                         "w+", dtype, shape)
            for f, (shape, dtype) in shapes.items()}
    chunk = 4096
    for i in tqdm(range(0, len(unique), chunk), desc=f"embed {split}", unit="chunk",
                  disable=not progress):
      t, m, p = _encode_rows(encoder, unique[i:i + chunk])
      outs["tokens"][i:i + len(t)], outs["mask"][i:i + len(t)], outs["pooled"][i:i + len(t)] = t, m, p
    for f, arr in outs.items():
      arr.flush()
      del arr
      os.replace(os.path.join(out_dir, f"{split}_{f}.npy.tmp.npy"),
                 os.path.join(out_dir, f"{split}_{f}.npy"))
    outs.clear()
    _save(os.path.join(out_dir, f"{split}_short_index.npy"),
          np.asarray([row[c] for c in short], np.int32))
    _save(os.path.join(out_dir, f"{split}_detailed_index.npy"),
          np.asarray([row[c] for c in detailed], np.int32))
    entries[split] = dict(num_examples=n, num_unique=len(unique),
                          captions=captions_fingerprint(data_cfg, split, spec.class_names))
  null = encoder([""])
  classes = encoder([captions_lib.short_caption(k, spec.class_names)
                     for k in range(spec.num_classes)])
  for prefix, arrays in (("null", null), ("classes", classes)):
    for f, a in zip(FIELDS, arrays):
      _save(os.path.join(out_dir, f"{prefix}_{f}.npy"), a[0] if prefix == "null" else a)
  meta_path = os.path.join(out_dir, META_FILE)
  old = read_meta(out_dir) if os.path.isfile(meta_path) else {}
  same = (old.get("encoder"), old.get("max_length")) == (encoder.name, encoder.max_length)
  meta = dict(format=FORMAT, encoder=encoder.name, max_length=encoder.max_length,
              width=encoder.width, dtype="float16",
              splits=dict(old.get("splits", {}) if same else {}, **entries))
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(meta_path + ".tmp", meta_path)
  return entries


def _fix(out_dir: str) -> str:
  return (f"Re-run `jaxgen embed-captions --config C --out {out_dir}` with this run's "
          "config (text encoder and captions), or point config.data.embeddings_dir at "
          "a matching cache.")


def read_meta(out_dir: str) -> dict:
  path = os.path.join(out_dir, META_FILE)
  if not os.path.isfile(path):
    raise DataError(f"No caption embeddings in {out_dir}: {path} does not exist. "
                    f"{_fix(out_dir)}")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise DataError(f"{path} is not a jaxgen caption-embeddings index (format {FORMAT}).")
  return meta


def check_cache(out_dir: str, text_cfg, *, split: str = None, fingerprint: str = None) -> dict:
  """Refuses a cache written by another encoder / length / width, or for other captions
  of ``split``; returns its meta."""
  meta = read_meta(out_dir)
  want = dict(encoder=text_cfg.encoder, max_length=int(text_cfg.max_length),
              width=int(text_cfg.width))
  have = {k: meta.get(k) for k in want}
  if have != want:
    raise DataError(f"The caption embeddings in {out_dir} were written by text encoder "
                    f"{have['encoder']!r} (max_length={have['max_length']}, width="
                    f"{have['width']}), but this run uses {want['encoder']!r} (max_length="
                    f"{want['max_length']}, width={want['width']}). {_fix(out_dir)}")
  if split is not None:
    entry = meta.get("splits", {}).get(split)
    if entry is None:
      raise DataError(f"{out_dir} holds no embeddings of split {split!r} (it has "
                      f"{sorted(meta.get('splits', {}))}). {_fix(out_dir)}")
    if fingerprint is not None and entry["captions"] != fingerprint:
      raise DataError(f"The caption embeddings of split {split!r} in {out_dir} encode "
                      f"other captions (fingerprint {entry['captions']}) than this run's "
                      f"data gives (fingerprint {fingerprint}: config.data.captions_dir / "
                      f"the dataset changed since). {_fix(out_dir)}")
  return meta


def _load(out_dir: str, prefix: str, mmap: bool = False) -> Dict[str, np.ndarray]:
  mode = "r" if mmap else None
  return {f: np.load(os.path.join(out_dir, f"{prefix}_{f}.npy"), mmap_mode=mode)
          for f in FIELDS}


def read_null(out_dir: str) -> Dict[str, np.ndarray]:
  """The cached null text: ``text_tokens`` (L, D), ``text_mask`` (L,), ``text_pooled``."""
  return {f"text_{k}": v for k, v in _load(out_dir, "null").items()}


def read_class_captions(out_dir: str, num: int) -> Dict[str, np.ndarray]:
  """``num`` rows cycling over the classes' short-caption embeddings."""
  c = _load(out_dir, "classes")
  rows = np.arange(num) % len(c["pooled"])
  return {f"text_{k}": np.asarray(v[rows], np.float32 if k != "mask" else bool)
          for k, v in c.items()}


class TextSource(datasets.ExtendedSource):
  """A captioned source whose examples also carry the text arrays of both captions:
  ``text_{short,detailed}_{tokens,mask,pooled}`` (cached) or ``..._{ids,mask}``
  (tokenized, for encoding in the step)."""

  def __init__(self, base, *, table=None, short_index=None, detailed_index=None,
               tokenizer=None):
    self._base, self._table, self._tok = base, table, tokenizer
    self._short, self._detailed = short_index, detailed_index

  def _add(self, ex, index):
    ex = dict(ex)
    if self._tok is not None:
      ids, mask = self._tok.tokenize([ex["caption_short"], ex["caption_detailed"]])
      for j, which in enumerate(("short", "detailed")):
        ex[f"text_{which}_ids"], ex[f"text_{which}_mask"] = ids[j], mask[j]
      return ex
    for which, rows in (("short", self._short), ("detailed", self._detailed)):
      r = int(rows[index])
      for f in FIELDS:
        ex[f"text_{which}_{f}"] = np.asarray(self._table[f][r])
    return ex


def attach(spec, conditioner):
  """``spec`` with its ``source`` wrapped (a new spec) so that each split's examples
  carry the arrays ``conditioner`` (a `jaxgen.conditioning.TextConditioner`) reads.
  Checks the cache against the run's encoder and captions when a split is first
  opened."""
  base_source = spec.source
  data_dir = conditioner.embeddings_dir
  text_cfg = conditioner.text_cfg
  data_cfg = conditioner.data_cfg
  opened = {}

  def source(split: str):
    if not getattr(spec, "has_captions", False):
      raise DataError(f"A text-conditioned run needs a captioned dataset; {spec.name!r} "
                      "has no captions (use config.data.name='fashion_mnist_captions').")
    if split not in opened:
      base = base_source(split)
      if conditioner.encode_in_step:
        opened[split] = TextSource(base, tokenizer=conditioner.encoder)
      else:
        fp = captions_fingerprint(data_cfg, split, spec.class_names)
        meta = check_cache(data_dir, text_cfg, split=split, fingerprint=fp)
        if meta["splits"][split]["num_examples"] != len(base):
          raise DataError(f"{data_dir} embeds {meta['splits'][split]['num_examples']} "
                          f"examples of split {split!r}, the data has {len(base)}. "
                          f"{_fix(data_dir)}")
        opened[split] = TextSource(
            base, table=_load(data_dir, split, mmap=True),
            short_index=np.load(os.path.join(data_dir, f"{split}_short_index.npy")),
            detailed_index=np.load(os.path.join(data_dir, f"{split}_detailed_index.npy")))
    return opened[split]

  return dataclasses.replace(spec, source=source)


@preprocess.register_op("drop")
def drop(*keys: str) -> preprocess.Op:
  """Removes ``keys`` from the example where present (e.g. the string ``caption`` once
  its embedding is chosen: strings cannot be batched into a jitted step)."""
  def op(ex, rng):
    del rng
    return {k: v for k, v in ex.items() if k not in keys}
  return op
