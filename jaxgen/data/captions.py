"""Captions: short ones from labels, detailed ones from a captioner, and the data that
carries both (DALL-E 3's re-captioning on a small scale).

* ``measure_attributes``: discrete attributes measured on uint8 images (brightness,
  size, texture, position), pure NumPy. The built-in captioner describes them and
  evaluation measures prompt following with the very same function.
* ``FashionMnistCaptioner``: class (from jaxgen's cached dataset classifier) and
  attributes rendered in varied sentence forms, deterministic per (seed, example
  index). Any ``(images uint8 (N, H, W, C), indices (N,)) -> list[str]`` callable is a
  captioner (``load_captioner("module:attr")`` plugs in a user's, e.g. a VLM).
* Storage beside the dataset: ``<captions_dir>/<split>.jsonl`` (one JSON string per
  line, aligned with the dataset index) and ``<captions_dir>/meta.json``, written by
  ``jaxgen recaption``.
* ``fashion_mnist_captions``: Fashion-MNIST whose examples also carry
  ``caption_short`` and ``caption_detailed``; the preprocessing op
  ``choose_caption(ratio)`` keeps one of them as ``caption`` (the detailed one with
  probability ``ratio``, drawn from grain's per-example generator: deterministic and
  resumable).
* ``make_prompts`` / ``prompt_following``: held-out detailed prompts with known targets,
  and the class and attribute accuracy of images generated from them.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import os
import re
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from jaxgen import registry
from jaxgen.data import datasets, preprocess
from jaxgen.data.idx import DataError
from jaxgen.errors import ConfigError

# ---------------------------------------------------------------------------------------
# Attribute measurement.

# Object pixels: brighter than this on the dark background (Fashion-MNIST's convention:
# half of all pixels are exactly 0). 25/255 keeps anti-aliased edges out of the object.
FOREGROUND_LEVEL = 25

ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    "brightness": ("dark", "medium", "light"),
    "size": ("small", "medium", "large"),
    "texture": ("plain", "patterned"),
    "position": ("left", "centre", "right"),
}

# Thresholds, chosen as quantiles of the raw measurements (``measure_raw``) over the
# 60k Fashion-MNIST train images so that every value is frequent:
# brightness = mean intensity of the object pixels: tertiles (33.3% / 66.7%).
BRIGHTNESS_THRESHOLDS = (144.0, 183.0)
# size = fraction of the image covered by object pixels: tertiles.
SIZE_THRESHOLDS = (0.365, 0.542)
# texture = mean |Laplacian| over the object's interior (3x3-eroded mask), divided by
# the object's mean intensity: the top quarter (75% quantile) is "patterned"; looked at,
# that quarter holds the prints, stripes, checks and strappy sandals.
TEXTURE_THRESHOLD = 0.58
# position = horizontal offset of the intensity-weighted centroid from the image centre,
# as a fraction of the width. Not a quantile: Fashion-MNIST objects are centred when the
# dataset is made (centroid std 1.3 px overall, ~0.4 px within a garment class), and what
# offset there is comes from shape (heels, handles), so position is measured but not
# captioned for Fashion-MNIST (see CAPTIONED_ATTRIBUTES); +-10% of the width marks an
# object that sits visibly off-centre, on data where it can.
POSITION_THRESHOLD = 0.1

# The attributes the Fashion-MNIST captioner describes and ``make_prompts`` asks for.
CAPTIONED_ATTRIBUTES = ("brightness", "size", "texture")

_CHUNK = 4096  # images per vectorised step: bounds the float32 temporaries


def _grey_float(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"Expected images of shape (N, H, W, C), got {images.shape}.")
  if images.dtype != np.uint8:
    raise ValueError(f"Expected uint8 images (as stored), got {images.dtype}.")
  return images.astype(np.float32).mean(-1)


def _erode3x3(mask: np.ndarray) -> np.ndarray:
  h, w = mask.shape[1:]
  p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
  out = np.ones_like(mask)
  for di in range(3):
    for dj in range(3):
      out &= p[:, di:di + h, dj:dj + w]
  return out


def _raw_chunk(g: np.ndarray) -> Dict[str, np.ndarray]:
  n, h, w = g.shape
  mask = g > FOREGROUND_LEVEL
  count = mask.sum((1, 2))
  fg = g * mask
  mean_fg = fg.sum((1, 2)) / np.maximum(count, 1)
  gp = np.pad(g, ((0, 0), (1, 1), (1, 1)), mode="edge")
  lap = np.abs(4 * g - gp[:, :-2, 1:-1] - gp[:, 2:, 1:-1] - gp[:, 1:-1, :-2] - gp[:, 1:-1, 2:])
  inner = _erode3x3(mask)
  texture = (lap * inner).sum((1, 2)) / np.maximum(inner.sum((1, 2)), 1)
  cols = np.arange(w, dtype=np.float32)
  cx = (fg.sum(1) * cols).sum(1) / np.maximum(fg.sum((1, 2)), 1e-6)
  offset = np.where(count > 0, (cx - (w - 1) / 2) / w, 0.0)
  return dict(brightness=mean_fg, size=count / (h * w),
              texture=texture / np.maximum(mean_fg, 1.0), position=offset)


def measure_raw(images: np.ndarray) -> Dict[str, np.ndarray]:
  """Continuous measurements behind each attribute, float32 arrays of shape (N,).

  Args:
    images: uint8 (N, H, W, C); colour images are averaged to grey.

  Returns:
    ``brightness`` (mean object intensity, 0-255), ``size`` (object area fraction),
    ``texture`` (interior |Laplacian| / mean intensity), ``position`` (centroid offset
    from the centre, fraction of the width, negative = left).
  """
  g = _grey_float(images)
  parts = [_raw_chunk(g[i:i + _CHUNK]) for i in range(0, len(g), _CHUNK)] or [
      _raw_chunk(np.zeros((0,) + g.shape[1:], np.float32))]
  return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in parts[0]}


def measure_attributes(images: np.ndarray) -> Dict[str, np.ndarray]:
  """Discrete attributes of uint8 images: name -> int32 (N,) indices into ATTRIBUTES.

  Deterministic and vectorised; an empty (all dark) image is dark, small, plain, centre.
  """
  raw = measure_raw(images)
  out = {
      "brightness": np.digitize(raw["brightness"], BRIGHTNESS_THRESHOLDS),
      "size": np.digitize(raw["size"], SIZE_THRESHOLDS),
      "texture": (raw["texture"] > TEXTURE_THRESHOLD).astype(np.int64),
      "position": np.digitize(raw["position"], (-POSITION_THRESHOLD, POSITION_THRESHOLD)),
  }
  return {k: v.astype(np.int32) for k, v in out.items()}


# ---------------------------------------------------------------------------------------
# Short captions and sentence rendering.

# Noun phrases of Fashion-MNIST's classes; the first is canonical (short captions and
# evaluation prompts), the others vary the detailed captions.
FMNIST_NOUNS = (("t-shirt", "top"), ("pair of trousers",), ("pullover", "sweater"),
                ("dress",), ("coat",), ("sandal",), ("shirt",), ("sneaker",), ("bag",),
                ("ankle boot",))
_NOUNS_BY_CLASS_NAME = dict(zip(datasets.FMNIST_CLASSES, FMNIST_NOUNS))


def article(phrase: str) -> str:
  return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def class_nouns(class_names: Sequence[str]) -> Tuple[Tuple[str, ...], ...]:
  """Noun phrases per class: Fashion-MNIST's own, else the name before any "/"."""
  return tuple(_NOUNS_BY_CLASS_NAME.get(n, (n.split("/")[0].strip().replace("_", " "),))
               for n in class_names)


