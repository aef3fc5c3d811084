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


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
  """``tr((S1 S2)^{1/2})`` of two covariances: the sum of the square roots of the
  eigenvalues of ``S1 S2``. They equal those of the symmetric ``L^T S2 L`` (``S1 = L
  L^T``, Cholesky; or the same with S1 and S2 swapped) or, when both are singular, of
  ``S1^{1/2} S2 S1^{1/2}``: no complex parts appear, and only one eigenvalue problem is
  solved when a covariance is positive definite (2048-d: ~1 s instead of ~10 s)."""
  for a, b in ((s1, s2), (s2, s1)):  # eig(S1 S2) = eig(S2 S1)
    try:
      low = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:  # singular (fewer examples than dimensions)
      continue
    m = low.T @ b @ low
    break
  else:
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (see `trace_sqrt_product`)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
  return frechet_distance(*stats(f1), *stats(f2))
