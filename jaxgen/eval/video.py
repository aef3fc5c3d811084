"""Video figures (``jaxgen eval`` on a video run): fast in-domain figures and FVD.

In-domain figures (docs/video_eval.md), each also computed for held-out real videos
(the floor printed beside the samples'):

* ``fd_video``: Frechet distance in the features of `VideoClassifier`, a small 3D CNN
  that jaxgen trains once on the dataset's train videos (class and direction heads) and
  caches, against the statistics of the train videos (as ``fd`` of the image eval).
* ``class_accuracy`` / ``direction_accuracy``: its class / direction predictions
  against the labels the videos were sampled for (``labels``; ``directions`` only when
  the samples file holds them, i.e. a direction-conditioned run); always
  ``direction_histogram``, the distribution of the predicted directions (uniform for
  real data: the directions are drawn uniformly).
* ``frame_accuracy`` and ``fd_frame``: every frame through the *image* classifier of
  Fashion-MNIST (`jaxgen.eval.classifier`): the object is cropped (`object_crops`:
  the ``object_size`` window of most ink, re-centred on the bounding box of its ink,
  resized to 28 x 28), its predicted class compared with the label, its features'
  Frechet distance to the crops of train-video frames.
* ``temporal_consistency``: the fraction of videos whose per-frame predicted class
  (image classifier) is the same in every frame.

Labels are those of the first object (``label``, ``directions[0]``); a video of two
objects may show the other one more clearly, so accuracies of real videos with two
objects stay below 1: the real line is the floor to read the samples' against.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxgen.data import datasets
from jaxgen.eval import classifier as clf_lib
from jaxgen.eval import frechet

VIDEO_CLASSIFIER_VERSION = 1
# Video datasets with in-domain figures -> the image dataset of their objects.
FRAME_DATASETS = {"moving_fashion_mnist": "fashion_mnist"}
NUM_DIRECTIONS = 8
_FRAME_SIZE = 28  # the image classifier's input (Fashion-MNIST)


# ------------------------------------------------------------------- metric math


def accuracy(pred: np.ndarray, target: np.ndarray, num: Optional[int] = None
             ) -> Optional[float]:
  """Fraction of ``pred == target`` over targets in ``[0, num)`` (all when ``num`` is
  None); None when no target counts."""
  pred, target = np.asarray(pred), np.asarray(target)
  valid = target >= 0 if num is None else (target >= 0) & (target < num)
  return float((pred[valid] == target[valid]).mean()) if valid.any() else None


def per_frame_accuracy(frame_pred: np.ndarray, labels: np.ndarray, num_classes: int
                       ) -> Optional[float]:
  """(N, T) per-frame predictions against one label per video: the fraction of all
  frames (of videos with a label in ``[0, num_classes)``) predicted as their video's."""
  frame_pred = np.asarray(frame_pred)
  labels = np.broadcast_to(np.asarray(labels)[:, None], frame_pred.shape)
  return accuracy(frame_pred, labels, num_classes)


def temporal_consistency(frame_pred: np.ndarray) -> float:
  """Fraction of videos whose (T,) per-frame predictions are all equal."""
  frame_pred = np.asarray(frame_pred)
  return float((frame_pred == frame_pred[:, :1]).all(axis=1).mean())


def histogram(pred: np.ndarray, num: int) -> list:
  """Fractions of ``pred`` equal to each of ``0..num-1``."""
  return (np.bincount(np.asarray(pred), minlength=num)[:num] / max(len(pred), 1)).tolist()


# --------------------------------------------------------------- frame crops


