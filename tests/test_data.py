"""Data: the no-TensorFlow TFDS builder, IDX checks, preprocessing ops, and the
grain pipeline's determinism, per-process split and resumable iterator state."""

import gzip
import os

import ml_collections
import numpy as np
import pytest

from jaxgen.data import datasets, pipeline, preprocess
from jaxgen.data.idx import DataError, read_idx

from helpers import synthetic_fmnist, write_idx


def _cfg(source_dir, data_dir):
  return ml_collections.ConfigDict(dict(name="fashion_mnist", source_dir=source_dir,
                                        data_dir=data_dir))


def test_builder_prepares_and_reads_back_exact_examples(fake_fmnist_dir, data_dir):
  spec = datasets.get_dataset(_cfg(fake_fmnist_dir, data_dir))
  assert spec.splits == {"train": 512, "test": 128}
  images, labels = datasets.load_arrays(spec, "train")
  assert images.shape == (512, 28, 28, 1) and images.dtype == np.uint8
  ref_images, ref_labels = synthetic_fmnist(512, 0)
  # TFDS shuffles record order; compare as sets of (image bytes, label).
  ours = sorted((im.tobytes(), int(l)) for im, l in zip(images[..., 0], labels))
  ref = sorted((im.tobytes(), int(l)) for im, l in zip(ref_images, ref_labels))
  assert ours == ref


def test_idx_errors_name_the_file(tmp_path):
  good = tmp_path / "x.gz"
  write_idx(str(good), np.zeros((4, 28, 28), np.uint8))
  raw = gzip.open(good).read()
  trunc = tmp_path / "trunc.gz"
  with gzip.open(trunc, "wb") as f:
    f.write(raw[:-100])
  with pytest.raises(DataError, match=f"{trunc}.*truncated"):
    read_idx(str(trunc), 3)
  notgz = tmp_path / "bad.gz"
  notgz.write_bytes(b"\x1f\x8bgarbage")
  with pytest.raises(DataError, match="bad.gz"):
    read_idx(str(notgz), 3)
  with pytest.raises(DataError, match="not an IDX file of 1 dimensions"):
    read_idx(str(good), 1)
  with pytest.raises(DataError, match="does not exist"):
    read_idx(str(tmp_path / "missing.gz"), 3)


def test_missing_source_dir_says_how_to_fix(tmp_path):
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
    datasets.get_dataset(_cfg(str(tmp_path / "nothing"), str(tmp_path / "tfds")))


def test_corrupt_source_file_is_reported(tmp_path, fake_fmnist_dir):
  src = tmp_path / "src"
  src.mkdir()
  for name in os.listdir(fake_fmnist_dir):
    data = open(os.path.join(fake_fmnist_dir, name), "rb").read()
    (src / name).write_bytes(data[:len(data) // 2] if "train-images" in name else data)
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
    datasets.get_dataset(_cfg(str(src), str(tmp_path / "tfds")))


def test_preprocess_ops_match_numpy():
  img = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28, 1).astype(np.uint8)
  ex = {"image": img, "label": 3}
  out = preprocess.parse("pad(32)|scale(-1, 1)")(ex, np.random.default_rng(0))
  ref = np.pad(img, ((2, 2), (2, 2), (0, 0))).astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(out["image"], ref, rtol=1e-6)
  flipped = preprocess.parse("flip_lr(1.0)")(ex, np.random.default_rng(0))
  np.testing.assert_array_equal(flipped["image"], img[:, ::-1])
  assert preprocess.parse("resize(14)")(ex, None)["image"].shape == (14, 14, 1)
  with pytest.raises(KeyError, match="Unknown preprocessing op 'pda'"):
    preprocess.parse("pda(32)")


def test_center_crop_keeps_the_central_square():
  # A 300x600 image with a distinct central 300x300 square: bicubic to 256x512, then
  # the central 256x256 is exactly that square's interior (constant value).
  img = np.zeros((300, 600, 3), np.uint8)
  img[:, 150:450] = 200
  out = preprocess.parse("center_crop(256)")({"image": img, "label": 0}, None)["image"]
  assert out.shape == (256, 256, 3)
  np.testing.assert_array_equal(out[:, 8:-8], 200)
  # Large images are box-downsampled first (ADM): 1200x1000 -> 600x500 -> 307x256.
  big = np.full((1200, 1000, 1), 7, np.uint8)
  assert preprocess.parse("center_crop(256)")({"image": big}, None)["image"].shape == (
      256, 256, 1)


def _ds(spec, **kw):
  args = dict(split="train", pp="scale(0, 1)", batch_size=16, seed=3)
  args.update(kw)
  return pipeline.train_dataset(spec, **args)


def test_pipeline_is_deterministic_and_resumable(fake_fmnist_dir, data_dir):
  spec = datasets.get_dataset(_cfg(fake_fmnist_dir, data_dir))
  a = iter(_ds(spec, pp="flip_lr|scale(0, 1)"))
  first = [next(a) for _ in range(5)]
  state = a.get_state()
  after = [next(a) for _ in range(40)]  # runs through more than one epoch (512/16=32)
  b = iter(_ds(spec, pp="flip_lr|scale(0, 1)"))
  for x, y in zip(first, [next(b) for _ in range(5)]):
    np.testing.assert_array_equal(x["image"], y["image"])
  c = iter(_ds(spec, pp="flip_lr|scale(0, 1)"))
  c.set_state(state)
  for x, y in zip(after, [next(c) for _ in range(40)]):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_epochs_are_reshuffled_and_complete(fake_fmnist_dir, data_dir):
  spec = datasets.get_dataset(_cfg(fake_fmnist_dir, data_dir))
  it = iter(_ds(spec, pp="keep('image', 'label')", batch_size=32))
  ep1 = np.concatenate([next(it)["image"] for _ in range(16)])
  ep2 = np.concatenate([next(it)["image"] for _ in range(16)])
  key = lambda e: sorted(x.tobytes() for x in e)
  assert key(ep1) == key(ep2)  # every example once per epoch
  assert not np.array_equal(ep1, ep2)  # in a new order


def test_processes_read_disjoint_shards(fake_fmnist_dir, data_dir):
  spec = datasets.get_dataset(_cfg(fake_fmnist_dir, data_dir))
  seen = []
  for p in range(2):
    it = iter(_ds(spec, pp="keep('image')", batch_size=32, process_index=p, process_count=2))
    seen.append({x.tobytes() for _ in range(8) for x in next(it)["image"]})
  assert len(seen[0]) == len(seen[1]) == 256
  assert not seen[0] & seen[1]


def test_batch_must_divide_over_processes_and_devices():
  with pytest.raises(DataError, match="does not divide over 3 processes"):
    pipeline.per_process_batch(8, 3, 1)
  with pytest.raises(DataError, match="8 data-parallel devices"):
    pipeline.per_process_batch(12, 1, 8)
  assert pipeline.per_process_batch(16, 2, 8) == 8
