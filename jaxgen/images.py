"""Image helpers at the edges: [-1, 1] float <-> uint8, PNG grids, animated GIF grids
of videos."""

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


def make_video_grid(videos_nthwc: np.ndarray, ncols: Optional[int] = None, pad: int = 2,
                    pad_value: int = 255) -> np.ndarray:
  """uint8 (N, T, H, W, C) -> one uint8 (T, GH, GW, C) video of `make_grid`s: video i
  in row ``i // ncols`` (a row per condition when the caller orders them so)."""
  videos = np.asarray(videos_nthwc)
  if videos.ndim != 5:
    raise ValueError(f"make_video_grid takes videos (N, T, H, W, C), got {videos.shape}.")
  return np.stack([make_grid(videos[:, t], ncols, pad, pad_value)
                   for t in range(videos.shape[1])])


def save_gif(path: str, videos_nthwc_uint8: np.ndarray, ncols: Optional[int] = None,
             fps: float = 4.0, upscale: int = 2) -> np.ndarray:
  """Writes the grid of ``videos`` (uint8 (N, T, H, W, C), C 1 or 3) as an animated GIF
  that loops forever, ``fps`` frames a second, each pixel ``upscale`` x ``upscale`` (a
  local path or a ``gs://``-style URI, see `jaxgen.fileio`). Grey videos keep their
  exact levels (a 256-grey palette); colour ones are quantised to GIF's 256 colours.
  Returns the grid video (T, GH, GW, C).

  A frame equal to the one before it is merged into it (PIL lengthens that frame's
  duration), so a still video plays as one long frame."""
  videos = np.asarray(videos_nthwc_uint8)
  if videos.dtype != np.uint8:
    raise ValueError(f"save_gif takes uint8 videos, got {videos.dtype}; convert [-1, 1] "
                     "floats with to_uint8.")
  if fps <= 0:
    raise ValueError(f"save_gif: fps={fps} must be > 0.")
  grid = make_video_grid(videos, ncols)
  frames = []
  for frame in grid:
    pil = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
    if upscale > 1:
      pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)
    frames.append(pil)
  duration = int(round(1000.0 / fps))
  fileio.save_with(fileio.absolute(path), lambda f: frames[0].save(
      f, format="GIF", save_all=True, append_images=frames[1:], duration=duration,
      loop=0, optimize=False))
  return grid
