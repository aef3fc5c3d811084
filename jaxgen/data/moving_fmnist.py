"""Moving Fashion-MNIST: short grey videos of 1-2 Fashion-MNIST objects that move with
constant velocity and bounce off the walls of a square canvas (Srivastava et al.'s
Moving MNIST, with Fashion-MNIST's garments, class and motion labels, and captions).

Generated deterministically from ``config.data.seed`` by a vectorised NumPy generator
(`generate`, `iter_chunks`) and prepared once as a TFDS builder that needs no
TensorFlow (array_record, read with ``as_data_source``). The train split moves objects
of Fashion-MNIST's train split, the test split objects of its test split.

Motion. Object ``k`` of a video is an ``object_size`` square (the 28x28 image
box-resized) whose top-left corner starts at an integer position and moves by an
integer velocity ``speed * step(direction)`` per frame, ``speed`` in ``1..max_speed``
and ``direction`` one of the 8 compass directions of `DIRECTIONS` (``step`` is
(dy, dx) in {-1, 0, 1}^2; image rows grow downwards, so "up" is dy = -1; a diagonal
moves ``speed`` pixels along both axes). Each coordinate moves freely on the line and
is folded into ``[0, L]``, ``L = canvas - object_size`` (a triangle wave: a reflection
at each wall), so objects always lie wholly inside the canvas. The start is drawn so
that the first step does not reflect: the labelled direction is the motion between the
first two frames. Objects are combined with ``max`` (the brighter pixel wins).

Examples (as stored): ``image`` uint8 (T, H, W, 1), a video under the same key as an
image so that the pipeline, the preprocessing ops and ``DatasetSpec.image_shape`` stay
generic (a spec is a video one when ``image_shape`` has 4 axes); ``label`` the class of
the first object; ``num_objects``; per object slot (``max_objects`` of them, -1 where
there is no object) ``classes``, ``directions`` (indices into `DIRECTIONS`) and
``positions`` int32 (K, T, 2), each frame's top-left corner (y, x); ``caption_short``
("a sandal moving left") and ``caption_detailed`` (every object, its direction and
speed, the walls it bounces off). The dataset's source gives ``image`` and ``label``,
the captions when ``config.data.pp`` applies ``choose_caption`` (as for other captioned
data), and the motion labels when ``config.data.motion_labels`` is True: a jitted step
takes exactly the fields of its example batch, and strings none.

Labels (``config.data.label``): ``"class"`` (the default: the first object's class,
10 classes) or ``"class_direction"`` (the first object's class and direction as one
label ``class * 8 + direction``, 80 classes named "sandal moving left": a
class-conditional run then generates a given garment moving a given way, and the
evaluation reads both back with `split_label`). Not a generation setting: the prepared
data are the same.

Settings (``config.data``): ``image_size`` (the canvas side; 0 = 32), ``num_frames``
(8), ``max_objects`` (2), ``object_size`` (14), ``max_speed`` (3), ``num_train``
(20000), ``num_test`` (2000), ``seed`` (0). They name the TFDS builder config
(`Settings.name`), so data of other settings never shares a prepared directory.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional

import numpy as np
import tensorflow_datasets as tfds

from jaxgen import registry
from jaxgen.data import captions, datasets
from jaxgen.data.idx import DataError

# The 8 compass directions, counter-clockwise from "right", and their (dy, dx) steps.
DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down",
              "down-right")
STEPS = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)],
                 np.int64)
SPLITS = ("train", "test")
LABELS = ("class", "class_direction")
_CHUNK = 1024  # videos rendered at once: bounds the temporaries (~ 2 x 8 MiB per 1k)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a Moving Fashion-MNIST dataset is made of (see the module docstring)."""
  canvas_size: int = 32
  num_frames: int = 8
  max_objects: int = 2
  object_size: int = 14
  max_speed: int = 3
  num_train: int = 20000
  num_test: int = 2000
  seed: int = 0

  @classmethod
  def from_config(cls, data_cfg) -> "Settings":
    """The settings of ``config.data`` (``.get`` with the defaults), checked."""
    d = cls()
    s = cls(canvas_size=int(data_cfg.get("image_size") or d.canvas_size),
            **{f: int(data_cfg.get(f, getattr(d, f))) for f in
               ("num_frames", "max_objects", "object_size", "max_speed", "num_train",
                "num_test", "seed")})
    s.check()
    return s

  def check(self) -> None:
    def bad(field, why):
      raise DataError(f"moving_fashion_mnist: config.data.{field}={getattr(self, field)} "
                      f"{why}.")
    for f in ("num_frames", "max_objects", "max_speed", "num_train", "num_test"):
      if getattr(self, f) < 1:
        bad(f, "must be >= 1")
    if self.seed < 0:
      bad("seed", "must be >= 0")
    if not 2 <= self.object_size <= 28:
      bad("object_size", "must lie in [2, 28] (the 28x28 images are box-resized to it)")
    if self.canvas_size <= self.object_size:
      raise DataError(f"moving_fashion_mnist: the canvas (config.data.image_size="
                      f"{self.canvas_size}) must be larger than config.data.object_size="
                      f"{self.object_size} for objects to move; enlarge it or shrink the "
                      "objects.")
    if self.max_speed > self.travel:
      bad("max_speed", f"must be at most canvas - object_size = {self.travel} (one wall "
                       "per step at most); lower it or enlarge config.data.image_size")

  @property
  def travel(self) -> int:
    """``L``: the largest top-left coordinate of an object."""
    return self.canvas_size - self.object_size

  @property
  def name(self) -> str:
    """The TFDS builder config's name: every setting, so prepared dirs never mix."""
    return (f"c{self.canvas_size}_t{self.num_frames}_k{self.max_objects}_o{self.object_size}"
            f"_v{self.max_speed}_n{self.num_train}-{self.num_test}_s{self.seed}")

  @property
  def video_shape(self):
    return (self.num_frames, self.canvas_size, self.canvas_size, 1)

  def size(self, split: str) -> int:
    return {"train": self.num_train, "test": self.num_test}[split]


