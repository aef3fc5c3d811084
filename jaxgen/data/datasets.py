"""Datasets as TFDS builders that need no TensorFlow (``file_format="array_record"``).

A builder is prepared once into a data dir and then read with ``as_data_source``
(random access, what grain needs). Registered datasets return a ``DatasetSpec`` that
the pipeline and evaluation use without knowing which dataset it is.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxgen import registry
from jaxgen.data.idx import DataError, read_idx

DEBIAN_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where TFDS's own `fashion_mnist` builder downloads the same files from.
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle boot")
_FIX = ("Install the Debian package with `apt-get install dataset-fashion-mnist`, or set "
        "config.data.source_dir (or $JAXGEN_FASHION_MNIST_DIR) to a directory holding the "
        "four IDX .gz files.")


def default_data_dir() -> str:
  return os.environ.get("JAXGEN_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "jaxgen", "tfds"))


_FMNIST_NAMES = tuple(n for pair in FMNIST_FILES.values() for n in pair)


def _missing_fmnist_files(directory: str):
  return [n for n in _FMNIST_NAMES if not os.path.isfile(os.path.join(directory, n))]


def find_fmnist_source(source_dir: Optional[str]) -> Optional[str]:
  """The directory that holds the IDX files: the one the config names, else the one
  $JAXGEN_FASHION_MNIST_DIR names (either, when set, must hold all four files: a wrong
  path is an error, not a silent switch to another copy), else the Debian package's;
  None if there is none."""
  debian = "the Debian package's (`apt-get install dataset-fashion-mnist`)"
  for where, d, fix in (
      ("config.data.source_dir", source_dir,
       f"or to \"\" to use $JAXGEN_FASHION_MNIST_DIR or {debian}"),
      ("$JAXGEN_FASHION_MNIST_DIR", os.environ.get("JAXGEN_FASHION_MNIST_DIR"),
       f"or unset it to use {debian}")):
    if not d:
      continue
    missing = _missing_fmnist_files(d)
    if missing:
      four = f"the four Fashion-MNIST IDX files ({', '.join(_FMNIST_NAMES)})"
      if not os.path.isdir(d):
        what = f"does not exist; it must be a directory holding {four}"
      elif len(missing) == len(_FMNIST_NAMES):
        what = f"holds none of {four}"
      else:
        what = f"lacks {', '.join(missing)} of {four}"
      raise DataError(f"{where}={d!r} {what}. Set it to a directory that holds them, "
                      f"{fix}.")
    return d
  return None if _missing_fmnist_files(DEBIAN_FMNIST_DIR) else DEBIAN_FMNIST_DIR


class FashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey images, 10 classes.

  Reads the IDX files from a local directory (the Debian package
  ``dataset-fashion-mnist`` by default); without one, downloads them as TFDS's own
  ``fashion_mnist`` builder does. Images are stored as raw uint8 tensors, which needs
  no TensorFlow to encode or decode.
  """

  name = "jaxgen_fashion_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "IDX files -> array_record, no TensorFlow."}

  def __init__(self, *, source_dir: Optional[str] = None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Fashion-MNIST, 28x28x1 uint8 images with 10 class labels.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=FMNIST_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(*pair)
            for split, pair in fmnist_files(self._source_dir, dl_manager).items()}

  def _generate_examples(self, images_path, labels_path):
    images, labels = read_fmnist(images_path, labels_path)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


def fmnist_files(source_dir: Optional[str], dl_manager) -> Dict[str, Tuple[str, str]]:
  """split -> (images path, labels path) of Fashion-MNIST's IDX files: the local ones
  (`find_fmnist_source`), else downloaded with ``dl_manager`` as TFDS's own
  ``fashion_mnist`` builder does (a DataError saying what to install when that fails)."""
  src = find_fmnist_source(source_dir)
  if src is not None:
    return {s: tuple(os.path.join(src, n) for n in pair) for s, pair in FMNIST_FILES.items()}
  logging.info("No local Fashion-MNIST files; downloading from %s", FMNIST_URL)
  try:
    paths = dl_manager.download({n: FMNIST_URL + n for n in _FMNIST_NAMES})
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"Fashion-MNIST is not on this machine and could not be "
                    f"downloaded ({type(e).__name__}: {e}). {_FIX}") from None
  return {s: tuple(os.fspath(paths[n]) for n in pair) for s, pair in FMNIST_FILES.items()}


def read_fmnist(images_path: str, labels_path: str) -> Tuple[np.ndarray, np.ndarray]:
  """One split's images uint8 (N, 28, 28) and labels uint8 (N,), checked (a DataError
  naming the bad file and the fix)."""
  images = read_idx(images_path, 3, _FIX)
  labels = read_idx(labels_path, 1, _FIX)
  if images.shape[1:] != (28, 28) or len(images) != len(labels):
    raise DataError(f"{images_path} ({images.shape}) and {labels_path} ({labels.shape}) "
                    f"do not form a 28x28 image/label pair. {_FIX}")
  if labels.max() >= 10:
    raise DataError(f"{labels_path} holds label {labels.max()}; Fashion-MNIST has 10. {_FIX}")
  return images, labels