def short_caption(label: int, class_names: Sequence[str] = datasets.FMNIST_CLASSES) -> str:
  """The caption a label gives: ``"a shirt"``, ``"an ankle boot"``, ``"a pair of trousers"``."""
  return article(class_nouns(class_names)[int(label)][0])


# Attribute phrasings: as an adjective before the noun, after "is" (predicate), and as a
# clause after the noun. Several per value, chosen per example.
_ADJ = {
    "brightness": {"dark": ("dark", "dark-toned"), "medium": ("grey", "mid-grey"),
                   "light": ("light", "pale", "light-toned")},
    "size": {"small": ("small", "compact"), "medium": ("medium-sized", "mid-sized"),
             "large": ("large", "big")},
    "texture": {"plain": ("plain", "unpatterned"), "patterned": ("patterned", "textured")},
    "position": {"left": ("left-placed",), "centre": ("centred",), "right": ("right-placed",)},
}
_PRED = {
    "brightness": {"dark": ("dark", "dark in tone"), "medium": ("grey", "mid-grey in tone"),
                   "light": ("light", "light in tone", "pale")},
    "size": {"small": ("small", "small in the frame"), "medium": ("medium-sized", "of medium size"),
             "large": ("large", "large in the frame")},
    "texture": {"plain": ("plain", "unpatterned"),
                "patterned": ("patterned", "covered in a pattern")},
    "position": {"left": ("on the left",), "centre": ("in the centre",),
                 "right": ("on the right",)},
}
_CLAUSE = {
    "brightness": {"dark": ("with a dark tone", "in a dark shade"),
                   "medium": ("with a mid-grey tone", "in a mid-grey shade"),
                   "light": ("with a light tone", "in a light shade")},
    "size": {"small": ("taking up little of the frame", "shown small"),
             "medium": ("of medium size", "filling about half the frame"),
             "large": ("filling most of the frame", "shown large")},
    "texture": {"plain": ("with a plain surface", "without any pattern"),
                "patterned": ("with a busy pattern", "with a textured surface")},
    "position": {"left": ("on the left",), "centre": ("in the centre",),
                 "right": ("on the right",)},
}


