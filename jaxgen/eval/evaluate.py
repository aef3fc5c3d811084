"""``jaxgen eval``: figures for a file of samples, beside the same figures for real
held-out images (the reference line).

Frechet distance (FD) is computed in the features of the dataset classifier
(`jaxgen.eval.classifier`) against the statistics of the whole train split;
classifier accuracy compares its predictions on class-conditional samples with the
labels they were sampled for.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Dict, Optional

import numpy as np
from PIL import Image

from jaxgen.data import datasets
from jaxgen.errors import DataError
from jaxgen.eval import classifier as clf_lib
from jaxgen.eval import frechet


def to_native(images: np.ndarray, native_shape, pp: str = "") -> np.ndarray:
  """Maps uint8 NHWC samples back to the dataset's stored shape: centre-crop when the
  pipeline padded (``pad(...)`` in ``pp``), else resize."""
  h, w = native_shape[:2]
  if images.shape[1:3] == (h, w):
    return images
  if "pad(" in pp and images.shape[1] >= h and images.shape[2] >= w:
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    return images[:, top:top + h, left:left + w]
  out = []
  for img in images:
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    arr = np.asarray(pil.resize((w, h), Image.BILINEAR))
    out.append(arr[..., None] if arr.ndim == 2 else arr)
  return np.stack(out)


class Evaluator:
  """Holds the classifier and the train-split feature statistics of one dataset
  (the classifier trained on first use, with a progress bar unless ``progress`` is
  False)."""

  def __init__(self, spec: datasets.DatasetSpec, classifier_dir: str = "", log=print,
               progress: bool = True):
    self.spec = spec
    self.log = log
    self._ref_dir = classifier_dir or clf_lib.default_dir()
    self.classifier = clf_lib.load_or_train(spec, self._ref_dir, log=log, progress=progress)
    self._ref = self._train_stats(self._ref_dir)

  def _train_stats(self, directory: str):
    path = os.path.join(directory, f"{self.spec.name}_v{clf_lib.CLASSIFIER_VERSION}"
                        "_train_stats.npz")
    if os.path.isfile(path):
      with np.load(path) as f:
        return f["mu"], f["sigma"]
    x, _ = datasets.load_arrays(self.spec, "train")
    feats, _ = self.classifier.features_and_logits(x)
    mu, sigma = frechet.stats(feats)
    os.makedirs(directory, exist_ok=True)
    np.savez(path + ".tmp.npz", mu=mu, sigma=sigma)
    os.replace(path + ".tmp.npz", path)
    return mu, sigma

  def figures(self, images_uint8: np.ndarray, labels: Optional[np.ndarray] = None
              ) -> Dict[str, float]:
    """FD to the train split and (if labels) classifier accuracy w.r.t. labels."""
    feats, logits = self.classifier.features_and_logits(images_uint8)
    out = {"fd": frechet.frechet_distance(*frechet.stats(feats), *self._ref),
           "num": float(len(images_uint8))}
    if labels is not None:
      valid = (labels >= 0) & (labels < self.spec.num_classes)
      if valid.any():
        out["accuracy"] = float((logits.argmax(-1)[valid] == labels[valid]).mean())
    return out

  def inception_fid(self, images_uint8: np.ndarray, weights_path: str,
                    split: str = "train") -> float:
    """Standard FID (pytorch-fid Inception-v3 pool3 features, weights from a local
    file) between ``images_uint8`` and as many real images of ``split``."""
    from jaxgen.eval import inception  # pylint: disable=g-import-not-at-top
    params = inception.load_fid_inception(weights_path)
    real, _ = datasets.load_arrays(self.spec, split, limit=len(images_uint8))
    return inception.fid_from_features(inception.inception_features(images_uint8, params),
                                       inception.inception_features(real, params))

  def reference(self, num: int, split: str = "test") -> Dict[str, float]:
    """The same figures for ``num`` real held-out images."""
    x, y = datasets.load_arrays(self.spec, split, limit=num)
    return self.figures(x, y)


_LAYOUT = ("the ADM evaluator layout that `jaxgen sample` writes: arr_0 = uint8 images "
           "N x H x W x C, labels = one integer class per image (optional)")


def load_samples(path: str, video: bool = False):
  """Reads an ADM-layout .npz (``arr_0`` uint8 NHWC, optional ``labels``); with
  ``video``, ``arr_0`` holds uint8 (N, T, H, W, C) videos instead.

  Returns:
    ``(images, labels)``; ``labels`` is None when the file has none.

  Raises:
    FileNotFoundError: there is no file at ``path``.
    DataError: it is not an .npz, is damaged, or does not hold that layout (no
      ``arr_0``, another dtype or rank, fewer than 2 images, labels that are not one
      integer per image); the message says what to change.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Samples file {path} does not exist; write one with "
                            "`jaxgen sample --workdir DIR --out FILE.npz`.")
  try:
    f = np.load(path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{path} is not an .npz archive ({type(e).__name__}); expected "
                    f"{_LAYOUT}.") from None
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise DataError(f"{path} holds one .npy array, not an .npz archive; save it with "
                    "np.savez(path, arr_0=images, labels=labels).")
  with f:
    if "arr_0" not in f:
      raise DataError(f"{path} has no 'arr_0' array (keys: {', '.join(f.keys()) or 'none'}); "
                      f"expected {_LAYOUT}.")
    try:
      images = f["arr_0"]
      labels = f["labels"] if "labels" in f else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
      raise DataError(f"{path} is damaged: its arrays cannot be read ({e}). Write it "
                      "again.") from None
  if images.dtype != np.uint8 or images.ndim != (5 if video else 4):
    layout = "(N, T, H, W, C) videos" if video else "NHWC"
    raise DataError(f"{path}: arr_0 must be uint8 {layout}, got {images.dtype} "
                    f"{images.shape}. Convert it first, e.g. images in [-1, 1]: "
                    "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8).")
  if len(images) < 2:
    raise DataError(f"{path} holds {len(images)} sample(s); the Frechet distance needs at "
                    "least 2. Write more with `jaxgen sample --num N`.")
  if labels is not None and (labels.shape != (len(images),)
                             or not np.issubdtype(labels.dtype, np.integer)):
    raise DataError(f"{path}: labels must be one integer per image, got {labels.dtype} "
                    f"{labels.shape} for {len(images)} images. Save the labels the "
                    "images were sampled for, or none.")
  return images, labels