# ---------------------------------------------------------------------------------------
# The generator.

def fold(z: np.ndarray, travel: int) -> np.ndarray:
  """Free-line coordinates folded into ``[0, travel]``: reflection at both walls."""
  m = np.mod(z, 2 * travel)
  return np.where(m <= travel, m, 2 * travel - m)


def box_resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, h, h) -> uint8 (N, size, size) by area averaging (each output pixel is the
  mean of the input area it covers; 28 -> 14 is the 2x2 mean), vectorised."""
  h = images.shape[-1]
  if size == h:
    return images
  edges = np.arange(size + 1) * (h / size)
  lo, hi = edges[:-1, None], edges[1:, None]
  j = np.arange(h)[None, :]
  a = (np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) * (size / h)
       ).astype(np.float32)  # (size, h): the share of input pixel j in output pixel i
  n = len(images)
  rows = images.astype(np.float32).reshape(n * h, h) @ a.T              # (N h, size)
  cols = rows.reshape(n, h, size).transpose(0, 2, 1).reshape(n * size, h) @ a.T
  out = cols.reshape(n, size, size).transpose(0, 2, 1)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def sample_motion(settings: Settings, split: str, num_source: int) -> Dict[str, np.ndarray]:
  """The random part of a split, drawn at once from ``(seed, split)``: int64 arrays
  ``num_objects`` (N,), ``source_index``, ``directions``, ``speeds`` (N, K), ``start``
  (N, K, 2) top-left (y, x), and ``caption_draws`` (N, 4K + 1) for the wording. Slots
  beyond ``num_objects`` are drawn too (and masked later), so the stream is fixed."""
  n, k, travel = settings.size(split), settings.max_objects, settings.travel
  rng = np.random.default_rng((settings.seed, SPLITS.index(split)))
  num_objects = rng.integers(1, k + 1, n)
  source_index = rng.integers(0, num_source, (n, k))
  directions = rng.integers(0, len(DIRECTIONS), (n, k))
  speeds = rng.integers(1, settings.max_speed + 1, (n, k))
  v = STEPS[directions] * speeds[..., None]                      # (N, K, 2)
  # The first step stays inside: v > 0 starts in [0, L - v], v < 0 in [-v, L].
  start = rng.integers(np.maximum(-v, 0), travel - np.maximum(v, 0) + 1)
  caption_draws = rng.integers(0, 1 << 30, (n, CAPTION_DRAWS_PER_OBJECT * k + 1))
  return dict(num_objects=num_objects, source_index=source_index, directions=directions,
              speeds=speeds, start=start, caption_draws=caption_draws)


def trajectories(start: np.ndarray, velocity: np.ndarray, num_frames: int,
                 travel: int) -> np.ndarray:
  """Top-left corners (..., T, 2) of objects starting at ``start`` (..., 2) with
  ``velocity`` (..., 2) per frame, bouncing in ``[0, travel]`` (closed form)."""
  t = np.arange(num_frames)[:, None]
  return fold(start[..., None, :] + velocity[..., None, :] * t, travel)


def render(objects: np.ndarray, positions: np.ndarray, present: np.ndarray,
           canvas_size: int) -> np.ndarray:
  """uint8 videos (N, T, H, W, 1): objects (N, K, s, s) uint8 placed with their top-left
  corners at ``positions`` (N, K, T, 2), absent ones (``present`` False) left out, and
  combined with max."""
  n, k, s, _ = objects.shape
  travel = canvas_size - s
  # Each object in the middle of a (H + L)^2 zero frame: the H x W window that starts
  # at (L - y, L - x) holds it at (y, x). Windows are views; indexing copies them.
  big = np.zeros((n, k, canvas_size + travel, canvas_size + travel), np.uint8)
  big[:, :, travel:travel + s, travel:travel + s] = objects * present[..., None, None]
  windows = np.lib.stride_tricks.sliding_window_view(big, (canvas_size, canvas_size),
                                                     axis=(2, 3))
  ni, ki = np.arange(n)[:, None, None], np.arange(k)[None, :, None]
  frames = windows[ni, ki, travel - positions[..., 0], travel - positions[..., 1]]
  return frames.max(axis=1)[..., None]                          # (N, T, H, W, 1)


def bounces(start: np.ndarray, velocity: np.ndarray, num_frames: int, travel: int):
  """The walls one object bounces off during the video, in order: a list of "top",
  "bottom", "left", "right". A wall touched in the last frame is no bounce (the
  reversal is not shown). ``start``, ``velocity``: (2,) ints (y, x)."""
  events = []
  for axis, walls in ((0, ("top", "bottom")), (1, ("left", "right"))):
    z0, v = int(start[axis]), int(velocity[axis])
    if v == 0:
      continue
    z1 = z0 + v * (num_frames - 1)
    lo, hi = min(z0, z1), max(z0, z1)
    # Walls sit at multiples of L on the free line: even ones at 0, odd ones at L.
    for m in range(lo // travel + 1, -(-hi // travel)):
      events.append(((m * travel - z0) / v, walls[m % 2]))
  return [w for _, w in sorted(events)]


_DIRECTION_PHRASES = {
    "right": ("to the right", "rightwards"), "left": ("to the left", "leftwards"),
    "up": ("upwards", "up"), "down": ("downwards", "down"),
    "up-right": ("up and to the right", "diagonally up-right"),
    "up-left": ("up and to the left", "diagonally up-left"),
    "down-right": ("down and to the right", "diagonally down-right"),
    "down-left": ("down and to the left", "diagonally down-left"),
}
_VERBS = ("moves", "glides", "slides", "travels")
_SPEED_WORDS = ("slowly", "steadily", "quickly")
CAPTION_DRAWS_PER_OBJECT = 4  # noun, verb, direction phrase, "without touching a wall"


def _speed_word(speed: int, max_speed: int) -> str:
  """slowly / steadily / quickly by thirds of the speed range ("" if one speed)."""
  if max_speed == 1:
    return ""
  return _SPEED_WORDS[int(round((speed - 1) * 2 / (max_speed - 1)))]


def make_captions(classes: np.ndarray, directions: np.ndarray, speeds: np.ndarray,
                  starts: np.ndarray, num_objects: int, draws: np.ndarray,
                  settings: Settings):
  """``(caption_short, caption_detailed)`` of one video: the short one names the first
  object and its direction ("a sandal moving left"); the detailed one every object,
  its direction, speed and the walls it bounces off, worded by ``draws``."""
  nouns = captions.FMNIST_NOUNS
  short = f"{captions.article(nouns[classes[0]][0])} moving {DIRECTIONS[directions[0]]}"
  parts = []
  for k in range(num_objects):
    d_noun, d_verb, d_phrase, d_quiet = (int(x) for x in draws[
        CAPTION_DRAWS_PER_OBJECT * k:CAPTION_DRAWS_PER_OBJECT * (k + 1)])
    choices = nouns[classes[k]]
    direction = DIRECTIONS[directions[k]]
    words = [_VERBS[d_verb % len(_VERBS)], _speed_word(int(speeds[k]), settings.max_speed),
             _DIRECTION_PHRASES[direction][d_phrase % 2]]
    text = f"{captions.article(choices[d_noun % len(choices)])} {' '.join(filter(None, words))}"
    walls = bounces(starts[k], STEPS[directions[k]] * speeds[k], settings.num_frames,
                    settings.travel)
    if walls:
      text += (f", bouncing off the {captions.join_words(walls)} "
               f"wall{'s' if len(walls) > 1 else ''}")
    elif d_quiet % 2:
      text += " without touching a wall"
    parts.append(text)
  layout = int(draws[-1]) % 2
  if len(parts) == 1:
    detailed = ("on a black background, " if layout else "") + parts[0]
  elif layout:
    detailed = f"{len(parts)} objects: " + "; ".join(parts)
  else:
    detailed = ", while ".join(parts)
  return short, captions.as_sentence(detailed)


def iter_chunks(images: np.ndarray, labels: np.ndarray, settings: Settings, split: str,
                chunk: int = _CHUNK) -> Iterator[Dict[str, object]]:
  """The examples of ``split`` in order, ``chunk`` videos at a time: dicts of the stored
  fields (arrays with a leading batch axis; the captions as lists of str).

  Args:
    images: uint8 (M, 28, 28) objects of the split (Fashion-MNIST's same split).
    labels: their classes (M,).
    settings: what to make.
    split: "train" or "test" (the random stream).
  """
  if split not in SPLITS:
    raise DataError(f"moving_fashion_mnist has splits {SPLITS}, not {split!r}.")
  m = sample_motion(settings, split, len(images))
  n, k, t = settings.size(split), settings.max_objects, settings.num_frames
  present = np.arange(k)[None, :] < m["num_objects"][:, None]      # (N, K)
  velocity = STEPS[m["directions"]] * m["speeds"][..., None]
  positions = trajectories(m["start"], velocity, t, settings.travel)  # (N, K, T, 2)
  classes = np.where(present, np.asarray(labels, np.int64)[m["source_index"]], -1)
  directions = np.where(present, m["directions"], -1)
  for lo in range(0, n, chunk):
    sl = slice(lo, min(n, lo + chunk))
    objects = box_resize(images[m["source_index"][sl].reshape(-1)], settings.object_size)
    objects = objects.reshape(-1, k, settings.object_size, settings.object_size)
    video = render(objects, positions[sl], present[sl], settings.canvas_size)
    caps = [make_captions(classes[i], directions[i], m["speeds"][i], m["start"][i],
                          int(m["num_objects"][i]), m["caption_draws"][i], settings)
            for i in range(sl.start, sl.stop)]
    yield {"image": video,
           "label": classes[sl, 0],
           "num_objects": m["num_objects"][sl].astype(np.int32),
           "classes": classes[sl].astype(np.int32),
           "directions": directions[sl].astype(np.int32),
           "positions": np.where(present[sl, :, None, None], positions[sl], -1
                                 ).astype(np.int32),
           "caption_short": [c[0] for c in caps],
           "caption_detailed": [c[1] for c in caps]}


def generate(images: np.ndarray, labels: np.ndarray, settings: Settings,
             split: str) -> Dict[str, object]:
  """All examples of ``split`` at once (`iter_chunks`, concatenated)."""
  parts = list(iter_chunks(images, labels, settings, split))
  return {key: ([c for p in parts for c in p[key]] if isinstance(parts[0][key], list)
                else np.concatenate([p[key] for p in parts])) for key in parts[0]}


# ---------------------------------------------------------------------------------------
# The TFDS builder and the registered dataset.

class MovingFashionMnistConfig(tfds.core.BuilderConfig):
  """A builder config per `Settings` (its name is ``settings.name``)."""

  def __init__(self, settings: Settings):
    super().__init__(name=settings.name, description=f"Moving Fashion-MNIST, {settings}.")
    self.settings = settings


class MovingFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Moving Fashion-MNIST prepared from the Fashion-MNIST IDX files (found as for
  ``fashion_mnist``: ``source_dir``, $JAXGEN_FASHION_MNIST_DIR, the Debian package).
  Videos are stored as raw bytes (fast to write, no TensorFlow), in generation order."""

  name = "jaxgen_moving_fashion_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Generated from a seed; array_record, no TensorFlow."}
  BUILDER_CONFIGS = [MovingFashionMnistConfig(Settings())]  # others: made per settings

  def __init__(self, *, settings: Settings, source_dir: Optional[str] = None, **kwargs):
    self._source_dir = source_dir
    default = settings == Settings()  # the listed config (no "custom config" warning)
    super().__init__(config=settings.name if default else MovingFashionMnistConfig(settings),
                     **kwargs)

  @property
  def settings(self) -> Settings:
    return self.builder_config.settings

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.settings
    k, t = s.max_objects, s.num_frames
    return tfds.core.DatasetInfo(
        builder=self,
        description="Moving Fashion-MNIST: uint8 videos of bouncing Fashion-MNIST objects "
                    "with class and motion labels and captions.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=s.video_shape, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=datasets.FMNIST_CLASSES),
            "num_objects": tfds.features.Scalar(dtype=np.int32),
            "classes": tfds.features.Tensor(shape=(k,), dtype=np.int32),
            "directions": tfds.features.Tensor(shape=(k,), dtype=np.int32),
            "positions": tfds.features.Tensor(shape=(k, t, 2), dtype=np.int32),
            "caption_short": tfds.features.Text(),
            "caption_detailed": tfds.features.Text(),
        }),
        disable_shuffling=True,  # index i is the generator's video i
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    files = datasets.fmnist_files(self._source_dir, dl_manager)
    return {split: self._generate_examples(split, *files[split]) for split in SPLITS}

  def _generate_examples(self, split, images_path, labels_path):
    images, labels = datasets.read_fmnist(images_path, labels_path)
    i = 0
    for chunk in iter_chunks(images, labels, self.settings, split):
      for j in range(len(chunk["image"])):
        yield i, {key: value[j] for key, value in chunk.items()}
        i += 1


