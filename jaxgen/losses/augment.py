"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GAN discriminators.

The same random transformations are applied to real and generated images before the
discriminator sees them, and gradients flow through them to the generator, so the
discriminator cannot overfit a small data set without the generator learning the
augmentations. Everything is pure ``jnp`` on NHWC images in [-1, 1], per example
(independent draws per image), and works on batch-sharded arrays.

Policies, as in the paper: ``color`` (brightness, saturation, contrast), ``translation``
(integer shifts up to 1/8 of the size, zero fill) and ``cutout`` (a zeroed square of half
the size). Each op has a deterministic form taking its random parameters, for tests.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> Tuple[str, ...]:
  """``"color,translation"`` -> ``("color", "translation")``; ``""`` -> ``()``."""
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  unknown = [n for n in names if n not in POLICIES]
  if unknown:
    raise ValueError(f"Unknown DiffAugment policy {unknown}; use a comma list of "
                     f"{', '.join(POLICIES)}.")
  return names


# -- deterministic forms ------------------------------------------------------------
def brightness(x_bhwc, u_b):
  """x + (u - 0.5), u in [0, 1) per example."""
  return x_bhwc + (u_b - 0.5)[:, None, None, None].astype(x_bhwc.dtype)


def saturation(x_bhwc, u_b):
  """Scales the deviation from the per-pixel channel mean by 2u (a no-op for grey)."""
  mean = jnp.mean(x_bhwc, axis=-1, keepdims=True)
  return (x_bhwc - mean) * (2.0 * u_b)[:, None, None, None].astype(x_bhwc.dtype) + mean


def contrast(x_bhwc, u_b):
  """Scales the deviation from the per-image mean by u + 0.5."""
  mean = jnp.mean(x_bhwc, axis=(1, 2, 3), keepdims=True)
  return (x_bhwc - mean) * (u_b + 0.5)[:, None, None, None].astype(x_bhwc.dtype) + mean


def translate(x_bhwc, shifts_b2, max_shift: int, fill: float = 0.0):
  """Shifts image b by ``shifts_b2[b] = (dy, dx)`` pixels (|dy|, |dx| <= max_shift):
  ``out[b, i, j] = x[b, i - dy, j - dx]``, ``fill`` where that falls outside."""
  _, h, w, c = x_bhwc.shape
  m = max_shift
  padded = jnp.pad(x_bhwc, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=fill)

  def one(img, shift):
    return jax.lax.dynamic_slice(img, (m - shift[0], m - shift[1], 0), (h, w, c))

  return jax.vmap(one)(padded, shifts_b2.astype(jnp.int32))


def cutout(x_bhwc, centers_b2, size: int):
  """Zeroes a ``size`` x ``size`` square per image: rows ``cy - size // 2`` to
  ``cy - size // 2 + size - 1`` (clipped at the borders), the same for columns."""
  _, h, w, _ = x_bhwc.shape
  top = centers_b2[:, 0, None] - size // 2
  left = centers_b2[:, 1, None] - size // 2
  rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
  in_r = (rows >= top) & (rows < top + size)  # (B, H)
  in_c = (cols >= left) & (cols < left + size)  # (B, W)
  keep = ~(in_r[:, :, None] & in_c[:, None, :])
  return x_bhwc * keep[..., None].astype(x_bhwc.dtype)


# -- random forms -------------------------------------------------------------------
def random_color(rng, x_bhwc):
  r_b, r_s, r_c = jax.random.split(rng, 3)
  b = x_bhwc.shape[0]
  x = brightness(x_bhwc, jax.random.uniform(r_b, (b,)))
  x = saturation(x, jax.random.uniform(r_s, (b,)))
  return contrast(x, jax.random.uniform(r_c, (b,)))


def random_translation(rng, x_bhwc, ratio: float = 0.125):
  max_shift = int(x_bhwc.shape[1] * ratio + 0.5)
  if max_shift == 0:
    return x_bhwc
  shifts = jax.random.randint(rng, (x_bhwc.shape[0], 2), -max_shift, max_shift + 1)
  return translate(x_bhwc, shifts, max_shift)


def random_cutout(rng, x_bhwc, ratio: float = 0.5):
  _, h, w, _ = x_bhwc.shape
  size = int(h * ratio + 0.5)
  r_y, r_x = jax.random.split(rng)
  b = x_bhwc.shape[0]
  centers = jnp.stack([jax.random.randint(r_y, (b,), 0, h),
                       jax.random.randint(r_x, (b,), 0, w)], axis=1)
  return cutout(x_bhwc, centers, size)


_RANDOM_OPS = {"color": random_color, "translation": random_translation,
               "cutout": random_cutout}


def diff_augment(rng, x_bhwc, policy: Sequence[str]):
  """Applies the ops of ``policy`` (names from ``POLICIES``) in order, each with its
  own key; the identity for an empty policy."""
  for i, name in enumerate(policy):
    x_bhwc = _RANDOM_OPS[name](jax.random.fold_in(rng, i), x_bhwc)
  return x_bhwc
