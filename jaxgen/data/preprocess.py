"""Preprocessing ops registered by name and composed from a string (big_vision's "pp").

``"pad(32)|scale(-1, 1)|flip_lr"`` builds one function ``(example, rng) -> example``
applied per example by grain. Each op is registered with ``@register_op(name)`` as a
factory taking the op's arguments and returning ``fn(example, rng)``; ``rng`` is a
``numpy.random.Generator`` that grain derives from the seed and the example index, so
random ops are reproducible and resumable.

``image`` is an image (H, W, C) or a video (T, H, W, C), frames first: the spatial ops
(``pad``, ``resize``, ``center_crop``, ``flip_lr``) act on every frame alike and the
elementwise ones (``scale``) on every value; ``as_video`` makes an image a video.
"""

from __future__ import annotations

import ast
import re
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

from jaxgen import registry
from jaxgen.errors import ConfigError

Example = Dict[str, np.ndarray]
Op = Callable[[Example, np.random.Generator], Example]


def register_op(name: str):
  return registry.PREPROCESS_OPS.register(name)


_OP_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$")


def parse(spec: str) -> Op:
  """Builds the composed op of a ``"op1(args)|op2|..."`` spec."""
  ops: List[Op] = []
  for part in filter(str.strip, spec.split("|")):
    m = _OP_RE.match(part)
    if not m:
      raise ValueError(f"Cannot parse preprocessing op {part!r} in {spec!r}.")
    name, args = m.group(1), m.group(2)
    try:
      values = ast.literal_eval(f"({args},)") if args and args.strip() else ()
    except (ValueError, SyntaxError):
      raise ValueError(f"Arguments of preprocessing op {part!r} must be Python "
                       "literals.") from None
    ops.append(registry.PREPROCESS_OPS.get(name)(*values))

  def apply(example: Example, rng: np.random.Generator) -> Example:
    for op in ops:
      example = op(example, rng)
    return example

  return apply


def _frames(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray) -> np.ndarray:
  """``fn`` (an (H, W, C) image -> image) of an image, or of each frame of a video."""
  if img.ndim == 4:
    return np.stack([fn(frame) for frame in img])
  return fn(img)


@register_op("pad")
def pad(size: int) -> Op:
  """Zero-pads the image (each frame of a video) symmetrically to ``size`` x ``size``
  (28 -> 32 for MNIST)."""
  def op(ex, rng):
    del rng
    img = ex["image"]
    lead = max(img.ndim - 3, 0)  # a video's time axis
    h, w = img.shape[lead:lead + 2]
    if h > size or w > size:
      raise ValueError(f"pad({size}): image is already {h}x{w}.")
    top, left = (size - h) // 2, (size - w) // 2
    widths = (((0, 0),) * lead + ((top, size - h - top), (left, size - w - left))
              + ((0, 0),) * (img.ndim - lead - 2))
    return {**ex, "image": np.pad(img, widths)}
  return op


@register_op("resize")
def resize(size: int, method: str = "bilinear") -> Op:
  """Resizes uint8 images (each frame of a video) to ``size`` x ``size`` with PIL."""
  resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
              "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}[method]

  def one(img):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out = np.asarray(pil.resize((size, size), resample))
    return out[..., None] if img.shape[-1] == 1 else out

  def op(ex, rng):
    del rng
    return {**ex, "image": _frames(one, ex["image"])}
  return op


@register_op("center_crop")
def center_crop(size: int) -> Op:
  """ADM / DiT's ImageNet crop: box-downsample while the short side is >= 2 * size,
  bicubic-resize the short side to ``size``, then take the central square (of each
  frame of a video)."""
  def one(img):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    while min(pil.size) >= 2 * size:
      pil = pil.resize(tuple(x // 2 for x in pil.size), Image.BOX)
    ratio = size / min(pil.size)
    pil = pil.resize(tuple(round(x * ratio) for x in pil.size), Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    out = arr[top:top + size, left:left + size]
    return out[..., None] if img.shape[-1] == 1 else out

  def op(ex, rng):
    del rng
    return {**ex, "image": _frames(one, ex["image"])}
  return op


@register_op("scale")
def scale(lo: float = -1.0, hi: float = 1.0) -> Op:
  """uint8 [0, 255] -> float32 [lo, hi] (images and videos alike)."""
  def op(ex, rng):
    del rng
    img = ex["image"].astype(np.float32) / 255.0
    return {**ex, "image": img * (hi - lo) + lo}
  return op


@register_op("flip_lr")
def flip_lr(p: float = 0.5) -> Op:
  """Random horizontal flip with probability ``p`` (all frames of a video alike)."""
  def op(ex, rng):
    if rng.random() < p:
      return {**ex, "image": np.ascontiguousarray(ex["image"][..., ::-1, :])}
    return ex
  return op


@register_op("as_video")
def as_video(frames: int = 1) -> Op:
  """An image (H, W, C) as a video (``frames``, H, W, C) of that image repeated ("images
  are one-frame videos"), so that image and video data share one pipeline and model; a
  video passes unchanged."""
  frames = int(frames)
  if frames < 1:
    raise ValueError(f"as_video({frames}): a video has at least one frame.")

  def op(ex, rng):
    del rng
    img = np.asarray(ex["image"])
    if img.ndim == 4:
      return ex
    if img.ndim != 3:
      raise ValueError(f"as_video: expected an (H, W, C) image, got shape {img.shape}.")
    return {**ex, "image": np.repeat(img[None], frames, axis=0)}
  return op


@register_op("keep")
def keep(*keys: str) -> Op:
  """Keeps only ``keys`` of the example."""
  def op(ex, rng):
    del rng
    return {k: ex[k] for k in keys}
  return op


@register_op("label_int32")
def label_int32() -> Op:
  def op(ex, rng):
    del rng
    return {**ex, "label": np.int32(ex["label"])}
  return op


def preprocessed_shape(pp: str, stored_shape) -> Tuple[int, ...]:
  """Shape of an image (a video) after the ``pp`` string (runs it once on a blank
  example)."""
  ex = {"image": np.zeros(stored_shape, np.uint8), "label": 0, "caption_short": "",
        "caption_detailed": ""}  # captioned data: pp may start with choose_caption
  try:
    return tuple(parse(pp)(ex, np.random.default_rng(0))["image"].shape)
  except ValueError as e:  # e.g. pad(32) of the presets on larger images (a folder's)
    raise ConfigError(f"config.data.pp={pp!r} cannot preprocess this dataset's "
                      f"{'x'.join(map(str, stored_shape))} images: {e} Change config.data.pp "
                      "(e.g. to 'scale(-1, 1)') or config.data.image_size.") from None
