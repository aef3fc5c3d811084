"""Frechet distance between Gaussians fitted to two feature sets (as in FID)."""

from __future__ import annotations

import numpy as np


def stats(features: np.ndarray):
  """Mean and covariance (float64) of (N, D) features."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"Frechet statistics need (N >= 2, D) features, got {f.shape}.")
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``.

  ``tr((S1 S2)^{1/2})`` is computed as ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})``, which has
  the same eigenvalues and stays symmetric, so no complex parts appear.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  r1 = _sqrtm_psd(s1)
  cross = _sqrtm_psd(r1 @ s2 @ r1)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
  return frechet_distance(*stats(f1), *stats(f2))
