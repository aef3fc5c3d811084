"""A user's folder of images as a dataset (``config.data.name="folder"``).

``jaxgen data --from-folder DIR`` (or the first run of any config with
``--config.data.name=folder --config.data.source_dir=DIR``) prepares the images once
into the data dir as an array_record TFDS dataset, with the machinery of Fashion-MNIST
(no TensorFlow; read with ``as_data_source`` and grain):

* **Layout**: ``DIR/<class>/**/<image>`` (labels 0.. follow the sorted subfolder names)
  or a flat ``DIR/<image>`` (one class, ``"image"``, label 0: the null label 1 serves
  classifier-free guidance as for any dataset). A file counts as an image when PIL
  registers its extension (png, jpg, webp, bmp, tiff, gif, ...); other files and hidden
  ones are ignored. Images beside class subfolders are an error (which class?).
* **Pixels**: EXIF-rotated, transparency composited over white, then RGB (``grey``: one
  grey channel; 16-bit grey scaled to 8 bits) of ``image_size`` x ``image_size``:
  ``crop="center"`` scales the shorter side and keeps the central square (ADM's crop,
  `preprocess.center_crop`), ``crop="none"`` stretches the whole image
  (`preprocess.resize`, bicubic).
* **Split**: an image is in ``test`` when a hash of its relative path falls below
  ``test_fraction``, else in ``train``: deterministic, and adding or removing images
  moves no other image between splits. A split that gets no image is left out.
* **Unreadable images** are skipped: each load prints one ``jaxgen: warning:`` line that
  counts them and lists their paths with the reason (all are in the prepared copy's
  ``metadata.json``); a folder with no readable image is a `DataError`.
* **Cache**: ``<data_dir>/jaxgen_folder/<folder name>_<fingerprint>/``, the fingerprint
  hashing the pixel options and each image's relative path, size and modification time:
  a changed folder is prepared again (into a new directory), never read from a stale copy.
* **Captions** (optional): ``captions_file`` maps relative paths to captions, as JSONL
  (``{"path": "cats/1.png", "caption": "..."}``; ``file_name`` / ``text`` are accepted
  too) or TSV (``cats/1.png<TAB>caption``). Captions are joined by path when the data is
  read (editing the file needs no new preparation). With a captions file, or when
  ``config.data.pp`` applies ``choose_caption``, examples carry ``caption_short`` ("a
  cat", from the class name) and ``caption_detailed`` (the file's caption; the short one
  for images it does not list), as the text-to-image configs expect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from jaxgen import registry
from jaxgen.data import datasets, preprocess
from jaxgen.errors import ConfigError, DataError

FLAT_CLASS = "image"          # the one class of a folder without class subfolders
CROPS = ("center", "none")
DEFAULT_IMAGE_SIZE = 32       # config.data.image_size = 0: 32, as the pad(32) of the presets
MAX_LISTED = 20               # unreadable images named in the warning line


def _path(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


@dataclasses.dataclass(frozen=True)
class FolderOptions:
  """What the prepared pixels depend on, from ``config.data``."""
  source_dir: str
  image_size: int = DEFAULT_IMAGE_SIZE
  crop: str = "center"
  grey: bool = False
  test_fraction: float = 0.1

  @classmethod
  def from_config(cls, data_cfg) -> "FolderOptions":
    """Reads and checks the folder fields of ``data_cfg`` (absent ones: defaults)."""
    source_dir = data_cfg.get("source_dir") or ""
    if not source_dir:
      raise ConfigError("config.data.name='folder' needs config.data.source_dir=DIR, the "
                        "folder of images (class subfolders or flat).")
    size = data_cfg.get("image_size") or DEFAULT_IMAGE_SIZE
    crop = data_cfg.get("crop") or "center"
    fraction = data_cfg.get("test_fraction", 0.1)
    if not isinstance(size, int) or size < 1:
      raise ConfigError(f"config.data.image_size={size!r} must be a positive side length "
                        "(0 = 32).")
    if crop not in CROPS:
      raise ConfigError(f"config.data.crop={crop!r}; use one of {', '.join(CROPS)}.")
    if not 0.0 <= fraction < 1.0:
      raise ConfigError(f"config.data.test_fraction={fraction} must lie in [0, 1).")
    return cls(_path(source_dir), size, crop, bool(data_cfg.get("grey", False)),
               float(fraction))

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return (self.image_size, self.image_size, 1 if self.grey else 3)


@dataclasses.dataclass
class Listing:
  """The images of a folder: ``files`` are (relative posix path, label), sorted."""
  class_names: Tuple[str, ...]
  files: List[Tuple[str, int]]
  fingerprint: str            # of the paths, sizes and modification times


def image_extensions() -> frozenset:
  """File extensions (lower case, with the dot) that PIL can open."""
  Image.init()
  return frozenset(e.lower() for e, fmt in Image.registered_extensions().items()
                   if fmt in Image.OPEN)


def _is_image(name: str, exts) -> bool:
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in exts


def _images_under(root: str, top: str, exts) -> List[str]:
  out = []
  for d, dirs, names in os.walk(top):
    dirs[:] = [n for n in dirs if not n.startswith(".")]
    out += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
            for n in names if _is_image(n, exts)]
  return sorted(out)


def scan(source_dir: str) -> Listing:
  """Lists the images of ``source_dir`` (no image is opened) and fingerprints them."""
  if not os.path.isdir(source_dir):
    raise DataError(f"config.data.source_dir={source_dir!r} is not a directory; point it "
                    "(or `jaxgen data --from-folder`) at a folder of images.")
  exts = image_extensions()
  top = sorted(n for n in os.listdir(source_dir) if not n.startswith("."))
  per_class = {n: _images_under(source_dir, os.path.join(source_dir, n), exts) for n in top
               if os.path.isdir(os.path.join(source_dir, n))}
  per_class = {n: files for n, files in per_class.items() if files}
  loose = [n for n in top if _is_image(n, exts) and os.path.isfile(os.path.join(source_dir, n))]
  if per_class and loose:
    raise DataError(f"{source_dir} holds both images ({len(loose)}, e.g. {loose[0]}) and "
                    f"class subfolders ({', '.join(sorted(per_class))}): move the images "
                    "into a subfolder (their class), or all images out of the subfolders.")
  if per_class:
    class_names = tuple(sorted(per_class))
    files = [(p, k) for k, n in enumerate(class_names) for p in per_class[n]]
  elif loose:
    class_names, files = (FLAT_CLASS,), [(p, 0) for p in loose]
  else:
    raise DataError(f"{source_dir} holds no images (files ending in .png, .jpg, .jpeg, "
                    ".webp, ... at its top level or in class subfolders).")
  h = hashlib.sha256()
  for rel, label in files:
    st = os.stat(os.path.join(source_dir, rel))
    h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return Listing(class_names, files, h.hexdigest())


def cache_name(options: FolderOptions, listing: Listing) -> str:
  """``<folder name>_<12 hex digits>``: the prepared copy's directory (config name)."""
  key = json.dumps([dataclasses.asdict(options) | {"source_dir": None},
                    listing.class_names, listing.fingerprint])
  slug = re.sub(r"[^a-z0-9_]+", "_", os.path.basename(options.source_dir).lower())
  return f"{slug.strip('_')[:40] or 'folder'}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def split_of(relpath: str, test_fraction: float) -> str:
  """``"test"`` when the hash of ``relpath`` (uniform in [0, 1)) < ``test_fraction``."""
  u = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") / 2.0 ** 64
  return "test" if u < test_fraction else "train"


