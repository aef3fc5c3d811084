"""Clips of a prepared TFDS video builder (jaxgen.data.tfds_video), on a tiny fake
builder prepared here in array_record, without TensorFlow.

``tfds.features.Video`` needs TensorFlow to be constructed, so the fake "png" builder
writes what a Video stores (a sequence of encoded frames: PNG bytes) and its
features.json is then rewritten to declare a TFDS Video, as a prepared UCF-101's does.
The "array" builder stores uint8 Tensors under other keys (a Kinetics-style builder of
one's own) beside a feature that is not read. Pixels say where they come from: red is
8 x the frame index, green 10 x the video index; blue is noise (the resize check).
"""

import io
import json
import os
import pickle
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from google.protobuf import json_format
from PIL import Image
from tensorflow_datasets.core.proto import feature_pb2

from jaxgen.data import datasets, pipeline
from jaxgen.data import tfds_video as tv
from jaxgen.errors import DataError

H, W = 20, 24
NAMES = ["apply", "bake", "cycle"]
LENGTHS = {"train": [12, 20, 3, 30, 9, 16], "test": [10, 2, 15]}
FIRST = {"train": 0, "test": 10}  # video index of a split's first video


def _video(v: int, n: int) -> np.ndarray:
  """Video ``v``: (n, H, W, 3) uint8."""
  out = np.empty((n, H, W, 3), np.uint8)
  out[..., 0] = 8 * np.arange(n)[:, None, None]
  out[..., 1] = 10 * v
  out[..., 2] = np.random.default_rng(v).integers(0, 256, (n, H, W))
  return out


def _png(frame: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="PNG")
  return buf.getvalue()


class _FakeVideos(tfds.core.GeneratorBasedBuilder):
  name = "jaxgen_test_videos"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="png"),
                     tfds.core.BuilderConfig(name="array")]

  def _info(self):
    if self.builder_config.name == "png":
      features = {"video": tfds.features.Sequence(tfds.features.Tensor(shape=(),
                                                                       dtype=np.object_)),
                  "label": tfds.features.ClassLabel(names=NAMES)}
    else:
      features = {"frames": tfds.features.Tensor(shape=(None, H, W, 3), dtype=np.uint8,
                                                 encoding=tfds.features.Encoding.ZLIB),
                  "action": tfds.features.ClassLabel(names=NAMES),
                  "clip_id": tfds.features.Text()}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in LENGTHS}

  def _generate_examples(self, split):
    for i, n in enumerate(LENGTHS[split]):
      v = FIRST[split] + i
      video, label = _video(v, n), v % 3
      if self.builder_config.name == "png":
        yield i, {"video": [_png(f) for f in video], "label": label}
      else:
        yield i, {"frames": video, "action": label, "clip_id": f"v{v}"}


def _declare_video(builder_dir: str) -> None:
  """features.json's "video" becomes a TFDS Video of PNG frames (ucf101's: JPEG)."""
  path = os.path.join(builder_dir, "features.json")
  with open(path) as f:
    features = json.load(f)
  features["featuresDict"]["features"]["video"] = json_format.MessageToDict(
      feature_pb2.Feature(
          python_class_name="tensorflow_datasets.core.features.video_feature.Video",
          video=feature_pb2.VideoFeature(shape=feature_pb2.Shape(dimensions=[-1, H, W, 3]),
                                         dtype="uint8", encoding_format="png")))
  with open(path, "w") as f:
    json.dump(features, f)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds_videos"))
  for config in ("png", "array"):
    builder = _FakeVideos(config=config, data_dir=d, file_format="array_record")
    builder.download_and_prepare()
  _declare_video(os.path.join(d, "jaxgen_test_videos", "png", "1.0.0"))
  return d


def _cfg(data_dir, **fields):
  base = dict(name="tfds_video", data_dir=data_dir, tfds_name="jaxgen_test_videos/png:1.0.0",
              num_frames=4, frame_stride=2, image_size=10, num_classes=3, seed=0)
  return ml_collections.ConfigDict({**base, **fields})


