"""Moving Fashion-MNIST (jaxgen.data.moving_fmnist), the video side of the
preprocessing ops, and GIF grids, on the synthetic Fashion-MNIST of conftest."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageSequence

from jaxgen import images
from jaxgen.data import caption_embeddings, captions, datasets, pipeline, preprocess
from jaxgen.data import moving_fmnist as mf
from jaxgen.errors import DataError

SMALL = mf.Settings(num_train=48, num_test=16, seed=3)


@pytest.fixture(scope="module")
def objects(fake_fmnist_dir):
  """split -> (images (M, 28, 28), labels) of the synthetic Fashion-MNIST."""
  return {s: mf.load_objects({"source_dir": fake_fmnist_dir}, s) for s in mf.SPLITS}


@pytest.fixture(scope="module")
def train(objects):
  return mf.generate(*objects["train"], SMALL, "train")


def _cfg(fake_fmnist_dir, data_dir, **fields):
  return ml_collections.ConfigDict(dict(name="moving_fashion_mnist", data_dir=data_dir,
                                        source_dir=fake_fmnist_dir, num_train=16,
                                        num_test=8, **fields))


def _loop_positions(start, velocity, num_frames, travel):
  """The reference: step and reflect at the walls, one frame at a time."""
  p, v, out = list(start), list(velocity), []
  for _ in range(num_frames):
    out.append(list(p))
    for a in range(2):
      p[a] += v[a]
      if p[a] < 0:
        p[a], v[a] = -p[a], -v[a]
      elif p[a] > travel:
        p[a], v[a] = 2 * travel - p[a], -v[a]
  return out


def test_same_seed_same_bytes_other_seed_other_videos(objects, train):
  again = mf.generate(*objects["train"], SMALL, "train")
  assert again["image"].tobytes() == train["image"].tobytes()
  assert again["caption_detailed"] == train["caption_detailed"]
  for k in ("classes", "directions", "positions", "num_objects"):
    np.testing.assert_array_equal(again[k], train[k])
  other = mf.generate(*objects["train"], mf.Settings(num_train=48, seed=4), "train")
  assert other["image"].tobytes() != train["image"].tobytes()
  # Rendering in chunks changes nothing.
  chunked = list(mf.iter_chunks(*objects["train"], SMALL, "train", chunk=5))
  assert np.concatenate([c["image"] for c in chunked]).tobytes() == train["image"].tobytes()


def test_layout_and_objects_inside_the_canvas(train):
  s = SMALL
  n, k, t = s.num_train, s.max_objects, s.num_frames
  assert train["image"].shape == (n, t, 32, 32, 1) and train["image"].dtype == np.uint8
  assert train["positions"].shape == (n, k, t, 2)
  present = np.arange(k) < train["num_objects"][:, None]
  assert set(train["num_objects"]) == {1, 2}
  pos = train["positions"][present]
  assert pos.min() >= 0 and pos.max() <= s.travel
  assert (train["positions"][~present] == -1).all() and (train["classes"][~present] == -1).all()
  np.testing.assert_array_equal(train["label"], train["classes"][:, 0])


def test_frames_match_a_python_loop_render(objects, train):
  """Every frame is the max of the resized objects pasted at their positions."""
  s = SMALL
  m = mf.sample_motion(s, "train", len(objects["train"][0]))
  small = mf.box_resize(objects["train"][0], s.object_size)
  o = s.object_size
  for i in range(12):
    for t in range(s.num_frames):
      ref = np.zeros((32, 32), np.uint8)
      for k in range(int(train["num_objects"][i])):
        y, x = train["positions"][i, k, t]
        ref[y:y + o, x:x + o] = np.maximum(ref[y:y + o, x:x + o],
                                           small[m["source_index"][i, k]])
      np.testing.assert_array_equal(train["image"][i, t, ..., 0], ref)
  # box_resize of 28 -> 14 is the 2x2 mean.
  ref = objects["train"][0][:4].reshape(4, 14, 2, 14, 2).astype(np.float64).mean((2, 4))
  np.testing.assert_array_equal(small[:4], np.round(ref))


def test_bouncing_matches_a_python_loop_reference():
  # By hand: L = 4, x from 3 by +2: 3, 5 -> 3, 1, -1 -> 1, 3.
  np.testing.assert_array_equal(
      mf.trajectories(np.array([0, 3]), np.array([0, 2]), 5, 4)[:, 1], [3, 3, 1, 1, 3])
  rng = np.random.default_rng(0)
  for _ in range(50):
    travel = int(rng.integers(1, 12))
    v = rng.integers(-travel, travel + 1, 2)
    start = rng.integers(0, travel + 1, 2)
    got = mf.trajectories(start, v, 20, travel)
    np.testing.assert_array_equal(got, _loop_positions(start, v, 20, travel))
  # The walls hit, in order; touching one in the last frame is no bounce.
  assert mf.bounces(np.array([0, 3]), np.array([0, 2]), 5, 4) == ["right", "left"]
  assert mf.bounces(np.array([1, 0]), np.array([-1, 2]), 3, 4) == ["top"]
  assert mf.bounces(np.array([0, 0]), np.array([0, 2]), 3, 4) == []


def test_directions_are_the_motion_of_the_first_step(train):
  """The centroid of a lone object moves by exactly the labelled velocity between
  frames 0 and 1; the stored positions agree for every object."""
  v = train["positions"][:, :, 1] - train["positions"][:, :, 0]   # (N, K, 2)
  present = np.arange(SMALL.max_objects) < train["num_objects"][:, None]
  np.testing.assert_array_equal(np.sign(v[present]), mf.STEPS[train["directions"][present]])
  lone = np.flatnonzero(train["num_objects"] == 1)
  assert len(lone) >= 5
  video = train["image"][lone, :2, ..., 0].astype(np.float64)     # (n, 2, H, W)
  grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"))
  centroid = np.einsum("ntij,aij->nta", video, grid) / video.sum((2, 3))[..., None]
  np.testing.assert_allclose(centroid[:, 1] - centroid[:, 0], v[lone, 0], atol=1e-9)


def test_captions_name_the_classes_directions_and_walls(train):
  s = SMALL
  for i in range(s.num_train):
    c, d = train["classes"][i], train["directions"][i]
    short, detailed = train["caption_short"][i], train["caption_detailed"][i]
    noun = captions.FMNIST_NOUNS[c[0]][0]
    assert short == f"{captions.article(noun)} moving {mf.DIRECTIONS[d[0]]}"
    start = train["positions"][i, :, 0]
    velocity = train["positions"][i, :, 1] - start
    any_wall = False
    for k in range(int(train["num_objects"][i])):
      assert any(n in detailed for n in captions.FMNIST_NOUNS[c[k]]), detailed
      assert any(p in detailed for p in mf._DIRECTION_PHRASES[mf.DIRECTIONS[d[k]]])  # pylint: disable=protected-access
      walls = mf.bounces(start[k], velocity[k], s.num_frames, s.travel)
      any_wall |= bool(walls)
      for w in walls:
        assert w in detailed, (detailed, walls)
    assert ("bouncing off" in detailed) == any_wall, detailed


def test_train_and_test_move_objects_of_their_own_split(objects):
  s = mf.Settings(num_train=24, num_test=24, max_objects=1)
  resized = {sp: {im.tobytes() for im in mf.box_resize(objects[sp][0], s.object_size)}
             for sp in mf.SPLITS}
  for split in mf.SPLITS:
    out = mf.generate(*objects[split], s, split)
    o = s.object_size
    for video, pos in zip(out["image"], out["positions"]):
      y, x = pos[0, 0]
      crop = video[0, y:y + o, x:x + o, 0].tobytes()
      assert crop in resized[split]
      assert crop not in resized["test" if split == "train" else "train"]


def test_settings_name_the_builder_config_and_bad_ones_say_what_to_do(data_dir):
  cfg = dict(name="moving_fashion_mnist", data_dir=data_dir)
  a = mf.MovingFashionMnist(settings=mf.Settings.from_config(cfg), data_dir=data_dir)
  b = mf.MovingFashionMnist(settings=mf.Settings.from_config({**cfg, "num_frames": 16}),
                            data_dir=data_dir)
  assert a.data_dir != b.data_dir and "t16" in os.fspath(b.data_dir)
  spec = datasets.describe(ml_collections.ConfigDict(cfg))
  assert spec.image_shape == (8, 32, 32, 1) and spec.is_video and not spec.has_captions
  assert spec.splits == {"train": 20000, "test": 2000}
  # Text-embedding caches are keyed by the settings that make the captions.
  def fingerprint(**fields):
    return caption_embeddings.captions_fingerprint(
        ml_collections.ConfigDict({**cfg, **fields}), "train", datasets.FMNIST_CLASSES)
  assert fingerprint() == fingerprint() != fingerprint(seed=1)
  with pytest.raises(DataError, match="object_size"):
    mf.Settings.from_config({"image_size": 14})
  with pytest.raises(DataError, match="max_speed"):
    mf.Settings.from_config({"image_size": 16, "max_speed": 3})
  with pytest.raises(DataError, match="flip_lr"):
    datasets.describe(ml_collections.ConfigDict({**cfg, "pp": "flip_lr|scale(-1, 1)"}))
  with pytest.raises(DataError, match="choose_caption"):
    datasets.describe(ml_collections.ConfigDict({**cfg, "pp": "choose_caption(0.5)"}))


def test_builder_prepares_and_reads_back_the_generator(fake_fmnist_dir, data_dir, objects):
  cfg = _cfg(fake_fmnist_dir, data_dir, pp="choose_caption(0)|scale(-1, 1)",
             motion_labels=True)
  spec = datasets.get_dataset(cfg)
  assert spec.splits == {"train": 16, "test": 8} and spec.has_captions
  assert spec.image_shape == (8, 32, 32, 1)
  settings = mf.Settings.from_config(cfg)
  for split in mf.SPLITS:
    ref = mf.generate(*objects[split], settings, split)
    src = spec.source(split)
    got = src.__getitems__(list(range(len(src))))
    for key in ("image", "label", "num_objects", "classes", "directions", "positions"):
      np.testing.assert_array_equal(np.stack([e[key] for e in got]), ref[key], err_msg=key)
    for key in mf.CAPTION_FIELDS:
      assert [e[key] for e in got] == ref[key]
  vids, labels = datasets.load_arrays(spec, "test")
  assert vids.shape == (8, 8, 32, 32, 1) and labels.shape == (8,)
  back = datasets.spec_from_dict(datasets.spec_to_dict(spec))
  assert back.image_shape == spec.image_shape and back.is_video
  # Without captions and motion labels in the config: image and label only, so that a
  # jitted step's batch has its fields; the pipeline batches videos.
  plain = datasets.get_dataset(_cfg(fake_fmnist_dir, data_dir))
  assert set(plain.source("train")[0]) == {"image", "label"}
  batch = next(iter(pipeline.train_dataset(plain, split="train", pp="scale(-1, 1)",
                                           batch_size=4, seed=0)))
  assert batch["image"].shape == (4, 8, 32, 32, 1) and batch["image"].dtype == np.float32


def test_class_direction_labels_join_class_and_direction_and_split_back(
    fake_fmnist_dir, data_dir, objects):
  # config.data.label="class_direction": label = class * 8 + the first object's
  # direction (80 named classes), computed from the same prepared data; split_label
  # inverts it and maps unconditional / missing labels to -1.
  cfg = _cfg(fake_fmnist_dir, data_dir, label="class_direction", max_objects=1)
  spec = datasets.get_dataset(cfg)
  assert spec.num_classes == 80 and len(spec.class_names) == 80
  assert spec.class_names[8 * 5 + 4] == f"{datasets.FMNIST_CLASSES[5]} moving left"
  ref = mf.generate(*objects["test"], mf.Settings.from_config(cfg), "test")
  src = spec.source("test")
  got = np.asarray([e["label"] for e in src.__getitems__(list(range(len(src))))])
  want = [c[0] * 8 + d[0] for c, d in zip(ref["classes"], ref["directions"])]
  np.testing.assert_array_equal(got, want)
  cls, dirs = mf.split_label(np.append(got, [80, -1]))
  np.testing.assert_array_equal(cls, list(ref["classes"][:, 0]) + [-1, -1])
  np.testing.assert_array_equal(dirs, list(ref["directions"][:, 0]) + [-1, -1])
  with pytest.raises(DataError, match="class_direction"):
    datasets.describe(_cfg(fake_fmnist_dir, data_dir, label="direction"))


def test_ops_on_videos_and_images_as_one_frame_videos():
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
  image = video[0]
  ex = preprocess.parse("pad(32)|scale(-1, 1)|flip_lr(1.0)")({"image": video}, rng)["image"]
  assert ex.shape == (3, 32, 32, 1) and ex.dtype == np.float32
  ref = np.pad(video, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32) / 255 * 2 - 1
  np.testing.assert_allclose(ex, ref[:, :, ::-1])
  one = preprocess.parse("as_video")({"image": image, "label": 1}, rng)
  assert one["image"].shape == (1, 28, 28, 1) and one["label"] == 1
  np.testing.assert_array_equal(one["image"][0], image)
  four = preprocess.parse("as_video(4)|resize(14)")({"image": image}, rng)["image"]
  assert four.shape == (4, 14, 14, 1) and (four == four[:1]).all()
  np.testing.assert_array_equal(
      preprocess.parse("resize(14)")({"image": video}, rng)["image"][1],
      preprocess.parse("resize(14)")({"image": video[1]}, rng)["image"])
  assert preprocess.parse("as_video(2)")({"image": video}, rng)["image"] is video
  assert preprocess.preprocessed_shape("as_video|pad(32)|scale(-1, 1)", (28, 28, 1)) == (
      1, 32, 32, 1)
  assert preprocess.preprocessed_shape("center_crop(16)", (8, 32, 32, 1)) == (8, 16, 16, 1)
  with pytest.raises(ValueError, match="at least one frame"):
    preprocess.parse("as_video(0)")


def test_gif_grid_round_trip_and_video_samples(tmp_path):
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  videos = np.zeros((3, 4, 8, 8, 1), np.uint8)
  for t in range(4):
    videos[:, t] = 37 * t + 5                  # grey frames, one level per frame
  videos[1, :, 2:4, 2:4] = 200
  path = str(tmp_path / "v.gif")
  grid = images.save_gif(path, videos, ncols=3, fps=5, upscale=2)
  assert grid.shape == (4, 12, 32, 1)
  gif = Image.open(path)
  assert gif.n_frames == 4 and gif.size == (64, 24) and gif.info["loop"] == 0
  assert gif.info["duration"] == 200
  frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(gif)]
  for t, frame in enumerate(frames):
    np.testing.assert_array_equal(frame[::2, ::2], grid[t, ..., 0])
    assert frame[4, 4] == 37 * t + 5 and frame[8, 28] == 200 and frame[0, 0] == 255
  out = generate.save_samples(str(tmp_path / "s.npz"), videos, np.arange(3))
  assert out.endswith("s.gif") and Image.open(out).n_frames == 4
  with np.load(str(tmp_path / "s.npz")) as f:
    np.testing.assert_array_equal(f["arr_0"], videos)
  with pytest.raises(ValueError, match="uint8"):
    images.save_gif(path, videos.astype(np.float32))