MOTION_FIELDS = ("num_objects", "classes", "directions", "positions")
CAPTION_FIELDS = ("caption_short", "caption_detailed")


class MovingSource(datasets.ExtendedSource):
  """A split's examples as ``image`` and ``label``, plus the captions (as str) and the
  motion labels where asked for."""

  def __init__(self, base, with_captions: bool, with_motion: bool,
               label: str = "class"):
    self._base = base
    self._keys = ("image", "label") + (MOTION_FIELDS if with_motion else ())
    self._captions = with_captions
    self._joint = label == "class_direction"

  def _add(self, example, index: int):
    del index
    out = {k: example[k] for k in self._keys}
    if self._joint:
      out["label"] = joint_label(example["label"],
                                 np.asarray(example["directions"]).reshape(-1)[0])
    if self._captions:
      for k in CAPTION_FIELDS:
        c = example[k]
        out[k] = c.decode("utf-8") if isinstance(c, bytes) else str(c)
    return out


def label_mode(data_cfg) -> str:
  """``config.data.label`` checked: one of `LABELS` (default ``"class"``)."""
  mode = data_cfg.get("label", "") or "class"
  if mode not in LABELS:
    raise DataError(f"moving_fashion_mnist: config.data.label={mode!r}; use one of "
                    f"{', '.join(LABELS)}.")
  return mode


