"""Real videos prepared by TFDS (UCF-101, Kinetics, any video builder) as fixed-size
clips: ``config.data.name="tfds_video"``.

**Data.** A TFDS builder prepared once, on a machine with TensorFlow, in the
``array_record`` format under ``config.data.data_dir`` and named by
``config.data.tfds_name`` (``"name[/config][:version]"``; default
``"ucf101/ucf101_1_256:2.0.0"``, UCF-101's first split at 256x256; without a version the
newest prepared one). Its examples need a video feature (``config.data.video_key``,
default ``video``) and an integer label (``config.data.label_key``, default ``label``);
every other feature is left unread. Kinetics is not in the TFDS catalog: prepare your
own builder with those two features. Nothing is downloaded or prepared at run time:
unprepared data is a `DataError` that gives the command to prepare it.

**Without TensorFlow.** ``tfds.features.Video`` cannot even be constructed without
TensorFlow (its ``__init__`` calls ``tf.dtypes.as_dtype``), so neither ``tfds.builder``
nor ``tfds.builder_from_directory`` opens a prepared UCF-101 here. On disk a ``Video``
is a ``Sequence`` of ``Image`` features: one encoded frame (JPEG for UCF-101, PNG by
default) per entry of a bytes list. `open_builder` reads the builder directory's
``dataset_info.json`` and ``features.json`` itself, keeps only the video and label
features, stands a ``Sequence(Tensor(shape=(), dtype=object))`` (the same bytes list)
in for a ``Video``, and opens the files with TFDS's ``ReadOnlyBuilder`` and
``as_data_source`` (random access for grain). Frames are then decoded with PIL, only
those a clip takes. A video stored as a uint8 ``Tensor`` of shape (T, H, W, C) (C 1 or
3, any encoding) is read as it is.

**Clips.** Example ``i`` becomes ``image`` uint8 (num_frames, image_size, image_size, 3)
and ``label``: ``config.data.num_frames`` (16) frames taken every
``config.data.frame_stride`` (1) frames from a start that is

* for the train split (``config.data.train_split``): drawn uniformly from every start
  whose clip fits in the video, by ``numpy.random.default_rng((config.data.seed, i))``,
  so the same index always gives the same clip (reproducible and resumable runs; the
  clip of an index is the same every epoch);
* for any other split (eval): the middle clip, ``(length - span) // 2`` with ``span =
  (num_frames - 1) * frame_stride + 1``.

A video shorter than ``span`` starts at frame 0 and repeats its last frame to fill the
clip. Each frame is centre-cropped to a square (the short side) and resized to
``config.data.image_size`` (0: 64): by area averaging when shrinking (exact: the mean of
the input area each output pixel covers; 256 -> 64 or 128 is a 4x4 or 2x2 mean), bilinear
(PIL) when enlarging. Grey videos are repeated to 3 channels.

**Describe.** ``jaxgen info`` and sampling elsewhere take the shapes from the config
alone: ``(num_frames, image_size, image_size, 3)``, ``config.data.num_classes`` (101)
classes, UCF-101's class names and split sizes when ``tfds_name`` is a UCF-101 builder.
Loading checks that the prepared label feature has ``config.data.num_classes`` classes
(set it to 400 for Kinetics-400) and takes the class names from it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxgen import registry
from jaxgen.data import datasets
from jaxgen.data.moving_fmnist import box_resize
from jaxgen.errors import DataError

DEFAULT_TFDS_NAME = "ucf101/ucf101_1_256:2.0.0"
DEFAULT_IMAGE_SIZE = 64
# The sizes of UCF-101's official train / test lists, what `describe` reports (not
# checked against a prepared copy here; a loaded spec counts the prepared examples).
UCF101_SPLITS = {1: {"train": 9537, "test": 3783}, 2: {"train": 9586, "test": 3734},
                 3: {"train": 9624, "test": 3696}}
_NAME_RE = re.compile(r"^([^/:\s]+)(?:/([^/:\s]+))?(?::(\d+\.\d+\.\d+))?$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_INFO_FILE = "dataset_info.json"


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  """Which builder a `tfds_video` dataset reads and the clips it makes of it (the
  ``config.data`` fields of the module docstring)."""
  tfds_name: str = DEFAULT_TFDS_NAME
  video_key: str = "video"
  label_key: str = "label"
  num_frames: int = 16
  frame_stride: int = 1
  image_size: int = DEFAULT_IMAGE_SIZE
  num_classes: int = 101
  seed: int = 0
  train_split: str = "train"

  @classmethod
  def from_config(cls, data_cfg) -> "ClipSettings":
    """The settings of ``config.data`` (``.get`` with the defaults), checked."""
    d = cls()
    s = cls(tfds_name=str(data_cfg.get("tfds_name") or d.tfds_name),
            video_key=str(data_cfg.get("video_key") or d.video_key),
            label_key=str(data_cfg.get("label_key") or d.label_key),
            image_size=int(data_cfg.get("image_size") or d.image_size),
            train_split=str(data_cfg.get("train_split") or d.train_split),
            **{f: int(data_cfg.get(f, getattr(d, f)))
               for f in ("num_frames", "frame_stride", "num_classes", "seed")})
    s.check()
    return s

  def check(self) -> None:
    for f in ("num_frames", "frame_stride", "image_size", "num_classes"):
      if getattr(self, f) < 1:
        raise DataError(f"tfds_video: config.data.{f}={getattr(self, f)} must be >= 1.")
    if self.seed < 0:
      raise DataError(f"tfds_video: config.data.seed={self.seed} must be >= 0.")
    parse_tfds_name(self.tfds_name)

  @property
  def clip_shape(self) -> Tuple[int, int, int, int]:
    return (self.num_frames, self.image_size, self.image_size, 3)

  @property
  def span(self) -> int:
    """Frames of the video a clip covers, first to last taken."""
    return (self.num_frames - 1) * self.frame_stride + 1


def parse_tfds_name(tfds_name: str) -> Tuple[str, Optional[str], Optional[str]]:
  """``"ucf101/ucf101_1_256:2.0.0"`` -> ``("ucf101", "ucf101_1_256", "2.0.0")`` (config
  and version None when left out)."""
  m = _NAME_RE.match(tfds_name)
  if not m:
    raise DataError(f"tfds_video: config.data.tfds_name={tfds_name!r} is not a TFDS "
                    "builder name; use 'name[/config][:version]', e.g. "
                    f"{DEFAULT_TFDS_NAME!r}.")
  return m.group(1), m.group(2), m.group(3)


# ---------------------------------------------------------------------------------------
# Clips: which frames, and the pixels.

def clip_start(num_video_frames: int, settings: ClipSettings, train: bool,
               index: int) -> int:
  """First frame of example ``index``'s clip: drawn from ``(seed, index)`` for train,
  the middle clip otherwise; 0 when the video is shorter than the clip."""
  room = max(num_video_frames - settings.span, 0)
  if not train:
    return room // 2
  return int(np.random.default_rng((settings.seed, int(index))).integers(room + 1))


def clip_indices(num_video_frames: int, start: int, num_frames: int,
                 stride: int) -> np.ndarray:
  """The frames a clip takes: every ``stride``-th from ``start``, the last frame
  repeated past the end of the video."""
  return np.minimum(start + stride * np.arange(num_frames), num_video_frames - 1)


def decode_frame(data: bytes) -> np.ndarray:
  """An encoded frame (PNG, JPEG, ...) -> uint8 (H, W, 3)."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def take_frames(video, indices: np.ndarray) -> np.ndarray:
  """uint8 (len(indices), H, W, 3): frames ``indices`` of a video given as a uint8
  array (T, H, W[, C]) or as a sequence of encoded frames (bytes; each decoded once)."""
  if isinstance(video, np.ndarray) and video.dtype != np.object_:
    if video.dtype != np.uint8 or video.ndim not in (3, 4):
      raise DataError(f"tfds_video: a video feature stored as an array must be uint8 "
                      f"(T, H, W, C); this one is {video.dtype} {video.shape}.")
    frames = video[indices]
    if frames.ndim == 3:
      frames = frames[..., None]
  else:
    unique, inverse = np.unique(indices, return_inverse=True)
    decoded = [decode_frame(video[int(i)]) for i in unique]
    if len({f.shape for f in decoded}) > 1:
      raise DataError(f"tfds_video: the frames of a video differ in size "
                      f"({sorted({f.shape for f in decoded})}).")
    frames = np.stack(decoded)[inverse.reshape(-1)]
  channels = frames.shape[-1]
  if channels == 1:
    return np.repeat(frames, 3, axis=-1)
  if channels != 3:
    raise DataError(f"tfds_video: frames must have 1 or 3 channels, not {channels}.")
  return frames