@dataclasses.dataclass
class DatasetSpec:
  """What the rest of jaxgen needs to know about a dataset."""
  name: str
  image_shape: Tuple[int, ...]        # (H, W, C), a video's (T, H, W, C); as stored
  num_classes: int
  class_names: Sequence[str]
  splits: Dict[str, int]              # split -> number of examples
  source: Callable[[str], object]     # split -> random-access data source (grain)
  has_captions: bool = False          # examples carry caption_short / caption_detailed

  @property
  def is_video(self) -> bool:
    """Whether examples are videos: ``image`` is (T, H, W, C), frames first."""
    return len(self.image_shape) == 4


class ExtendedSource:
  """A random-access source that adds fields to another source's examples (captions,
  text embeddings); a subclass sets ``self._base`` and defines ``_add(example, index)``."""

  _base = None

  def __len__(self) -> int:
    return len(self._base)

  def _add(self, example, index: int):
    raise NotImplementedError

  def __getitem__(self, index):
    index = int(index)
    return self._add(self._base[index], index)

  def __getitems__(self, indices):
    indices = [int(i) for i in indices]
    base = (self._base.__getitems__(indices) if hasattr(self._base, "__getitems__")
            else [self._base[i] for i in indices])
    return [self._add(ex, i) for ex, i in zip(base, indices)]