def check_samples(images: np.ndarray, labels: Optional[np.ndarray], spec, path: str,
                  log=print):
  """Fits samples read by `load_samples` to ``spec``'s images and classes.

  RGB samples of a grey dataset (e.g. from ADM-style tools) are converted to grey
  (ITU-R 601 luma, as PIL's "L"), grey samples of an RGB dataset repeated to RGB, with
  a note. Labels must lie in ``[0, num_classes]`` (``num_classes`` = unconditional); a
  note says when classifier accuracy is skipped or counts only some samples.

  Returns:
    ``(images, labels)`` with the dataset's number of channels.

  Raises:
    DataError: another number of channels, or labels out of range.
  """
  have, want = images.shape[-1], spec.image_shape[-1]
  if have == 3 and want == 1:
    images = np.round(images.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
    images = images.astype(np.uint8)[..., None]
    log(f"Note: {path} holds RGB images; {spec.name} is grey: converted them to grey "
        "(luma 0.299 R + 0.587 G + 0.114 B) for the evaluation.")
  elif have == 1 and want == 3:
    images = np.repeat(images, 3, axis=-1)
    log(f"Note: {path} holds grey images; {spec.name} is RGB: repeated the grey channel.")
  elif have != want:
    raise DataError(f"{path}: arr_0 has {have} channels per pixel, but {spec.name} images "
                    f"have {want}. Evaluate samples of a model trained on {spec.name}.")
  nc = spec.num_classes
  if labels is None:
    log(f"Note: {path} has no labels: classifier accuracy skipped (FD only).")
    return images, labels
  if labels.min() < 0 or labels.max() > nc:
    raise DataError(f"{path}: labels range over {labels.min()}..{labels.max()}, but "
                    f"{spec.name} has classes 0..{nc - 1} ({nc} = unconditional). Were "
                    f"these sampled from a run on {spec.name}?")
  null = int((labels == nc).sum())
  if null == len(labels):
    log(f"Note: all {null} samples in {path} are unconditional (label {nc}): classifier "
        "accuracy skipped (FD only).")
  elif null:
    log(f"Note: classifier accuracy counts the {len(labels) - null} class-conditional "
        f"samples only; {null} are unconditional (label {nc}).")
  return images, labels