def load_image(path: str, options: FolderOptions) -> np.ndarray:
  """The uint8 (image_size, image_size, C) pixels of one image file."""
  with Image.open(path) as im:
    im = ImageOps.exif_transpose(im)  # a loaded copy: decoding errors surface here
  if im.mode.startswith("I;16"):
    im = Image.fromarray((np.asarray(im, np.float32) / 257.0).round().astype(np.uint8))
  if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
    im = im.convert("RGBA")
    im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
  arr = np.asarray(im.convert("L" if options.grey else "RGB"))
  ex = {"image": arr[..., None] if options.grey else arr}
  size = options.image_size
  op = preprocess.center_crop(size) if options.crop == "center" else preprocess.resize(
      size, "bicubic")
  return op(ex, None)["image"]


def _why(e: Exception, path: str) -> str:
  """``"Type: first line of the message"``, without the file's (already named) path."""
  msg = str(e).replace(f" {path!r}", "").replace(path, "").strip()
  return f"{type(e).__name__}: {msg.splitlines()[0][:120]}" if msg else type(e).__name__


class _DropCustomConfigNote(logging.Filter):
  """TFDS logs "Using custom data configuration" for every folder's own config."""

  def filter(self, record):
    return "custom data configuration" not in record.getMessage()


@contextlib.contextmanager
def _quiet_custom_config():
  logger, f = logging.getLogger("absl"), _DropCustomConfigNote()
  logger.addFilter(f)
  try:
    yield
  finally:
    logger.removeFilter(f)