def join_words(parts: Sequence[str]) -> str:
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _adjectives(av, pick) -> str:
  """Stacked adjectives in English order (size, then tone, then pattern), whatever the
  drawn attribute order: "a small dark patterned sandal", not "a dark small ..."."""
  rank = {a: i for i, a in enumerate(("size", "brightness", "texture", "position"))}
  return " ".join(pick(_ADJ, a, v) for a, v in sorted(av, key=lambda x: rank.get(x[0], 9)))


def as_sentence(text: str) -> str:
  text = text[0].upper() + text[1:]
  return text if text.endswith(".") else text + "."


# Training sentence forms: f(noun, [(attribute, value)] in a random order, pick).
_TRAIN_FORMS: Tuple[Callable, ...] = (
    lambda n, av, pick: article(_adjectives(av, pick) + " " + n),
    lambda n, av, pick: "a photo of " + article(f"{pick(_ADJ, *av[0])} {n}") + ", " +
    join_words([pick(_CLAUSE, a, v) for a, v in av[1:]]),
    lambda n, av, pick: article(n) + ". It is " + join_words([pick(_PRED, a, v) for a, v in av]),
    lambda n, av, pick: article(_adjectives(av[:-1], pick) + " " + n) +
    " " + pick(_CLAUSE, *av[-1]) + ", on a black background",
    lambda n, av, pick: "product image: " + article(n) + " that is " +
    join_words([pick(_PRED, a, v) for a, v in av]),
    lambda n, av, pick: article(n) + " " + join_words([pick(_CLAUSE, a, v) for a, v in av]),
)

# Held-out forms, never used in training captions: ``make_prompts`` renders with these
# only, so prompt following measures more than recall of memorised sentences.
_EVAL_FORMS: Tuple[Callable, ...] = (
    lambda n, av, pick: "an image showing " + article(n) + " which is " +
    join_words([pick(_PRED, a, v) for a, v in av]),
    lambda n, av, pick: "there is " + article(f"{pick(_ADJ, *av[0])} {n}") +
    " in the picture; it is " + join_words([pick(_PRED, a, v) for a, v in av[1:]]),
    lambda n, av, pick: article(f"{pick(_ADJ, *av[0])} {n}") + ", " +
    join_words([pick(_PRED, a, v) for a, v in av[1:]]) + ", pictured on its own",
)


def render_caption(rng: np.random.Generator, noun: str, values: Dict[str, str],
                   forms: Sequence[Callable] = _TRAIN_FORMS) -> str:
  """One sentence naming ``noun`` and every attribute in ``values`` (name -> value),
  with the form, attribute order and phrasings drawn from ``rng``."""
  if len(values) < 2:
    raise ValueError(f"render_caption needs two or more attributes (its sentence forms "
                     f"split them), got {sorted(values)}.")

  def pick(table, attribute, value):
    options = table[attribute][value]
    return options[rng.integers(len(options))]

  names = list(values)
  order = rng.permutation(len(names))
  av = [(names[i], values[names[i]]) for i in order]
  form = forms[rng.integers(len(forms))]
  return as_sentence(form(noun, av, pick))