def prepare_builder(builder: tfds.core.DatasetBuilder) -> None:
  """Prepares ``builder`` once (process 0 in multi-host runs; the others wait)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    builder.download_and_prepare()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"prepared {builder.name}")


class Dataset:
  """A registered dataset: ``describe`` (shapes and sizes, no I/O) and ``load``."""

  def describe(self, data_cfg) -> DatasetSpec:
    raise NotImplementedError

  def load(self, data_cfg) -> DatasetSpec:
    raise NotImplementedError


@registry.DATASETS.register("fashion_mnist")
class FashionMnistDataset(Dataset):
  """Fashion-MNIST from local IDX files, prepared into ``config.data.data_dir``."""

  def describe(self, data_cfg) -> DatasetSpec:
    del data_cfg
    return DatasetSpec(name="fashion_mnist", image_shape=(28, 28, 1), num_classes=10,
                       class_names=FMNIST_CLASSES, splits={"train": 60000, "test": 10000},
                       source=_no_source)

  def load(self, data_cfg) -> DatasetSpec:
    data_dir = data_cfg.get("data_dir") or default_data_dir()
    find_fmnist_source(data_cfg.get("source_dir"))  # a wrong path stops, also once prepared
    builder = FashionMnist(source_dir=data_cfg.get("source_dir") or None, data_dir=data_dir,
                           file_format="array_record")
    try:
      prepare_builder(builder)
    except OSError as e:
      raise DataError(f"Could not prepare Fashion-MNIST in data dir {data_dir} ({e}). "
                      "Set config.data.data_dir (or $JAXGEN_DATA_DIR) to a writable "
                      "directory.") from None
    spec = self.describe(data_cfg)
    spec.splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    spec.source = _cached_sources(builder)
    return spec


@registry.DATASETS.register("imagenet2012_latents")
class ImageNetLatents(Dataset):
  """ImageNet-1k 256x256 as pre-computed 32x32x4 autoencoder latents (DiT's setting).

  The latents are written by the tokenizer tools of jaxgen (``jaxgen tokenize``, from a
  KL-VAE workdir) into ``config.data.data_dir``; the raw images come from TFDS
  ``imagenet2012``, which needs a manual download on real hardware.
  """

  def describe(self, data_cfg) -> DatasetSpec:
    size = data_cfg.get("latent_size", 32)
    return DatasetSpec(name="imagenet2012_latents", image_shape=(size, size, 4),
                       num_classes=1000, class_names=tuple(map(str, range(1000))),
                       splits={"train": 1281167, "validation": 50000}, source=_no_source)

  def load(self, data_cfg) -> DatasetSpec:
    raise DataError(
        "imagenet2012_latents: no pre-computed latents in config.data.data_dir="
        f"{data_cfg.get('data_dir')!r}. Prepare TFDS imagenet2012 (manual download) and "
        "encode it with a trained KL-VAE tokenizer (`jaxgen tokenize`) on real hardware.")


@registry.DATASETS.register("imagenet2012")
class ImageNet(Dataset):
  """ImageNet-1k (ILSVRC 2012) from TFDS ``imagenet2012`` prepared as array_record in
  ``config.data.data_dir`` (images of any size: use ``center_crop(256)`` in ``pp``).

  TFDS cannot download ImageNet: put ILSVRC2012_img_train.tar and _val.tar in
  ``<data_dir>/downloads/manual`` and prepare once (``jaxgen data --config C``).
  """

  def describe(self, data_cfg) -> DatasetSpec:
    size = data_cfg.get("image_size") or 256  # 0 (the presets' default): 256
    return DatasetSpec(name="imagenet2012", image_shape=(size, size, 3), num_classes=1000,
                       class_names=tuple(map(str, range(1000))),
                       splits={"train": 1281167, "validation": 50000}, source=_no_source)

  def load(self, data_cfg) -> DatasetSpec:
    data_dir = data_cfg.get("data_dir") or default_data_dir()
    builder = tfds.builder("imagenet2012", data_dir=data_dir, file_format="array_record")
    try:
      prepare_builder(builder)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(
          f"imagenet2012 is not prepared in {data_dir} ({type(e).__name__}: {e}). Put "
          f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {data_dir}/downloads/"
          "manual and run `jaxgen data --config C` once.") from None
    spec = self.describe(data_cfg)
    spec.source = _cached_sources(builder)
    return spec


def _no_source(split: str):
  raise DataError(f"This dataset spec is a description only; load it to read {split!r}.")


def has_data(spec: DatasetSpec) -> bool:
  """Whether ``spec`` reads examples (`get_dataset`), not only describes them
  (`describe`)."""
  return spec.source is not _no_source


class PreparedSource(ExtendedSource):
  """A split of a prepared (array_record) dataset whose read failures (a corrupted,
  truncated or deleted file: riegeli's "hash mismatch", "open() failed") become one
  DataError that names the directory to delete so that it is prepared again."""

  def __init__(self, base, data_dir: str, split: str):
    self._base, self._data_dir, self._split = base, data_dir, split

  def _add(self, example, index: int):
    del index
    return example

  def _read(self, read, arg):
    try:
      return read(arg)
    except (RuntimeError, OSError, ValueError) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(
          f"The prepared data in {self._data_dir} is damaged: its {self._split!r} split "
          f"cannot be read ({str(e).splitlines()[0][:160]}). Delete that directory "
          f"(rm -r {self._data_dir}) and rerun: it is prepared again from the source "
          "files.") from None

  def __getitem__(self, index):
    return self._read(super().__getitem__, index)

  def __getitems__(self, indices):
    return self._read(super().__getitems__, indices)


def _cached_sources(builder):
  sources = {}

  def source(split: str):
    if split not in sources:
      if split not in builder.info.splits:
        raise DataError(f"{builder.name} has no split {split!r}; it has "
                        f"{', '.join(builder.info.splits)}.")
      sources[split] = PreparedSource(builder.as_data_source(split=split),
                                      os.fspath(builder.data_dir), split)
    return sources[split]

  return source


def get_dataset(data_cfg) -> DatasetSpec:
  """Prepares (once) and opens the dataset named by ``config.data.name``."""
  return registry.DATASETS.get(data_cfg.name)().load(data_cfg)


def image_dataset_config(name: str, data_dir: str = "", source_dir: str = ""):
  """``config.data`` of the images behind dataset ``name``: a captioned dataset's
  registered ``image_dataset`` (its images without captions), else ``name`` itself."""
  image = getattr(registry.DATASETS.get(name), "image_dataset", name)
  return ml_collections.ConfigDict(dict(name=image, data_dir=data_dir,
                                        source_dir=source_dir))


def describe(data_cfg) -> DatasetSpec:
  """Shapes and sizes of ``config.data.name`` without reading or preparing data."""
  return registry.DATASETS.get(data_cfg.name)().describe(data_cfg)


SPEC_FILE = "dataset.json"


def spec_to_dict(spec: DatasetSpec) -> dict:
  """What a run records of its dataset (``<workdir>/dataset.json``): everything but
  the data, so that the run can be sampled where the data is not."""
  return dict(name=spec.name, image_shape=list(spec.image_shape),
              num_classes=spec.num_classes, class_names=list(spec.class_names),
              splits=dict(spec.splits), has_captions=spec.has_captions)


def spec_from_dict(d: dict) -> DatasetSpec:
  """The description `spec_to_dict` wrote; it reads no examples."""
  return DatasetSpec(name=d["name"], image_shape=tuple(d["image_shape"]),
                     num_classes=int(d["num_classes"]), class_names=tuple(d["class_names"]),
                     splits=dict(d["splits"]), source=_no_source,
                     has_captions=bool(d.get("has_captions", False)))


def load_arrays(spec: DatasetSpec, split: str, limit: Optional[int] = None):
  """All (or the first ``limit``) examples of a split as numpy (images, labels)."""
  src = spec.source(split)
  n = len(src) if limit is None else min(limit, len(src))
  examples = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else [
      src[i] for i in range(n)]
  images = np.stack([e["image"] for e in examples])
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return images, labels