class FolderBuilder(tfds.core.GeneratorBasedBuilder):
  """The images of one folder, one BuilderConfig per (options, folder content)."""

  name = "jaxgen_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Image folders -> array_record, no TensorFlow."}

  def __init__(self, *, options: FolderOptions, listing: Listing, **kwargs):
    self._options, self._listing = options, listing
    self._skipped: List[Tuple[str, str]] = []
    config = tfds.core.BuilderConfig(name=cache_name(options, listing),
                                     description=f"Images of {options.source_dir}.")
    with _quiet_custom_config():
      super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"The images of {self._options.source_dir}, "
                    f"{'x'.join(map(str, self._options.image_shape))} uint8.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self._options.image_shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=self._listing.class_names),
            "path": tfds.features.Text(),  # relative to the folder (joins captions)
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    splits: Dict[str, List[Tuple[str, int]]] = {"train": [], "test": []}
    for rel, label in self._listing.files:
      path = os.path.join(self._options.source_dir, rel)
      try:  # header only: a split of nothing but broken files is left out, not empty
        Image.open(path).close()
      except Exception as e:  # pylint: disable=broad-except
        self._skipped.append((rel, _why(e, path)))
        continue
      splits[split_of(rel, self._options.test_fraction)].append((rel, label))
    self._note_skipped()
    if not splits["train"]:
      why = (f"{len(self._skipped)} unreadable: {_listed(self._skipped)}" if self._skipped
             else f"test_fraction={self._options.test_fraction}: lower it")
      raise DataError(f"No image of {self._options.source_dir} is readable and in the train "
                      f"split ({why}); training needs at least one.")
    return {s: self._generate_examples(files) for s, files in splits.items() if files}

  def _generate_examples(self, files):
    for rel, label in files:
      path = os.path.join(self._options.source_dir, rel)
      try:
        image = load_image(path, self._options)
      except Exception as e:  # pylint: disable=broad-except
        self._skipped.append((rel, _why(e, path)))
        self._note_skipped()
        continue
      yield rel, {"image": image, "label": label, "path": rel}

  def _note_skipped(self):
    self.info.metadata["skipped"] = sorted(map(list, self._skipped))


def _listed(skipped: Sequence[Sequence[str]]) -> str:
  shown = ", ".join(f"{rel} ({why})" for rel, why in skipped[:MAX_LISTED])
  more = len(skipped) - MAX_LISTED
  return shown + (f" and {more} more" if more > 0 else "")


def skipped_images(builder: FolderBuilder) -> List[Tuple[str, str]]:
  """(relative path, reason) of each image left out when ``builder`` was prepared."""
  return [tuple(x) for x in builder.info.metadata.get("skipped", [])]