def joint_label(cls, direction):
  """The ``"class_direction"`` label of a class and a direction index."""
  return np.asarray(cls) * len(DIRECTIONS) + np.asarray(direction)


def split_label(labels):
  """``(classes, directions)`` of ``"class_direction"`` labels; a label outside
  ``[0, 80)`` (-1, or 80: unconditional) gives -1 for both."""
  labels = np.asarray(labels)
  valid = (labels >= 0) & (labels < len(JOINT_CLASS_NAMES))
  return (np.where(valid, labels // len(DIRECTIONS), -1),
          np.where(valid, labels % len(DIRECTIONS), -1))


JOINT_CLASS_NAMES = tuple(f"{c} moving {d}" for c in datasets.FMNIST_CLASSES
                          for d in DIRECTIONS)


def _uses_captions(data_cfg) -> bool:
  return "choose_caption" in data_cfg.get("pp", "")


@registry.DATASETS.register("moving_fashion_mnist")
class MovingFashionMnistDataset(datasets.Dataset):
  """Moving Fashion-MNIST (see the module docstring), prepared into
  ``config.data.data_dir`` from the Fashion-MNIST IDX files."""

  def _check(self, data_cfg) -> Settings:
    settings = Settings.from_config(data_cfg)
    label_mode(data_cfg)
    pp = data_cfg.get("pp", "")
    if "flip_lr" in pp:
      raise DataError(f"config.data.pp={pp!r} flips videos left-right, which reverses the "
                      "motion that moving_fashion_mnist's direction labels and captions "
                      "describe; leave flip_lr out.")
    if _uses_captions(data_cfg):  # pp and detailed_ratio agree; the captions are built in
      captions.check_caption_config(dict(
          detailed_ratio=data_cfg.get("detailed_ratio", 0.0), pp=pp,
          captions_dir="<built in>"))
    return settings

  def describe(self, data_cfg) -> datasets.DatasetSpec:
    settings = self._check(data_cfg)
    joint = label_mode(data_cfg) == "class_direction"
    return datasets.DatasetSpec(
        name="moving_fashion_mnist", image_shape=settings.video_shape,
        num_classes=80 if joint else 10,
        class_names=JOINT_CLASS_NAMES if joint else datasets.FMNIST_CLASSES,
        splits={s: settings.size(s) for s in SPLITS},
        source=datasets._no_source,  # pylint: disable=protected-access
        has_captions=_uses_captions(data_cfg))

  def load(self, data_cfg) -> datasets.DatasetSpec:
    spec = self.describe(data_cfg)
    data_dir = data_cfg.get("data_dir") or datasets.default_data_dir()
    datasets.find_fmnist_source(data_cfg.get("source_dir"))  # a wrong path stops here
    builder = MovingFashionMnist(settings=Settings.from_config(data_cfg),
                                 source_dir=data_cfg.get("source_dir") or None,
                                 data_dir=data_dir, file_format="array_record")
    try:
      datasets.prepare_builder(builder)
    except OSError as e:
      raise DataError(f"Could not prepare moving_fashion_mnist in data dir {data_dir} "
                      f"({e}). Set config.data.data_dir (or $JAXGEN_DATA_DIR) to a writable "
                      "directory.") from None
    prepared = datasets._cached_sources(builder)  # pylint: disable=protected-access
    with_motion = bool(data_cfg.get("motion_labels", False))
    sources = {}

    def source(split: str):
      if split not in sources:
        sources[split] = MovingSource(prepared(split), spec.has_captions, with_motion,
                                      label_mode(data_cfg))
      return sources[split]

    spec.source = source
    return spec


def load_objects(data_cfg, split: str) -> List[np.ndarray]:
  """``[images (M, 28, 28), labels (M,)]`` of Fashion-MNIST's ``split`` from the local IDX
  files (``config.data.source_dir`` as for ``fashion_mnist``): what `generate` moves."""
  src = datasets.find_fmnist_source(data_cfg.get("source_dir"))
  if src is None:
    raise DataError("No local Fashion-MNIST files. " + datasets._FIX)  # pylint: disable=protected-access
  files = datasets.fmnist_files(src, dl_manager=None)
  return list(datasets.read_fmnist(*files[split]))