def _area_reference(frame: np.ndarray, size: int) -> np.ndarray:
  """The central square of (H, W, C) resized by exact area weights (float64)."""
  s = min(frame.shape[:2])
  top, left = (frame.shape[0] - s) // 2, (frame.shape[1] - s) // 2
  sq = frame[top:top + s, left:left + s].astype(np.float64)
  e = np.arange(size + 1) * s / size
  a = np.array([[max(0.0, min(e[i + 1], j + 1) - max(e[i], j)) for j in range(s)]
                for i in range(size)]) * size / s
  return np.einsum("ij,jkc,lk->ilc", a, sq, a)


def _frames_and_video(clip):
  """(frame indices, video index) that a clip's red and green channels record."""
  assert (clip[..., 0] == clip[:, :1, :1, 0]).all() and (clip[..., 1] == clip[0, 0, 0, 1]).all()
  return list(clip[:, 0, 0, 0] // 8), int(clip[0, 0, 0, 1]) // 10


def test_clips_of_a_tfds_video_builder(video_dir):
  spec = datasets.get_dataset(_cfg(video_dir))
  assert spec.image_shape == (4, 10, 10, 3) and spec.is_video and spec.num_classes == 3
  assert list(spec.class_names) == NAMES and spec.splits == {"train": 6, "test": 3}
  # Eval: the middle clip (span 7); the 2-frame video repeats its last frame.
  test = spec.source("test")
  expected = {0: [1, 3, 5, 7], 1: [0, 1, 1, 1], 2: [4, 6, 8, 10]}
  for i, frames in expected.items():
    ex = test[i]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (4, 10, 10, 3)
    assert _frames_and_video(ex["image"]) == (frames, 10 + i) and ex["label"] == (10 + i) % 3
  # Centre crop (20x24 -> 20x20) and 2x2 area means, against NumPy.
  video = _video(10, 10)
  for k, t in enumerate(expected[0]):
    np.testing.assert_array_equal(test[0]["image"][k],
                                  np.round(_area_reference(video[t], 10)))
  # Train: a start drawn from (seed, index), the same every time; the 3-frame video
  # starts at 0 and repeats its last frame.
  train = spec.source("train")
  clips = train.__getitems__(list(range(6)))
  for i, (n, ex) in enumerate(zip(LENGTHS["train"], clips)):
    frames, v = _frames_and_video(ex["image"])
    start = np.random.default_rng((0, i)).integers(max(n - 7, 0) + 1)
    assert v == i and frames == [min(start + 2 * k, n - 1) for k in range(4)], (i, frames)
    np.testing.assert_array_equal(train[i]["image"], ex["image"])
  assert _frames_and_video(clips[2]["image"])[0] == [0, 2, 2, 2]
  # Starts vary over indices and with the seed.
  settings = tv.ClipSettings.from_config(_cfg(video_dir))
  assert len({tv.clip_start(100, settings, True, i) for i in range(40)}) > 20
  other = datasets.get_dataset(_cfg(video_dir, seed=1)).source("train")
  assert any(not np.array_equal(other[i]["image"], clips[i]["image"]) for i in (1, 3, 5))
  # A pickled source (grain's worker processes) opens the builder again, without TF.
  again = pickle.loads(pickle.dumps(train))
  np.testing.assert_array_equal(again[3]["image"], clips[3]["image"])
  # Stride 1 takes consecutive frames.
  one = datasets.get_dataset(_cfg(video_dir, frame_stride=1)).source("test")
  assert _frames_and_video(one[2]["image"])[0] == [5, 6, 7, 8]


def test_resize_to_non_integer_factors_and_up():
  video = _video(3, 5)
  settings = tv.ClipSettings(num_frames=3, frame_stride=1, image_size=8)
  clip = tv.make_clip(video, settings, train=False, index=0)   # frames 1, 2, 3
  ref = np.stack([_area_reference(video[t], 8) for t in (1, 2, 3)])
  assert clip.shape == (3, 8, 8, 3) and np.abs(clip - ref).max() <= 0.5 + 1e-3
  big = tv.make_clip(video, tv.ClipSettings(num_frames=2, image_size=32), False, 0)
  assert big.shape == (2, 32, 32, 3) and (big[..., 1] == 30).all()
  grey = tv.make_clip(video[..., :1], tv.ClipSettings(num_frames=2, image_size=10), False, 0)
  assert grey.shape == (2, 10, 10, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_uint8_tensor_videos_under_other_keys_and_the_pipeline(video_dir):
  cfg = _cfg(video_dir, tfds_name="jaxgen_test_videos/array", video_key="frames",
             label_key="action")
  spec = datasets.get_dataset(cfg)
  assert list(spec.class_names) == NAMES and spec.splits == {"train": 6, "test": 3}
  png = datasets.get_dataset(_cfg(video_dir)).source("train")
  for i in range(3):  # the same clips as the PNG builder's, label from "action"
    ex = spec.source("train")[i]
    np.testing.assert_array_equal(ex["image"], png[i]["image"])
    assert set(ex) == {"image", "label"} and ex["label"] == i % 3
  batch = next(iter(pipeline.train_dataset(spec, split="train", pp="scale(-1, 1)",
                                           batch_size=4, seed=0)))
  assert batch["image"].shape == (4, 4, 10, 10, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (4,)
  vids, labels = datasets.load_arrays(spec, "test")
  assert vids.shape == (3, 4, 10, 10, 3) and list(labels) == [1, 2, 0]


def test_describe_and_what_is_wrong(video_dir, tmp_path):
  spec = datasets.describe(ml_collections.ConfigDict(dict(name="tfds_video")))
  assert spec.image_shape == (16, 64, 64, 3) and spec.num_classes == 101
  assert spec.class_names[0] == "ApplyEyeMakeup" and len(spec.class_names) == 101
  assert spec.splits == {"train": 9537, "test": 3783} and not datasets.has_data(spec)
  k400 = datasets.describe(_cfg("", tfds_name="kinetics400/k:1.0.0", num_classes=400,
                                image_size=0))
  assert k400.image_shape == (4, 64, 64, 3) and k400.class_names[399] == "399"
  empty = str(tmp_path / "empty")
  with pytest.raises(DataError) as e:
    datasets.get_dataset(_cfg(empty, tfds_name="ucf101/ucf101_1_256:2.0.0"))
  msg = str(e.value)
  for part in ("'ucf101/ucf101_1_256:2.0.0' is not prepared", "Nothing is downloaded",
               "tfds.builder('ucf101/ucf101_1_256:2.0.0', data_dir='" + empty + "', "
               "file_format='array_record').download_and_prepare()", "TensorFlow",
               "config.data.video_key='video'"):
    assert part in msg, (part, msg)
  with pytest.raises(DataError, match=r"holds version\(s\) 1.0.0"):
    datasets.get_dataset(_cfg(video_dir, tfds_name="jaxgen_test_videos/png:2.0.0"))
  assert datasets.get_dataset(_cfg(video_dir, tfds_name="jaxgen_test_videos/png")).splits
  spec = datasets.get_dataset(_cfg(video_dir))
  with pytest.raises(DataError, match="no split 'validation'; it has train, test"):
    spec.source("validation")
  with pytest.raises(DataError, match="no feature 'frames'.*label, video"):
    datasets.get_dataset(_cfg(video_dir, video_key="frames"))
  with pytest.raises(DataError, match="has 3 classes.*num_classes=3"):
    datasets.get_dataset(_cfg(video_dir, num_classes=101))
  with pytest.raises(DataError, match="frame_stride"):
    datasets.describe(_cfg(video_dir, frame_stride=0))
  with pytest.raises(DataError, match="not a TFDS builder name"):
    datasets.describe(_cfg(video_dir, tfds_name="a/b/c"))
  # A damaged copy: one DataError naming the directory; TFRecord files: prepare again.
  copy = str(tmp_path / "copy")
  shutil.copytree(os.path.join(video_dir, "jaxgen_test_videos", "png"),
                  os.path.join(copy, "jaxgen_test_videos", "png"))
  bdir = os.path.join(copy, "jaxgen_test_videos", "png", "1.0.0")
  shard = os.path.join(bdir, "jaxgen_test_videos-train.array_record-00000-of-00001")
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(DataError, match=f"'train' split of {bdir} cannot be read"):
    datasets.get_dataset(_cfg(copy)).source("train")[5]
  info_path = os.path.join(bdir, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  with open(info_path, "w") as f:
    json.dump({**info, "fileFormat": "tfrecord"}, f)
  with pytest.raises(DataError, match="holds tfrecord files.*file_format='array_record'"):
    datasets.get_dataset(_cfg(copy))