def read_captions_file(path: str, source_dir: str) -> Dict[str, str]:
  """relative path -> caption from a JSONL or TSV file (paths relative to the folder)."""
  if not os.path.isfile(path):
    raise DataError(f"config.data.captions_file={path!r} does not exist.")
  out = {}
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      if line.lstrip().startswith("{"):
        try:
          obj = json.loads(line)
        except ValueError:
          obj = {}
        rel = obj.get("path", obj.get("file_name"))
        caption = obj.get("caption", obj.get("text"))
      else:
        rel, _, caption = line.rstrip("\r\n").partition("\t")
        caption = caption if _ else None
      if not isinstance(rel, str) or not isinstance(caption, str):
        raise DataError(f"{path} line {i} is neither a JSON object with \"path\" and "
                        "\"caption\" strings nor 'relative/path<TAB>caption': "
                        f"{line[:80]!r}.")
      full = os.path.join(source_dir, rel)
      out[os.path.relpath(full, source_dir).replace(os.sep, "/")] = caption
  return out


class FolderSource(datasets.ExtendedSource):
  """A split's examples as ``image`` and ``label`` (the stored path dropped), plus
  ``caption_short`` / ``caption_detailed`` when ``short_by_label`` is given."""

  def __init__(self, base, short_by_label: Optional[Sequence[str]] = None,
               detailed: Optional[Dict[str, str]] = None):
    self._base, self._short, self._detailed = base, short_by_label, detailed or {}

  def _add(self, example, index: int):
    del index
    out = {"image": example["image"], "label": example["label"]}
    if self._short is not None:
      path = example["path"]
      path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
      out["caption_short"] = self._short[int(example["label"])]
      out["caption_detailed"] = self._detailed.get(path, out["caption_short"])
    return out


def _uses_captions(data_cfg) -> bool:
  return bool(data_cfg.get("captions_file")) or "choose_caption" in data_cfg.get("pp", "")


def _check_captions(data_cfg) -> None:
  from jaxgen.data import captions  # pylint: disable=g-import-not-at-top
  if _uses_captions(data_cfg):  # pp and detailed_ratio agree; captions_dir is not used:
    cfg = dict(detailed_ratio=data_cfg.get("detailed_ratio", 0.0), pp=data_cfg.get("pp", ""),
               captions_dir="<the short captions, or captions_file's>")
    captions.check_caption_config(cfg)


def warn(msg: str) -> None:
  print(f"jaxgen: warning: {msg}", file=sys.stderr)