# ---------------------------------------------------------------------------------------
# Captioners.

class Captioner(Protocol):
  """Any callable from uint8 images (N, H, W, C) and their dataset indices (N,) to N
  captions. Captions must depend only on the image, the index and the captioner's own
  settings (seed), not on which other examples share the batch."""

  def __call__(self, images: np.ndarray, indices: np.ndarray) -> List[str]:
    ...


def _predict_classes(classifier, images: np.ndarray) -> np.ndarray:
  if hasattr(classifier, "features_and_logits"):
    return np.asarray(classifier.features_and_logits(images)[1]).argmax(-1)
  return np.asarray(classifier(images))


class FashionMnistCaptioner:
  """Describes what it measures in each Fashion-MNIST image, in varied sentences.

  The class comes from ``classifier`` (a ``jaxgen.eval.classifier.DatasetClassifier`` or
  any ``images -> class ids`` callable) or, when ``labels`` are passed to ``__call__``,
  from the labels. Brightness, size and texture come from ``measure_attributes``. Sentence form,
  attribute order and phrasing are drawn from a generator seeded with
  ``(seed, example index)``: the same example gets the same caption in any batch.
  """

  name = "fashion_mnist_attributes"

  def __init__(self, classifier=None, seed: int = 0,
               attributes: Sequence[str] = CAPTIONED_ATTRIBUTES):
    self.classifier = classifier
    self.seed = int(seed)
    self.attributes = tuple(attributes)
    self.nouns = class_nouns(datasets.FMNIST_CLASSES)

  def _classifier(self):
    if self.classifier is None:
      raise ValueError("FashionMnistCaptioner has no classifier: pass classifier= (e.g. "
                       "jaxgen.eval.classifier.load_or_train of Fashion-MNIST) or labels=.")
    return self.classifier

  def __call__(self, images: np.ndarray, indices: np.ndarray,
               labels: Optional[np.ndarray] = None) -> List[str]:
    images = np.asarray(images)
    indices = np.asarray(indices)
    if len(indices) != len(images):
      raise ValueError(f"{len(images)} images but {len(indices)} indices.")
    classes = (np.asarray(labels) if labels is not None
               else _predict_classes(self._classifier(), images))
    attrs = measure_attributes(images)
    captions = []
    for j, (index, label) in enumerate(zip(indices, classes)):
      rng = np.random.default_rng((self.seed, int(index)))
      nouns = self.nouns[int(label)]
      noun = nouns[rng.integers(len(nouns))]
      values = {a: ATTRIBUTES[a][attrs[a][j]] for a in self.attributes}
      captions.append(render_caption(rng, noun, values))
    return captions


def load_captioner(spec: str, **kwargs) -> Captioner:
  """A user's captioner from ``"module:attr"``: a callable captioner, or a class (any
  zero-argument factory type) instantiated with ``kwargs``; e.g. a VLM wrapper whose
  ``__init__`` loads its weights."""
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"--captioner {spec!r}: expected 'module:attr', e.g. "
                     "'my_vlm:Captioner' (the module must be importable).")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"--captioner {spec!r}: cannot import {module_name!r} ({e}); put "
                     "it on PYTHONPATH.") from None
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"--captioner {spec!r}: module {module_name!r} has no {attr!r}.")
    obj = getattr(obj, part)
  if isinstance(obj, type):
    obj = obj(**kwargs)
  if not callable(obj):
    raise ValueError(f"--captioner {spec!r} is a {type(obj).__name__}, not a callable "
                     "(images, indices) -> list of captions.")
  return obj


# ---------------------------------------------------------------------------------------
# Storage beside the dataset.

META_FILE = "meta.json"
CAPTIONS_FORMAT = 1


def dataset_captioner(dataset: str, spec: str, seed: int, classifier_factory):
  """``(captioner, name)``: the user's captioner ``spec`` ("module:attr",
  `load_captioner`), else the registered ``dataset``'s own (``make_captioner(seed,
  classifier_factory)``)."""
  if spec:
    try:
      return load_captioner(spec), spec
    except ValueError as e:
      raise ConfigError(str(e)) from None
  cls = registry.DATASETS.get(dataset)
  if not hasattr(cls, "make_captioner"):
    raise ConfigError(f"{dataset} has no built-in captioner; pass --captioner "
                      "module:attr (any (images, indices) -> list of str callable).")
  captioner = cls.make_captioner(seed, classifier_factory)
  return captioner, getattr(captioner, "name", type(captioner).__name__)


