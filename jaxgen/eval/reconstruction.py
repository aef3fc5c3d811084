"""Tokenizer evaluation (``jaxgen eval --workdir TOK``): reconstruction PSNR and SSIM,
rFD (Frechet distance of reconstructions to the train split, in the same
dataset-classifier features as ``jaxgen eval`` of samples) beside the FD of the
original images themselves (its floor), and codebook usage / perplexity over the split.
Video tokenizers: PSNR over whole videos, SSIM per frame (averaged per video), and the
video figures (`jaxgen.eval.video`) through ``figures_fn``: the Frechet distances
(``fd_video`` in the video classifier, ``fd_frame`` in the image classifier) and the
accuracies of the reconstructions (per frame, class, direction, temporal consistency):
the most a latent model can show through that decoder.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from jaxgen import images as images_lib
from jaxgen.data import datasets, pipeline
from jaxgen.eval import evaluate as evaluate_lib


def psnr_uint8(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Per-image PSNR (dB) of uint8 images (peak 255)."""
  d = x.astype(np.float64) - y.astype(np.float64)
  mse = np.mean(d.reshape(len(d), -1) ** 2, axis=1)
  return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def ssim_uint8(x: np.ndarray, y: np.ndarray, sigma: float = 1.5,
               border: Optional[int] = None) -> np.ndarray:
  """Per-image SSIM of uint8 NHWC images, averaged over pixels and channels.

  Wang et al. 2004 with the settings papers report: a Gaussian window of ``sigma``
  truncated at 3.5 sigma (11 taps for 1.5), K1=0.01, K2=0.03, L=255, population
  (co)variances. As scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)`` and dm-pix's ``ssim``, the
  SSIM map is averaged without ``border`` pixels at each edge, by default the window's
  half-width (5): only windows that lie inside the image count.

  Args:
    x: uint8 images, NHWC.
    y: uint8 images of the same shape.
    sigma: the Gaussian window's standard deviation.
    border: pixels dropped at each edge before averaging; None: the window's half-width.
      0 averages the whole map, windows at the edges reflected (jaxgen's SSIM before
      2026-11-30, which reads lower than the standard figure).

  Returns:
    float64 array of one SSIM per image.
  """
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  truncate = 3.5
  border = int(truncate * sigma + 0.5) if border is None else border
  x = x.astype(np.float64)
  y = y.astype(np.float64)

  def blur(a):  # over H and W only
    return ndimage.gaussian_filter(a, sigma=(0, sigma, sigma, 0), truncate=truncate,
                                   mode="reflect")

  mx, my = blur(x), blur(y)
  sxx = blur(x * x) - mx * mx
  syy = blur(y * y) - my * my
  sxy = blur(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  h, w = s.shape[1:3]
  if border and (h <= 2 * border or w <= 2 * border):
    raise ValueError(f"SSIM of {h}x{w} images needs more than {2 * border} pixels per "
                     f"side (a {2 * border + 1}-tap window); pass border=0 for smaller "
                     "ones.")
  s = s[:, border:h - border, border:w - border]
  return s.reshape(len(s), -1).mean(axis=1)


def evaluate_tokenizer(tok, spec: datasets.DatasetSpec, *, split: str, pp: str,
                       num: Optional[int] = None, batch_size: int = 250,
                       classifier_dir: str = "", progress: bool = True,
                       figures_fn: Optional[Callable[[np.ndarray, Optional[np.ndarray]],
                                                     Dict[str, float]]] = None
                       ) -> Dict[str, float]:
  """Reconstructs ``num`` (default: all) images (videos) of ``split`` and returns the
  figures. ``figures_fn(uint8 array, labels or None) -> {name: value}`` scores the
  reconstructions (``r<name>``) and the originals (``<name>_originals``, the floor);
  default: FD in the dataset's image classifier (``rfd``, ``fd_originals``); video
  datasets must give one."""
  n_total = spec.splits[split] if num is None else min(num, spec.splits[split])
  ds = pipeline.eval_dataset(spec, split=split, pp=pp, batch_size=batch_size)
  originals, recons, codes, labels = [], [], [], []
  done = 0
  for batch in tqdm(ds, desc="reconstruct", unit="batch", disable=not progress,
                    total=-(-n_total // batch_size)):
    x = batch["image"][:n_total - done]
    n = len(x)
    if n < batch_size:  # pad to one compiled shape
      x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
    c = tok.encode(x)
    rec = np.asarray(tok.decode(c))[:n]
    if tok.kind != "kl":
      flat = (np.concatenate([np.asarray(ci)[:n].reshape(n, -1) for ci in c], axis=1)
              if isinstance(c, (list, tuple)) else np.asarray(c)[:n].reshape(n, -1))
      codes.append(flat)
    if "label" in batch:
      labels.append(np.asarray(batch["label"])[:n])
    originals.append(images_lib.to_uint8(x[:n]))
    recons.append(images_lib.to_uint8(rec))
    done += n
    if done >= n_total:
      break
  orig, rec = (_native(np.concatenate(a), spec, pp) for a in (originals, recons))
  frames = lambda v: v.reshape((-1,) + v.shape[-3:])  # noqa: E731  (N*T, H, W, C)
  ssim = ssim_uint8(frames(orig), frames(rec)).reshape(len(orig), -1).mean(axis=1)
  out = {"psnr": float(psnr_uint8(orig, rec).mean()), "ssim": float(ssim.mean()),
         "num": float(len(orig))}
  if figures_fn is None:
    if spec.is_video:
      raise ValueError("evaluate_tokenizer of videos needs figures_fn (the video figures).")
    ev = evaluate_lib.Evaluator(spec, classifier_dir, progress=progress)
    figures_fn = lambda x, _: {"fd": ev.figures(x)["fd"]}  # noqa: E731
  y = np.concatenate(labels) if labels else None
  for name, value in figures_fn(rec, y).items():
    out["r" + name] = value
  for name, value in figures_fn(orig, y).items():
    out[name + "_originals"] = value  # the floor: the same real images
  if codes:
    out.update(code_usage(np.concatenate(codes), tok.vocab_size))
  return out


def _native(x: np.ndarray, spec: datasets.DatasetSpec, pp: str) -> np.ndarray:
  """uint8 images (videos: every frame) at the dataset's stored size."""
  if not spec.is_video:
    return evaluate_lib.to_native(x, spec.image_shape, pp)
  n, t = x.shape[:2]
  f = evaluate_lib.to_native(x.reshape((n * t,) + x.shape[2:]), spec.image_shape[1:], pp)
  return f.reshape((n, t) + f.shape[1:])


def code_usage(codes: np.ndarray, vocab_size: int) -> Dict[str, float]:
  """Fraction of the codebook used at least once, and the perplexity of code counts."""
  counts = np.bincount(codes.ravel(), minlength=vocab_size).astype(np.float64)
  p = counts / counts.sum()
  entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
  return {"codebook_usage": float((counts > 0).mean()), "perplexity": float(np.exp(entropy))}