def object_crops(frames: np.ndarray, object_size: int, out: int = _FRAME_SIZE
                 ) -> np.ndarray:
  """(M, H, W[, 1]) uint8 canvas frames -> (M, out, out, 1) uint8 crops of one object.

  The ``object_size`` window of most ink (sum of pixels), then re-centred on the
  bounding box of the pixels above a tenth of that window's maximum (Fashion-MNIST
  garments are centred by their bounding box; the window of most ink is not unique when
  the garment is narrower than its box) and clamped into the canvas; upsampled
  bilinearly (half-pixel centres) to ``out``. An empty frame crops its top-left."""
  f = np.asarray(frames)
  f = f[..., 0] if f.ndim == 4 else f
  m, h, w = f.shape
  s = object_size
  c = np.pad(f.astype(np.int64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
  box = c[:, s:, s:] - c[:, :-s, s:] - c[:, s:, :-s] + c[:, :-s, :-s]  # (M, H-s+1, W-s+1)
  best = box.reshape(m, -1).argmax(1)
  y0, x0 = np.divmod(best, box.shape[2])
  idx = np.arange(s)
  win = f[np.arange(m)[:, None, None], (y0[:, None] + idx)[:, :, None],
          (x0[:, None] + idx)[:, None, :]]                              # (M, s, s)
  ink = win > (win.reshape(m, -1).max(1) // 10)[:, None, None]
  rows, cols = ink.any(2), ink.any(1)
  first = lambda a: np.where(a.any(1), a.argmax(1), 0)  # noqa: E731
  last = lambda a: np.where(a.any(1), s - 1 - a[:, ::-1].argmax(1), s - 1)  # noqa: E731
  cy = y0 + (first(rows) + last(rows)) / 2.0
  cx = x0 + (first(cols) + last(cols)) / 2.0
  ty = np.clip(np.round(cy - (s - 1) / 2.0).astype(np.int64), 0, h - s)
  tx = np.clip(np.round(cx - (s - 1) / 2.0).astype(np.int64), 0, w - s)
  crops = f[np.arange(m)[:, None, None], (ty[:, None] + idx)[:, :, None],
            (tx[:, None] + idx)[:, None, :]].astype(np.float32)
  up = jax.image.resize(jnp.asarray(crops), (m, out, out), "bilinear")
  return np.clip(np.round(np.asarray(up)), 0, 255).astype(np.uint8)[..., None]


# --------------------------------------------------------------- the classifier


class VideoClassifier(nn.Module):
  """uint8 (N, T, H, W, C) -> ``(class logits, direction logits, features (N, 128))``.

  Early fusion: the frames are stacked as channels (H, W, T*C), so that the first
  convolution sees every frame (motion), then three 2D convolutions (32, 64, 128
  channels, each halving the size; XLA's CPU 3D-convolution gradients are ~10x slower),
  the mean and max over space, a 128-d ReLU layer (the features of ``fd_video``) and
  two heads."""
  num_classes: int = 10
  num_directions: int = NUM_DIRECTIONS
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x_uint8, train: bool = False):
    n, t, h, w, c = x_uint8.shape
    x = x_uint8.astype(jnp.float32) / 127.5 - 1.0
    x = x.transpose(0, 2, 3, 1, 4).reshape(n, h, w, t * c)
    for i, (ch, k) in enumerate(((32, (5, 5)), (64, (3, 3)), (128, (3, 3)))):
      x = nn.relu(nn.Conv(ch, k, strides=(2, 2), name=f"conv{i}")(x))
    x = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], -1)
    feats = nn.relu(nn.Dense(self.feature_dim, name="fc")(x))
    h = nn.Dropout(0.3, deterministic=not train)(feats)
    return (nn.Dense(self.num_classes, name="class_head")(h),
            nn.Dense(self.num_directions, name="direction_head")(h), feats)