@registry.DATASETS.register("folder")
class FolderDataset(datasets.Dataset):
  """The images of ``config.data.source_dir``, prepared into ``config.data.data_dir``
  (see the module docstring for the fields and the layout)."""

  def _spec(self, options: FolderOptions, listing: Listing, data_cfg) -> datasets.DatasetSpec:
    splits = {"train": 0, "test": 0}
    for rel, _ in listing.files:
      splits[split_of(rel, options.test_fraction)] += 1
    no_source = datasets._no_source  # pylint: disable=protected-access
    return datasets.DatasetSpec(
        name=f"folder_{cache_name(options, listing)}", image_shape=options.image_shape,
        num_classes=len(listing.class_names), class_names=listing.class_names,
        splits={k: v for k, v in splits.items() if v}, source=no_source,
        has_captions=_uses_captions(data_cfg))

  def describe(self, data_cfg) -> datasets.DatasetSpec:
    """Shapes, classes and (before unreadable images are left out) split sizes."""
    _check_captions(data_cfg)
    options = FolderOptions.from_config(data_cfg)
    return self._spec(options, scan(options.source_dir), data_cfg)

  def load(self, data_cfg) -> datasets.DatasetSpec:
    _check_captions(data_cfg)
    options = FolderOptions.from_config(data_cfg)
    listing = scan(options.source_dir)
    data_dir = data_cfg.get("data_dir") or datasets.default_data_dir()
    builder = FolderBuilder(options=options, listing=listing, data_dir=data_dir,
                            file_format="array_record")
    try:
      datasets.prepare_builder(builder)
    except OSError as e:
      raise DataError(f"Could not prepare {options.source_dir} in data dir {data_dir} ({e}). "
                      "Set config.data.data_dir (or $JAXGEN_DATA_DIR) to a writable "
                      "directory.") from None
    except AssertionError as e:  # TFDS: a split whose every image failed to decode
      raise DataError(f"Could not prepare {options.source_dir}: {e} Unreadable images: "
                      f"{_listed(builder._skipped)}.") from None  # pylint: disable=protected-access
    skipped = skipped_images(builder)
    if skipped:
      warn(f"{len(skipped)} of {len(listing.files)} images in {options.source_dir} could not "
           f"be read and are left out: {_listed(skipped)} (all in "
           f"{os.path.join(os.fspath(builder.data_dir), 'metadata.json')}).")
    spec = self._spec(options, listing, data_cfg)
    spec.splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    prepared = datasets._cached_sources(builder)  # pylint: disable=protected-access
    short = detailed = None
    if spec.has_captions:
      from jaxgen.data import captions  # pylint: disable=g-import-not-at-top
      short = [captions.short_caption(k, spec.class_names) for k in range(spec.num_classes)]
      if data_cfg.get("captions_file"):
        detailed = read_captions_file(_path(data_cfg.captions_file), options.source_dir)
        _report_caption_coverage(detailed, listing, _path(data_cfg.captions_file))
    sources = {}

    def source(split: str):
      if split not in sources:
        sources[split] = FolderSource(prepared(split), short, detailed)
      return sources[split]

    spec.source = source
    return spec


def _report_caption_coverage(captions: Dict[str, str], listing: Listing, path: str) -> None:
  paths = {rel for rel, _ in listing.files}
  missing, unknown = len(paths - set(captions)), len(set(captions) - paths)
  if missing:
    warn(f"{missing} of {len(paths)} images have no caption in {path}; they get their "
         "short caption (\"a <class>\").")
  if unknown:
    warn(f"{path} captions {unknown} paths that are no image of the folder (paths must be "
         "relative to config.data.source_dir).")


def captions_key(data_cfg) -> bytes:
  """What a folder's captions depend on (its content and its captions file's bytes),
  for the fingerprint of cached caption embeddings."""
  options = FolderOptions.from_config(data_cfg)
  key = cache_name(options, scan(options.source_dir)).encode()
  if data_cfg.get("captions_file"):
    with open(_path(data_cfg.captions_file), "rb") as f:
      key += b"\n" + f.read()
  return key


def data_config(source_dir: str, data_dir: str = "", image_size: int = 0,
                crop: str = "center", grey: bool = False, test_fraction: float = 0.1,
                captions_file: str = ""):
  """The ``config.data`` fields of a folder dataset (``jaxgen data --from-folder``); with
  a captions file, a ``pp`` that keeps captions, so that loading checks the file."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      name="folder", source_dir=_path(source_dir),
      data_dir=_path(data_dir) if data_dir else "", image_size=image_size,
      crop=crop, grey=grey, test_fraction=test_fraction,
      captions_file=_path(captions_file) if captions_file else "",
      pp="choose_caption(0)" if captions_file else "", detailed_ratio=0.0))


def overrides_line(data_cfg) -> str:
  """The ``--config.data.*`` flags that train any config on this folder, as prepared."""
  defaults = data_config(".")
  keys = ("data_dir", "crop", "grey", "test_fraction", "captions_file")
  flags = [f"--config.data.{k}={data_cfg[k]}" for k in ("name", "source_dir", "image_size")]
  flags += [f"--config.data.{k}={data_cfg[k]}" for k in keys if data_cfg[k] != defaults[k]]
  if (data_cfg.image_size or DEFAULT_IMAGE_SIZE) > 32:  # the presets' pp pads to 32
    flags.append("'--config.data.pp=scale(-1, 1)|flip_lr'")
  return " ".join(flags)