def recaption(spec, captioner, name: str, *, out: str, splits: Sequence[str], dataset: str,
              seed: int, batch: int = 1000, show: int = 0, progress: bool = True):
  """Runs ``captioner`` over the ``splits`` of the dataset ``spec`` in batches and
  writes ``<out>/<split>.jsonl`` + meta.json (`write_captions`). Returns ``(paths,
  shown)``: each split's file, and the first ``show`` examples as ``(split, index,
  label, caption)``."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  paths, shown = {}, []
  for split in splits:
    source = spec.source(split)
    n, written = len(source), []
    with tqdm(total=n, desc=f"recaption {split}", unit="img", disable=not progress) as bar:
      for start in range(0, n, batch):
        indices = np.arange(start, min(n, start + batch))
        examples = source.__getitems__(indices.tolist()) if hasattr(
            source, "__getitems__") else [source[int(i)] for i in indices]
        text = captioner(np.stack([e["image"] for e in examples]), indices)
        if len(text) != len(indices):
          raise ValueError(f"Captioner {name!r} returned {len(text)} captions for "
                           f"{len(indices)} images.")
        written.extend(text)
        shown += [(split, int(i), int(e["label"]), c) for i, e, c in
                  zip(indices, examples, text)][:max(0, show - len(shown))]
        bar.update(len(indices))
    paths[split] = write_captions(out, split, written, captioner=name, seed=seed,
                                  dataset=dataset, fingerprint=split_fingerprint(source))
  return paths, shown


def captions_path(captions_dir: str, split: str) -> str:
  return os.path.join(captions_dir, f"{split}.jsonl")


def split_fingerprint(source, num: int = 16) -> str:
  """A hash of ``num`` evenly spaced examples (image bytes and label) of a data source:
  captions written for one preparation of a dataset are not read against another."""
  n = len(source)
  h = hashlib.sha256(str(n).encode())
  for i in sorted(set(np.linspace(0, n - 1, num).astype(int).tolist())) if n else ():
    ex = source[i]
    h.update(np.ascontiguousarray(ex["image"]).tobytes())
    h.update(str(int(ex["label"])).encode())
  return h.hexdigest()[:16]


def _fix(captions_dir: str) -> str:
  return (f"Run `jaxgen recaption --data fashion_mnist_captions --out {captions_dir}` to "
          "(re)write them, or set config.data.captions_dir=\"\" for short captions only.")


def read_meta(captions_dir: str) -> dict:
  path = os.path.join(captions_dir, META_FILE)
  if not os.path.isfile(path):
    raise DataError(f"No captions in {captions_dir}: {path} does not exist. "
                    f"{_fix(captions_dir)}")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is not valid JSON ({e}). {_fix(captions_dir)}") from None
  if not isinstance(meta, dict) or meta.get("format") != CAPTIONS_FORMAT:
    raise DataError(f"{path} is not a jaxgen captions index (format {CAPTIONS_FORMAT}). "
                    f"{_fix(captions_dir)}")
  return meta


def write_captions(captions_dir: str, split: str, captions: Sequence[str], *, captioner: str,
                   seed: int, dataset: str, fingerprint: str = "") -> str:
  """Writes ``<captions_dir>/<split>.jsonl`` and records the split in ``meta.json``
  (other splits' entries are kept). Both files are replaced atomically."""
  if not all(isinstance(c, str) for c in captions):
    bad = next(c for c in captions if not isinstance(c, str))
    raise ValueError(f"Captioner {captioner!r} returned a {type(bad).__name__}, not a str.")
  os.makedirs(captions_dir, exist_ok=True)
  path = captions_path(captions_dir, split)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for c in captions:
      f.write(json.dumps(c, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)
  meta_path = os.path.join(captions_dir, META_FILE)
  meta = read_meta(captions_dir) if os.path.isfile(meta_path) else {}
  splits = meta.get("splits", {}) if meta.get("dataset") == dataset else {}
  now = datetime.datetime.now().isoformat(timespec="seconds")
  splits[split] = dict(num_examples=len(captions), fingerprint=fingerprint,
                       captioner=captioner, seed=int(seed), time=now)
  meta = dict(format=CAPTIONS_FORMAT, dataset=dataset, captioner=captioner, seed=int(seed),
              time=now, splits=splits)
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(meta_path + ".tmp", meta_path)
  return path


def read_captions(captions_dir: str, split: str, expected_size: Optional[int] = None,
                  fingerprint: Optional[str] = None) -> List[str]:
  """The captions of ``split``, one per dataset index, checked against the split's size
  (and the dataset's fingerprint when given); errors name the file and the fix."""
  meta = read_meta(captions_dir)
  path = captions_path(captions_dir, split)
  if not os.path.isfile(path):
    raise DataError(f"No captions for split {split!r}: {path} does not exist. "
                    f"{_fix(captions_dir)}")
  captions = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      try:
        c = json.loads(line)
      except ValueError:
        c = None
      if not isinstance(c, str):
        raise DataError(f"{path} line {i} is not a JSON string: {line[:80]!r}. "
                        f"{_fix(captions_dir)}")
      captions.append(c)
  if expected_size is not None and len(captions) != expected_size:
    raise DataError(f"{path} holds {len(captions)} captions but split {split!r} has "
                    f"{expected_size} examples: it was written for other data. "
                    f"{_fix(captions_dir)}")
  recorded = meta.get("splits", {}).get(split, {})
  if recorded.get("num_examples") not in (None, len(captions)):
    raise DataError(f"{path} holds {len(captions)} captions but "
                    f"{os.path.join(captions_dir, META_FILE)} says "
                    f"{recorded['num_examples']} (an interrupted write?). {_fix(captions_dir)}")
  if fingerprint and recorded.get("fingerprint") and recorded["fingerprint"] != fingerprint:
    raise DataError(f"{path} was written for another preparation of the dataset (its "
                    f"examples differ from those in the data dir). {_fix(captions_dir)}")
  return captions


# ---------------------------------------------------------------------------------------
# The captioned dataset.

class CaptionedSource(datasets.ExtendedSource):
  """A random-access source that adds ``caption_short`` (from the label) and
  ``caption_detailed`` (from a captions file; the short one when there is none)."""

  def __init__(self, base, short_by_label: Sequence[str], detailed: Optional[List[str]]):
    self._base = base
    self._short = list(short_by_label)
    self._detailed = detailed

  def _add(self, ex, index):
    ex = dict(ex)
    short = self._short[int(ex["label"])]
    ex["caption_short"] = short
    ex["caption_detailed"] = short if self._detailed is None else self._detailed[index]
    return ex


_CHOOSE_RE = re.compile(r"(?:^|\|)\s*choose_caption\s*\(([^)]*)\)")


def check_caption_config(data_cfg) -> float:
  """The detailed ratio of ``data_cfg``, checked against the captions dir and the pp.

  ``config.data.pp`` must apply ``choose_caption(r)`` with ``r`` equal to
  ``config.data.detailed_ratio`` (one number, written twice so that the pp string stays
  self-contained; a config file builds the pp from the field).
  """
  ratio = float(data_cfg.get("detailed_ratio", 0.0))
  captions_dir = data_cfg.get("captions_dir", "")
  if not 0.0 <= ratio <= 1.0:
    raise DataError(f"config.data.detailed_ratio={ratio} must lie in [0, 1].")
  if ratio > 0 and not captions_dir:
    raise DataError(f"config.data.detailed_ratio={ratio} needs detailed captions, but "
                    "config.data.captions_dir is empty: run `jaxgen recaption --data "
                    "fashion_mnist_captions --out DIR` and set config.data.captions_dir=DIR, "
                    "or set config.data.detailed_ratio=0.")
  pp = data_cfg.get("pp", "")
  m = _CHOOSE_RE.search(pp)
  want = f"choose_caption({ratio:g})"
  if m is None:
    raise DataError(f"config.data.pp={pp!r} keeps no caption: a captioned dataset needs "
                    f"'{want}|' in front (it turns caption_short / caption_detailed into "
                    "caption).")
  try:
    pp_ratio = float(m.group(1))
  except ValueError:
    raise DataError(f"config.data.pp={pp!r}: choose_caption takes one number.") from None
  if abs(pp_ratio - ratio) > 1e-9:
    raise DataError(f"config.data.pp applies choose_caption({pp_ratio:g}) but "
                    f"config.data.detailed_ratio={ratio:g}; make them agree ({want}).")
  return ratio


@registry.DATASETS.register("fashion_mnist_captions")
class FashionMnistCaptions(datasets.Dataset):
  """Fashion-MNIST with captions: examples are ``image`` (uint8), ``label`` (int),
  ``caption_short`` ("a shirt") and ``caption_detailed`` (from
  ``config.data.captions_dir``, written by ``jaxgen recaption``; "" = short captions
  only); ``choose_caption(config.data.detailed_ratio)`` in ``config.data.pp`` picks one.

  The spec keeps the name ``fashion_mnist``: the images are Fashion-MNIST's, so the
  cached classifier and reference statistics of evaluation are shared with
  class-conditional runs and Frechet distances compare across them.
  """

  image_dataset = "fashion_mnist"  # the registered dataset whose images these are

  @staticmethod
  def make_captioner(seed: int, classifier_factory) -> Captioner:
    """The built-in captioner; ``classifier_factory()`` gives the classifier of the
    images (`jaxgen recaption`: evaluation's, loaded or trained once, now)."""
    return FashionMnistCaptioner(classifier_factory(), seed)

  def describe(self, data_cfg) -> datasets.DatasetSpec:
    check_caption_config(data_cfg)
    spec = datasets.FashionMnistDataset().describe(data_cfg)
    spec.has_captions = True
    return spec

  def load(self, data_cfg) -> datasets.DatasetSpec:
    check_caption_config(data_cfg)
    spec = datasets.FashionMnistDataset().load(data_cfg)
    spec.has_captions = True
    short = [short_caption(k, spec.class_names) for k in range(spec.num_classes)]
    captions_dir = data_cfg.get("captions_dir", "")
    base_source = spec.source
    sources = {}

    def source(split: str):
      if split not in sources:
        base = base_source(split)
        detailed = None
        if captions_dir:
          detailed = read_captions(captions_dir, split, len(base), split_fingerprint(base))
        sources[split] = CaptionedSource(base, short, detailed)
      return sources[split]

    spec.source = source
    return spec


@preprocess.register_op("choose_caption")
def choose_caption(ratio: float) -> preprocess.Op:
  """Keeps ``caption_detailed`` with probability ``ratio``, else ``caption_short``, as
  ``caption`` (the other two fields are dropped). Always draws one number from the
  per-example generator, so later random ops see the same stream for any ratio."""
  ratio = float(ratio)
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"choose_caption({ratio}): the ratio must lie in [0, 1].")

  def op(ex, rng):
    if "caption_short" not in ex or "caption_detailed" not in ex:
      raise DataError("choose_caption needs examples with caption_short and "
                      "caption_detailed: use a captioned dataset (config.data.name="
                      "'fashion_mnist_captions').")
    detailed = rng.random() < ratio
    out = {k: v for k, v in ex.items() if k not in ("caption_short", "caption_detailed")}
    out["caption"] = ex["caption_detailed"] if detailed else ex["caption_short"]
    # Text arrays of both captions (jaxgen.data.caption_embeddings): the same choice.
    for k in [k for k in ex if k.startswith(("text_short_", "text_detailed_"))]:
      del out[k]
      if k.startswith("text_short_"):
        field = k[len("text_short_"):]
        out["text_" + field] = ex[("text_detailed_" if detailed else "text_short_") + field]
    return out
  return op


# ---------------------------------------------------------------------------------------
# Prompt following.

# P(attribute value | class), measured with ``measure_attributes`` on the 60k
# Fashion-MNIST train images (true labels). ``make_prompts`` draws targets from it, so a
# prompt asks for a combination that real data shows (no "large sandal" that never occurs).
CLASS_ATTRIBUTE_FREQ: Dict[str, Tuple[Tuple[float, ...], ...]] = {
    "brightness": ((0.390, 0.260, 0.350), (0.201, 0.361, 0.438), (0.376, 0.237, 0.387),
                   (0.280, 0.285, 0.434), (0.205, 0.277, 0.518), (0.651, 0.289, 0.059),
                   (0.475, 0.245, 0.280), (0.427, 0.476, 0.097), (0.231, 0.383, 0.387),
                   (0.120, 0.448, 0.431)),
    "size": ((0.032, 0.458, 0.511), (0.839, 0.142, 0.018), (0.013, 0.156, 0.831),
             (0.387, 0.565, 0.048), (0.016, 0.307, 0.676), (0.881, 0.117, 0.002),
             (0.025, 0.279, 0.696), (0.917, 0.082, 0.001), (0.069, 0.448, 0.483),
             (0.169, 0.756, 0.075)),
    "texture": ((0.852, 0.148), (0.833, 0.167), (0.832, 0.168), (0.757, 0.243),
                (0.847, 0.153), (0.323, 0.677), (0.698, 0.302), (0.564, 0.436),
                (0.875, 0.125), (0.934, 0.066)),
}


def make_prompts(num: int, seed: int = 0, class_names: Sequence[str] = datasets.FMNIST_CLASSES,
                 attributes: Sequence[str] = CAPTIONED_ATTRIBUTES,
                 min_freq: float = 0.05) -> Tuple[List[str], Dict[str, np.ndarray]]:
  """Held-out detailed prompts with known targets, for prompt-following evaluation.

  Classes are balanced (``num // classes`` each, the rest at random); each attribute is
  drawn from its measured frequency given the class (values rarer than ``min_freq`` for
  that class are left out). Prompts use sentence forms that training captions never use
  (``_EVAL_FORMS``) and a generator salted apart from the captioner's.

  Returns:
    ``(prompts, targets)``: ``targets["label"]`` and ``targets[attribute]`` are int32
    (num,) arrays, the latter indices into ``ATTRIBUTES[attribute]``.
  """
  rng = np.random.default_rng((0x9E37, int(seed)))  # salt: apart from captioner seeds
  k = len(class_names)
  labels = np.concatenate([np.tile(np.arange(k), num // k),
                           rng.choice(k, num % k, replace=False)])
  labels = rng.permutation(labels).astype(np.int32)
  targets = {"label": labels}
  for a in attributes:
    freq = np.asarray(CLASS_ATTRIBUTE_FREQ.get(a) or np.ones((k, len(ATTRIBUTES[a]))),
                      np.float64)
    if freq.shape[0] != k:
      freq = np.ones((k, len(ATTRIBUTES[a])))
    p = np.where(freq >= min_freq, freq, 0.0)
    p /= p.sum(1, keepdims=True)
    cum = p.cumsum(1)[labels]
    u = rng.random(num)[:, None]
    targets[a] = np.minimum((u >= cum).sum(1), len(ATTRIBUTES[a]) - 1).astype(np.int32)
  nouns = class_nouns(class_names)
  prompts = [render_caption(rng, nouns[labels[i]][0],
                            {a: ATTRIBUTES[a][targets[a][i]] for a in attributes},
                            forms=_EVAL_FORMS) for i in range(num)]
  return prompts, targets


def prompt_following(images: np.ndarray, targets: Dict[str, np.ndarray],
                     classifier) -> Dict[str, float]:
  """How well ``images`` (uint8, generated from ``make_prompts``'s prompts in order)
  follow them: class accuracy by ``classifier`` (a DatasetClassifier or an
  ``images -> class ids`` callable), each attribute's accuracy by
  ``measure_attributes``, all attributes right, and everything right."""
  images = np.asarray(images)
  n = len(images)
  if any(len(v) != n for v in targets.values()):
    raise ValueError(f"{n} images but targets of lengths "
                     f"{ {k: len(v) for k, v in targets.items()} }.")
  out = {"num": float(n)}
  all_ok = np.ones(n, bool)
  if "label" in targets:
    cls_ok = _predict_classes(classifier, images) == np.asarray(targets["label"])
    out["class_accuracy"] = float(cls_ok.mean())
  measured = measure_attributes(images)
  for a, want in targets.items():
    if a == "label":
      continue
    ok = measured[a] == np.asarray(want)
    out[f"{a}_accuracy"] = float(ok.mean())
    all_ok &= ok
  out["attributes_accuracy"] = float(all_ok.mean())
  if "label" in targets:
    out["joint_accuracy"] = float((all_ok & cls_ok).mean())
  return out