class TrainedVideoClassifier:
  """Features and predictions of a trained `VideoClassifier`."""

  def __init__(self, params, num_classes: int, info: dict):
    self.module = VideoClassifier(num_classes)
    self.params, self.info = params, info
    self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

  def predict(self, videos: np.ndarray, batch: int = 256
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (N, 128), class predictions (N,), direction predictions (N,))``."""
    feats, cls, dirs = [], [], []
    for i in range(0, len(videos), batch):
      chunk = videos[i:i + batch]
      n = len(chunk)
      if n < batch and len(videos) > batch:  # pad: one compiled shape
        chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
      c, d, f = self._apply(self.params, jnp.asarray(chunk))
      feats.append(np.asarray(f)[:n])
      cls.append(np.asarray(c).argmax(-1)[:n])
      dirs.append(np.asarray(d).argmax(-1)[:n])
    return np.concatenate(feats), np.concatenate(cls), np.concatenate(dirs)


def load_videos(spec: datasets.DatasetSpec, split: str, limit: Optional[int] = None):
  """``(videos, labels, directions)`` of a split (first ``limit``); ``directions`` is
  the first object's (-1 where the dataset was not loaded with
  ``config.data.motion_labels=True``)."""
  src = spec.source(split)
  n = len(src) if limit is None else min(limit, len(src))
  ex = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else [
      src[i] for i in range(n)]
  videos = np.stack([e["image"] for e in ex])
  labels = np.asarray([e["label"] for e in ex], np.int32)
  dirs = np.asarray([np.asarray(e["directions"]).reshape(-1)[0] if "directions" in e
                     else -1 for e in ex], np.int32)
  return videos, labels, dirs


def train_video_classifier(spec: datasets.DatasetSpec, *, limit: Optional[int] = None,
                           log=print, **fit) -> TrainedVideoClassifier:
  """Trains a `VideoClassifier` on the train split (first ``limit`` videos; the spec
  must carry the motion labels) by `fit_video_classifier`; test accuracies in
  ``info``."""
  x, y, d = load_videos(spec, "train", limit)
  if (d < 0).any():
    raise ValueError("the video classifier needs direction labels: load the dataset "
                     "with config.data.motion_labels=True.")
  clf = fit_video_classifier(x, y, d, load_videos(spec, "test"), spec.num_classes,
                             log=log, **fit)
  clf.info["dataset"] = spec.name
  log(f"video classifier test accuracy: class {clf.info['test_class_accuracy']:.4f}, "
      f"direction {clf.info['test_direction_accuracy']:.4f}")
  return clf


def fit_video_classifier(x, y, d, test, num_classes: int, *, epochs: int = 4,
                         batch: int = 64, seed: int = 0, log=print,
                         progress: bool = True) -> TrainedVideoClassifier:
  """Fits a `VideoClassifier` to uint8 videos ``x`` with classes ``y`` and directions
  ``d`` (Adam, cosine decay from 2e-3, the summed cross-entropy of both heads);
  ``test = (videos, classes, directions)`` gives ``info``'s test accuracies."""
  def loss_fn(outputs, yb, db):
    lc, ld, _ = outputs
    ce = optax.softmax_cross_entropy_with_integer_labels
    return ce(lc, yb).mean() + ce(ld, db).mean()

  params = clf_lib.fit(VideoClassifier(num_classes), x, (y, d), loss_fn, epochs=epochs,
                       batch=batch, seed=seed, desc="video classifier", log=log,
                       progress=progress)
  clf = TrainedVideoClassifier(params, num_classes, {})
  xt, yt, dt = test
  _, pc, pd = clf.predict(xt)
  clf.info = dict(version=VIDEO_CLASSIFIER_VERSION, epochs=epochs, seed=seed,
                  video_shape=list(x.shape[1:]), test_class_accuracy=accuracy(pc, yt),
                  test_direction_accuracy=accuracy(pd, dt))
  return clf


def _cache_base(directory: str, spec, data_cfg) -> str:
  """The cache name: the dataset and every setting that changes its videos (Moving
  Fashion-MNIST's builder-config name: canvas, frames, objects, size, speed, counts,
  seed), so a classifier of other data is never reused."""
  shape = "x".join(str(s) for s in spec.image_shape)
  tag = f"{spec.name}_{shape}_seed{data_cfg.get('seed', 0)}"
  if spec.name == "moving_fashion_mnist":
    from jaxgen.data import moving_fmnist  # pylint: disable=g-import-not-at-top
    tag = f"{spec.name}_{moving_fmnist.Settings.from_config(data_cfg).name}"
  return os.path.join(directory, f"video_{tag}_v{VIDEO_CLASSIFIER_VERSION}")


def _atomic_write(path: str, data, mode: str) -> None:
  with open(path + ".tmp", mode) as f:
    f.write(data)
  os.replace(path + ".tmp", path)


