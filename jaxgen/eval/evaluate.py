"""``jaxgen eval``: figures for a file of samples, beside the same figures for real
held-out images (the reference line).

Frechet distance (FD) is computed in the features of the dataset classifier
(`jaxgen.eval.classifier`) against the statistics of the whole train split;
classifier accuracy compares its predictions on class-conditional samples with the
labels they were sampled for.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
from PIL import Image

from jaxgen.data import datasets
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
  """Holds the classifier and the train-split feature statistics of one dataset."""

  def __init__(self, spec: datasets.DatasetSpec, classifier_dir: str = "", log=print):
    self.spec = spec
    self.log = log
    self._ref_dir = classifier_dir or clf_lib.default_dir()
    self.classifier = clf_lib.load_or_train(spec, self._ref_dir, log=log)
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
      valid = labels < self.spec.num_classes
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


def load_samples(path: str):
  """Reads an ADM-layout .npz (``arr_0`` uint8 NHWC, optional ``labels``)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Samples file {path} does not exist; write one with "
                            "`jaxgen sample --workdir DIR --out FILE.npz`.")
  with np.load(path) as f:
    if "arr_0" not in f:
      raise ValueError(f"{path} has no 'arr_0' array (keys: {list(f.keys())}); expected "
                       "the ADM evaluator layout written by `jaxgen sample`.")
    images = f["arr_0"]
    labels = f["labels"] if "labels" in f else None
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"{path}: arr_0 must be uint8 NHWC, got {images.dtype} {images.shape}.")
  return images, labels
