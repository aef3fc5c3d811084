"""Image helpers at the edges: [-1, 1] float <-> uint8, PNG grids."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image

from jaxgen import fileio


def to_uint8(x) -> np.ndarray:
  """[-1, 1] float (any array) -> uint8 [0, 255], rounding to nearest."""
  x = np.asarray(x, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images_nhwc: np.ndarray, ncols: Optional[int] = None, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """uint8 NHWC -> one uint8 HWC grid with ``ncols`` columns."""
  n, h, w, c = images_nhwc.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images_nhwc[i]
  return grid


def save_png(path: str, image_hwc: np.ndarray, upscale: int = 1) -> None:
  """Writes a PNG (a local path or a ``gs://``-style URI, see `jaxgen.fileio`)."""
  img = image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc
  pil = Image.fromarray(img)
  if upscale > 1:
    pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)
  fileio.save_with(fileio.absolute(path), lambda f: pil.save(f, format="PNG"))


def save_grid(path: str, images_nhwc_uint8: np.ndarray, ncols: Optional[int] = None,
              upscale: int = 2) -> np.ndarray:
  grid = make_grid(images_nhwc_uint8, ncols)
  save_png(path, grid, upscale)
  return grid