def center_square(frames: np.ndarray) -> np.ndarray:
  """(T, H, W, C) -> (T, s, s, C), s = min(H, W): the central square of every frame."""
  h, w = frames.shape[1:3]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return frames[:, top:top + s, left:left + s]


def resize_square(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 (T, s, s, C) -> uint8 (T, size, size, C): area averaging when shrinking
  (an integer factor k: the k x k means; otherwise `moving_fmnist.box_resize`'s exact
  area weights), PIL bilinear when enlarging; rounded to the nearest integer."""
  t, s, _, c = frames.shape
  if s == size:
    return frames
  if s < size:
    return np.stack([np.asarray(Image.fromarray(f[..., 0] if c == 1 else f).resize(
        (size, size), Image.BILINEAR)).reshape(size, size, c) for f in frames])
  if s % size == 0:
    k = s // size
    mean = frames.reshape(t, size, k, size, k, c).mean(axis=(2, 4), dtype=np.float32)
    return np.clip(np.round(mean), 0, 255).astype(np.uint8)
  planes = frames.transpose(0, 3, 1, 2).reshape(t * c, s, s)
  return box_resize(planes, size).reshape(t, c, size, size).transpose(0, 2, 3, 1)


def make_clip(video, settings: ClipSettings, train: bool, index: int) -> np.ndarray:
  """Example ``index``'s clip, uint8 (num_frames, image_size, image_size, 3), of a
  video (a uint8 array or a sequence of encoded frames)."""
  n = len(video)
  if n == 0:
    raise DataError(f"tfds_video: example {index} has a video with no frames.")
  start = clip_start(n, settings, train, index)
  frames = take_frames(video, clip_indices(n, start, settings.num_frames,
                                           settings.frame_stride))
  return resize_square(center_square(frames), settings.image_size)


# ---------------------------------------------------------------------------------------
# The prepared builder, read without TensorFlow.

def prepare_command(tfds_name: str, data_dir: str) -> str:
  """The command that prepares ``tfds_name`` into ``data_dir`` (needs TensorFlow)."""
  return ("python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder('{tfds_name}', data_dir='{data_dir}', "
          "file_format='array_record').download_and_prepare()\"")


def _not_prepared(settings: ClipSettings, data_dir: str, what: str) -> DataError:
  return DataError(
      f"tfds_video: {what}. Nothing is downloaded or prepared at run time here: prepare "
      "it once on a machine with TensorFlow and tensorflow-datasets (and ffmpeg, which "
      "TFDS uses to split videos into frames), in the array_record format:  "
      f"{prepare_command(settings.tfds_name, data_dir)}  then copy that data dir here "
      "(or set config.data.data_dir, or $JAXGEN_DATA_DIR, to it). For Kinetics or "
      "another video set, prepare your own TFDS builder whose examples have a video "
      f"feature (config.data.video_key={settings.video_key!r}) and an integer label "
      f"(config.data.label_key={settings.label_key!r}), and name it in "
      "config.data.tfds_name.")


def find_builder_dir(data_dir: str, settings: ClipSettings) -> str:
  """``<data_dir>/<name>[/<config>]/<version>`` of a prepared builder (its version, or
  the newest prepared one); a DataError saying how to prepare it when there is none."""
  name, config, version = parse_tfds_name(settings.tfds_name)
  root = os.path.join(data_dir, name, *([config] if config else []))
  prepared = sorted((v for v in (os.listdir(root) if os.path.isdir(root) else [])
                     if _VERSION_RE.match(v)
                     and os.path.isfile(os.path.join(root, v, _INFO_FILE))),
                    key=tfds.core.Version, reverse=True)
  if version is None and prepared:
    return os.path.join(root, prepared[0])
  if version in prepared:
    return os.path.join(root, version)
  where = os.path.join(root, version or "<version>")
  others = f" (it holds version(s) {', '.join(prepared)} of it)" if prepared else ""
  raise _not_prepared(settings, data_dir, f"{settings.tfds_name!r} is not prepared in "
                      f"config.data.data_dir={data_dir!r}: no {where}/{_INFO_FILE}"
                      f"{others}")


@dataclasses.dataclass
class OpenedBuilder:
  """A prepared builder opened by `open_builder`."""
  builder: tfds.core.DatasetBuilder
  builder_dir: str
  encoded_frames: bool        # the video is a sequence of encoded frames (TFDS Video)
  num_classes: Optional[int]  # of a ClassLabel label; None for a plain integer
  class_names: Optional[List[str]]


def _feature_class(proto) -> str:
  return proto.python_class_name.rsplit(".", 1)[-1]


def _is_encoded_frames(proto) -> bool:
  """Whether a feature proto is a TFDS Video, or a Sequence of Image (the same bytes)."""
  kind = proto.WhichOneof("content")
  if kind == "video" or _feature_class(proto) == "Video":
    return True
  return kind == "sequence" and proto.sequence.feature.WhichOneof("content") == "image"


def open_builder(builder_dir: str, settings: ClipSettings, data_dir: str) -> OpenedBuilder:
  """Opens a prepared builder directory without TensorFlow: only its video and label
  features, a TFDS ``Video`` read as its sequence of encoded frames (module
  docstring)."""
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import dataset_info  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.proto import feature_pb2  # pylint: disable=g-import-not-at-top
  info = dataset_info.read_proto_from_builder_dir(builder_dir)
  formats = {info.file_format, *info.alternative_file_formats}
  if "array_record" not in formats:
    raise _not_prepared(settings, data_dir,
                        f"{builder_dir} holds {', '.join(sorted(formats))} files, which "
                        "need TensorFlow to read; it must be prepared as array_record")
  if info.HasField("features"):
    proto = info.features
  else:
    with open(os.path.join(builder_dir, "features.json")) as f:
      proto = json_format.ParseDict(json.load(f), feature_pb2.Feature(),
                                    ignore_unknown_fields=True)
  features = dict(proto.features_dict.features) if proto.HasField("features_dict") else {}
  for field, key in (("video_key", settings.video_key), ("label_key", settings.label_key)):
    if key not in features:
      raise DataError(f"tfds_video: {builder_dir} has no feature {key!r} "
                      f"(config.data.{field}); its features are "
                      f"{', '.join(sorted(features)) or 'none'}. Set config.data.{field} "
                      "to one of them.")
  video_proto, label_proto = features[settings.video_key], features[settings.label_key]
  encoded = _is_encoded_frames(video_proto)
  try:
    video = (tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_))
             if encoded else tfds.features.FeatureConnector.from_proto(video_proto))
    label = tfds.features.FeatureConnector.from_proto(label_proto)
  except ImportError as e:  # a feature whose connector needs TensorFlow
    raise DataError(f"tfds_video: the features {settings.video_key!r} "
                    f"({_feature_class(video_proto)}) and {settings.label_key!r} "
                    f"({_feature_class(label_proto)}) of {builder_dir} cannot be read "
                    f"without TensorFlow ({e}). Store the video as a TFDS Video or a uint8 "
                    "Tensor (T, H, W, C) and the label as a ClassLabel or an integer "
                    "Scalar.") from None
  info.features.CopyFrom(tfds.features.FeaturesDict(
      {settings.video_key: video, settings.label_key: label}).to_proto())
  builder = read_only_builder.ReadOnlyBuilder(builder_dir, info_proto=info,
                                              file_format="array_record")
  label = builder.info.features[settings.label_key]  # with the names (labels.txt)
  names = getattr(label, "names", None)
  return OpenedBuilder(builder=builder, builder_dir=builder_dir, encoded_frames=encoded,
                       num_classes=getattr(label, "num_classes", None),
                       class_names=list(names) if names else None)


class ClipSource(datasets.ExtendedSource):
  """A split's examples as clips: ``image`` uint8 (T, S, S, 3) and ``label`` (int);
  read failures become one DataError naming the prepared directory. Pickled (for
  worker processes) without its TFDS source, which it opens again with `open_builder`:
  TFDS would rebuild that one from features.json, whose Video needs TensorFlow."""

  def __init__(self, base, settings: ClipSettings, train: bool, builder_dir: str,
               split: str, data_dir: str):
    self._base, self._settings, self._train = base, settings, train
    self._builder_dir, self._split, self._data_dir = builder_dir, split, data_dir

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_base"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    opened = open_builder(self._builder_dir, self._settings, self._data_dir)
    self._base = opened.builder.as_data_source(split=self._split)

  def _add(self, example, index: int):
    s = self._settings
    return {"image": make_clip(example[s.video_key], s, self._train, index),
            "label": int(example[s.label_key])}

  def _read(self, read, arg):
    try:
      return read(arg)
    except (RuntimeError, OSError, ValueError) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(
          f"tfds_video: the {self._split!r} split of {self._builder_dir} cannot be read "
          f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}). Its "
          "files are damaged or incomplete: delete that directory and prepare it again "
          "where TensorFlow is (config.data.tfds_name's `download_and_prepare`, "
          "file_format='array_record').") from None

  def __getitem__(self, index):
    return self._read(super().__getitem__, index)

  def __getitems__(self, indices):
    return self._read(super().__getitems__, indices)


# ---------------------------------------------------------------------------------------
# The registered dataset.

def _ucf101_split_number(settings: ClipSettings) -> Optional[int]:
  name, config, _ = parse_tfds_name(settings.tfds_name)
  m = re.match(r"^ucf101_(\d)", config or "ucf101_1")
  return int(m.group(1)) if name == "ucf101" and m else None


def ucf101_class_names() -> Tuple[str, ...]:
  """UCF-101's 101 action names in TFDS's label order (the file TFDS ships)."""
  with open(tfds.core.tfds_path("video/ucf101_labels.txt")) as f:
    return tuple(line.strip() for line in f if line.strip())


def described_classes(settings: ClipSettings) -> Sequence[str]:
  if _ucf101_split_number(settings) is not None and settings.num_classes == 101:
    return ucf101_class_names()
  return tuple(map(str, range(settings.num_classes)))


@registry.DATASETS.register("tfds_video")
class TfdsVideoDataset(datasets.Dataset):
  """Clips of a prepared TFDS video builder (see the module docstring)."""

  def describe(self, data_cfg) -> datasets.DatasetSpec:
    s = ClipSettings.from_config(data_cfg)
    split_number = _ucf101_split_number(s)
    return datasets.DatasetSpec(
        name="tfds_video", image_shape=s.clip_shape, num_classes=s.num_classes,
        class_names=described_classes(s),
        splits=dict(UCF101_SPLITS.get(split_number, {})),
        source=datasets._no_source)  # pylint: disable=protected-access

  def load(self, data_cfg) -> datasets.DatasetSpec:
    s = ClipSettings.from_config(data_cfg)
    data_dir = data_cfg.get("data_dir") or datasets.default_data_dir()
    opened = open_builder(find_builder_dir(data_dir, s), s, data_dir)
    builder = opened.builder
    if opened.num_classes is not None and opened.num_classes != s.num_classes:
      raise DataError(f"tfds_video: the label {s.label_key!r} of {opened.builder_dir} has "
                      f"{opened.num_classes} classes, config.data.num_classes="
                      f"{s.num_classes}; set config.data.num_classes={opened.num_classes} "
                      "(jaxgen info and sampling without the data read it).")
    spec = self.describe(data_cfg)
    if opened.class_names:
      spec.class_names = tuple(opened.class_names)
    spec.splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    sources: Dict[str, ClipSource] = {}

    def source(split: str):
      if split not in sources:
        if split not in builder.info.splits:
          raise DataError(f"tfds_video: {s.tfds_name} has no split {split!r}; it has "
                          f"{', '.join(builder.info.splits)}. Set config.data.train_split "
                          "/ eval_split to them.")
        sources[split] = ClipSource(builder.as_data_source(split=split), s,
                                    train=split == s.train_split,
                                    builder_dir=opened.builder_dir, split=split,
                                    data_dir=data_dir)
      return sources[split]

    spec.source = source
    return spec