def load_or_train_video(spec, data_cfg, directory: str = "", log=print,
                        progress: bool = True, **train) -> TrainedVideoClassifier:
  """The cached video classifier of ``spec`` (trained and saved on first use)."""
  directory = directory or clf_lib.default_dir()
  base = _cache_base(directory, spec, data_cfg)
  if os.path.isfile(base + ".msgpack") and os.path.isfile(base + ".json"):
    with open(base + ".json") as f:
      info = json.load(f)
    module = VideoClassifier(spec.num_classes)
    template = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(
        (1,) + tuple(info["video_shape"]), jnp.uint8))["params"]
    with open(base + ".msgpack", "rb") as f:
      params = serialization.from_bytes(template, f.read())
    return TrainedVideoClassifier(params, spec.num_classes, info)
  log(f"Training the {spec.name} video classifier once (cached in {directory}) ...")
  clf = train_video_classifier(spec, log=log, progress=progress, **train)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    _atomic_write(base + ".msgpack", serialization.to_bytes(clf.params), "wb")
    _atomic_write(base + ".json", json.dumps(clf.info, indent=2), "w")
  return clf


# ------------------------------------------------------------------ the evaluator


class VideoEvaluator:
  """The video figures of one video dataset: the video classifier, the image
  classifier of its frames' dataset, the train videos' reference statistics
  (``num_reference`` train videos; cached beside the classifiers) and, when asked,
  the I3D (`jaxgen.eval.i3d.I3DFeatures`) for FVD against held-out real videos.

  Args:
    spec: the video dataset, loaded with ``motion_labels=True``.
    data_cfg: its ``config.data`` (settings name the cache; ``object_size``).
    image_clf: the image classifier of the frames (`classifier.load_or_train` of
      Fashion-MNIST).
  """

  def __init__(self, spec, data_cfg, image_clf, classifier_dir: str = "", log=print,
               progress: bool = True, num_reference: int = 5000, **train):
    self.spec, self.log = spec, log
    self.object_size = int(data_cfg.get("object_size") or 14)
    self.image_clf = image_clf
    directory = classifier_dir or clf_lib.default_dir()
    self.video_clf = load_or_train_video(spec, data_cfg, directory, log=log,
                                         progress=progress, **train)
    path = _cache_base(directory, spec, data_cfg) + f"_train_stats_n{num_reference}.npz"
    if os.path.isfile(path):
      with np.load(path) as f:
        self._ref = {k: f[k] for k in f}
    else:
      x, _, _ = load_videos(spec, "train", num_reference)
      fv, _, _ = self.video_clf.predict(x)
      ff, _ = self.frame_features(x)
      self._ref = dict(zip(("mu_video", "sigma_video"), frechet.stats(fv)))
      self._ref.update(zip(("mu_frame", "sigma_frame"), frechet.stats(ff)))
      if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        np.savez(path + ".tmp.npz", **self._ref)
        os.replace(path + ".tmp.npz", path)

  def frame_features(self, videos: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Image-classifier ``(features (N*T, D), predictions (N, T))`` of every frame's
    object crop."""
    n, t = videos.shape[:2]
    crops = object_crops(videos.reshape((n * t,) + videos.shape[2:]), self.object_size)
    feats, logits = self.image_clf.features_and_logits(crops)
    return feats, logits.argmax(-1).reshape(n, t)

  def figures(self, videos: np.ndarray, labels: Optional[np.ndarray] = None,
              directions: Optional[np.ndarray] = None) -> Dict[str, object]:
    """The in-domain figures of uint8 (N, T, H, W, C) ``videos`` (see the module
    docstring); accuracies only where labels / directions are given."""
    nc = self.spec.num_classes
    fv, pc, pd = self.video_clf.predict(videos)
    ff, frame_pred = self.frame_features(videos)
    out: Dict[str, object] = {
        "num": float(len(videos)),
        "fd_video": frechet.frechet_distance(*frechet.stats(fv), self._ref["mu_video"],
                                             self._ref["sigma_video"]),
        "fd_frame": frechet.frechet_distance(*frechet.stats(ff), self._ref["mu_frame"],
                                             self._ref["sigma_frame"]),
        "temporal_consistency": temporal_consistency(frame_pred),
    }
    if labels is not None:
      for key, value in (("class_accuracy", accuracy(pc, labels, nc)),
                         ("frame_accuracy", per_frame_accuracy(frame_pred, labels, nc))):
        if value is not None:
          out[key] = value
    if directions is not None and accuracy(pd, directions, NUM_DIRECTIONS) is not None:
      out["direction_accuracy"] = accuracy(pd, directions, NUM_DIRECTIONS)
    out["direction_histogram"] = [round(p, 4) for p in histogram(pd, NUM_DIRECTIONS)]
    return out
