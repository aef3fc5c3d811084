"""Perceptual losses: LPIPS (VGG16) and the same distance on any feature network.

LPIPS (Zhang et al. 2018; the ``lpips`` package and taming's ``losses/lpips.py``):
images in [-1, 1] are scaled by ``(x - SHIFT) / SCALE`` per RGB channel, VGG16's
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 activations are unit-normalised over
channels, their squared difference is weighted per channel by the non-negative "lin"
weights (a bias-free 1x1 conv to one channel), averaged over positions and summed over
the five taps. Grey (1-channel) images are tiled to RGB.

Weights cannot be downloaded here; `load_lpips_params` reads what the user gives:

* our ``.npz``: flat keys ``vgg/conv{b}_{i}/kernel`` (3, 3, in, out; HWIO),
  ``vgg/conv{b}_{i}/bias`` (out,) for the 13 convs conv1_1 ... conv5_3, and ``lin{k}``
  (C_k,) for the taps k = 0..4 (`save_lpips_params` writes it);
* PyTorch state-dict names, as an ``.npz`` or as the ``.pth`` itself (read without
  torch): torchvision's ``features.{i}.weight/bias`` (``vgg16-397923af.pth``) or the
  lpips/taming ``net.slice{s}.{i}.weight/bias``, plus lpips's ``lin{k}.model.1.weight``
  (``weights/v0.1/vgg.pth``); pass the VGG file as ``vgg_path`` when it is separate.
  `lpips_params_from_torch` does this conversion on a dict of numpy arrays.

`lpips_distance(params, x, y)` is the pure function (params as an argument of a jitted
step); `lpips_loss(params)` closes over them. `PerceptualLoss` computes the same
distance on the feature maps of any network, e.g. the Fashion-MNIST classifier of
`jaxgen.eval.classifier` via `classifier_feature_fn` / `classifier_features`.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
VGG16_WIDTHS = (64, 128, 256, 512, 512)
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
# torchvision vgg16 ``features`` index of each conv, in order conv1_1 ... conv5_3.
TORCH_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, n in enumerate(_CONVS_PER_BLOCK)
                   for i in range(n))

FeatureFn = Callable[[jax.Array], Sequence[jax.Array]]


# ----------------------------------------------------------------------------- distance


def unit_normalize(f, eps: float = 1e-10):
  """f / (||f||_channels + eps), as LPIPS; finite gradient where the norm is 0."""
  ssq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  safe = jnp.where(ssq > 0, ssq, 1.0)
  norm = jnp.where(ssq > 0, jnp.sqrt(safe), 0.0)
  return f / (norm + eps)


def perceptual_distance(feats_x: Sequence[jax.Array], feats_y: Sequence[jax.Array],
                        weights: Optional[Sequence[jax.Array]] = None,
                        normalize: bool = True):
  """Per-example sum over taps of the spatial mean of the (weighted) channel sum of
  squared differences of (unit-normalised) feature maps (N, *spatial, C) -> (N,).

  ``weights``: one (C_k,) vector per tap, clipped at 0 (LPIPS's "lin" layers);
  ``None`` sums the channels with weight 1 (LPIPS's "baseline" mode).
  """
  if len(feats_x) != len(feats_y):
    raise ValueError(f"{len(feats_x)} feature maps for x but {len(feats_y)} for y")
  total = 0.0
  for k, (fx, fy) in enumerate(zip(feats_x, feats_y)):
    fx, fy = fx.astype(jnp.float32), fy.astype(jnp.float32)
    if normalize:
      fx, fy = unit_normalize(fx), unit_normalize(fy)
    d = jnp.square(fx - fy)
    d = d.sum(-1) if weights is None else d @ jnp.maximum(weights[k], 0.0)
    total = total + d.reshape(d.shape[0], -1).mean(axis=1)
  return total


class PerceptualLoss:
  """LPIPS-style distance in the feature maps of any network.

  Args:
    feature_fn: ``images (N, ..., C) in [-1, 1] -> list of feature maps (N, ..., C_k)``
      (a 2-D (N, C) feature vector is treated as one position). Close over frozen params.
    weights: Optional per-tap non-negative channel weights; default: channel sum.
    normalize: Unit-normalise features over channels first (as LPIPS).

  Calling it with ``(x, y)`` gives per-example distances (N,); 0 when x == y.
  """

  def __init__(self, feature_fn: FeatureFn,
               weights: Optional[Sequence[jax.Array]] = None, normalize: bool = True):
    self.feature_fn = feature_fn
    self.weights = weights
    self.normalize = normalize

  def __call__(self, x, y):
    if x.shape != y.shape:
      raise ValueError(f"PerceptualLoss: shapes differ: {x.shape} vs {y.shape}")
    feats = self.feature_fn(jnp.concatenate([x, y], axis=0))  # one pass for both
    n = x.shape[0]
    fx = [f[:n] if f.ndim > 2 else f[:n, None] for f in feats]
    fy = [f[n:] if f.ndim > 2 else f[n:, None] for f in feats]
    return perceptual_distance(fx, fy, self.weights, self.normalize)


# ----------------------------------------------------------------------------- LPIPS


class VGG16Features(nn.Module):
  """torchvision VGG16 ``features`` up to relu5_3, NHWC; returns the five LPIPS taps.

  ``widths`` (per block) default to VGG16's; smaller ones serve tests.
  """
  widths: Sequence[int] = VGG16_WIDTHS

  @nn.compact
  def __call__(self, x) -> List[jax.Array]:
    taps, names = [], iter(CONV_NAMES)
    for block, (width, n) in enumerate(zip(self.widths, _CONVS_PER_BLOCK)):
      if block:
        x = nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
      for _ in range(n):
        x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)),
                            precision=jax.lax.Precision.HIGHEST, name=next(names))(x))
      taps.append(x)
    return taps


def to_rgb(images):
  """Tiles 1-channel images to 3 channels; 3-channel images pass through."""
  c = images.shape[-1]
  if c == 3:
    return images
  if c == 1:
    return jnp.repeat(images, 3, axis=-1)
  raise ValueError(f"LPIPS takes 1- or 3-channel images, got {c} channels")


class LPIPS(nn.Module):
  """LPIPS(vgg) distance of images in [-1, 1] (NHWC): ``(x, y) -> (N,)``.

  Parameters: ``vgg`` (VGG16Features) and ``lin0`` ... ``lin4`` (C_k,) channel weights.
  """
  widths: Sequence[int] = VGG16_WIDTHS

  @nn.compact
  def __call__(self, x, y):
    if x.shape != y.shape:
      raise ValueError(f"LPIPS: shapes differ: {x.shape} vs {y.shape}")
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    xy = (to_rgb(jnp.concatenate([x, y], 0)).astype(jnp.float32) - shift) / scale
    feats = VGG16Features(self.widths, name="vgg")(xy)
    lins = [self.param(f"lin{k}", nn.initializers.ones, (w,))
            for k, w in enumerate(self.widths)]
    n = x.shape[0]
    return perceptual_distance([f[:n] for f in feats], [f[n:] for f in feats], lins)


def lpips_distance(params, x, y):
  """Pure LPIPS: ``(params, x, y) -> (N,)``, no gradient to ``params``. Pass the params
  as an argument of a jitted step (e.g. kept in its state) to keep them out of the
  compiled program; `lpips_loss` closes over them instead."""
  module = LPIPS(lpips_widths(params))
  return module.apply({"params": jax.lax.stop_gradient(params)}, x, y)


def lpips_loss(params) -> Callable:
  """``(x, y) -> (N,)`` LPIPS with frozen ``params`` (from `load_lpips_params`).

  The weights are closed over, so a jitted function that calls this embeds them as
  constants (about 59 MB for VGG16): fine for small inputs and one program; for large
  runs prefer `lpips_distance` with the params passed in.
  """
  frozen = jax.tree.map(jnp.asarray, params)
  return lambda x, y: lpips_distance(frozen, x, y)


def lpips_widths(params) -> tuple:
  """Block widths of an LPIPS params tree (from its lin weights)."""
  return tuple(int(np.shape(params[f"lin{k}"])[0]) for k in range(len(TAPS)))


# ----------------------------------------------------------------------------- weights


def flatten_lpips_params(params) -> Dict[str, np.ndarray]:
  """Params tree -> our flat ``.npz`` names."""
  flat = {f"lin{k}": np.asarray(params[f"lin{k}"]) for k in range(len(TAPS))}
  for name in CONV_NAMES:
    for leaf in ("kernel", "bias"):
      flat[f"vgg/{name}/{leaf}"] = np.asarray(params["vgg"][name][leaf])
  return flat


def save_lpips_params(path: str, params) -> None:
  """Writes ``params`` as an ``.npz`` with our flat names."""
  np.savez(path, **flatten_lpips_params(params))


def _unflatten(flat: Mapping[str, np.ndarray], source: str):
  missing = [k for k in flatten_lpips_params_keys() if k not in flat]
  if missing:
    raise ValueError(f"{source}: missing LPIPS weights {missing[:4]}"
                     f"{' ...' if len(missing) > 4 else ''}")
  params = {"vgg": {n: {} for n in CONV_NAMES}}
  for k in range(len(TAPS)):
    params[f"lin{k}"] = np.asarray(flat[f"lin{k}"], np.float32)
  for name in CONV_NAMES:
    for leaf in ("kernel", "bias"):
      params["vgg"][name][leaf] = np.asarray(flat[f"vgg/{name}/{leaf}"], np.float32)
  _check_shapes(params, source)
  return params


def flatten_lpips_params_keys() -> List[str]:
  return ([f"lin{k}" for k in range(len(TAPS))]
          + [f"vgg/{n}/{leaf}" for n in CONV_NAMES for leaf in ("kernel", "bias")])


def _check_shapes(params, source: str) -> None:
  """Kernels 3x3, widths chain from 3 input channels, each lin matches its tap."""
  c_in, i = 3, 0
  for block, n in enumerate(_CONVS_PER_BLOCK):
    for _ in range(n):
      name = CONV_NAMES[i]
      k, b = params["vgg"][name]["kernel"], params["vgg"][name]["bias"]
      if k.ndim != 4 or k.shape[:3] != (3, 3, c_in) or b.shape != (k.shape[3],):
        raise ValueError(f"{source}: vgg/{name} has kernel {k.shape} and bias {b.shape}; "
                         f"expected (3, 3, {c_in}, C) and (C,)")
      c_in, i = k.shape[3], i + 1
    lin = params[f"lin{block}"]
    if lin.shape != (c_in,):
      raise ValueError(f"{source}: lin{block} has shape {lin.shape}, expected ({c_in},)")


_TORCH_CONV = re.compile(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.(weight|bias)$")
_TORCH_LIN = re.compile(r"(?:^|\.)lin(\d)\.model\.1\.weight$")


def lpips_params_from_torch(state: Mapping[str, np.ndarray], source: str = "state dict"):
  """Converts PyTorch LPIPS / VGG16 state-dict arrays to our params tree.

  Conv weights (out, in, 3, 3) -> kernels (3, 3, in, out); lin weights (1, C, 1, 1) ->
  (C,). Other keys (VGG classifier, ``scaling_layer`` buffers) are ignored.
  """
  flat = {}
  by_index = dict(zip(TORCH_CONV_INDEX, CONV_NAMES))
  for key, value in state.items():
    a = np.asarray(value)
    if m := _TORCH_CONV.search(key):
      name = by_index.get(int(m.group(1)))
      if name is None:
        raise ValueError(f"{source}: {key} is not a conv of VGG16 features")
      leaf = "kernel" if m.group(2) == "weight" else "bias"
      flat[f"vgg/{name}/{leaf}"] = a.transpose(2, 3, 1, 0) if leaf == "kernel" else a
    elif m := _TORCH_LIN.search(key):
      flat[f"lin{m.group(1)}"] = a.reshape(-1)
  return _unflatten(flat, source)


def load_lpips_params(path: str, vgg_path: Optional[str] = None):
  """LPIPS params (numpy tree) from our ``.npz`` or PyTorch-named weights.

  Args:
    path: our ``.npz``; or an ``.npz`` / ``.pth`` with PyTorch names (lpips's
      ``vgg.pth`` has only the lin weights: give torchvision's VGG16 as ``vgg_path``).
    vgg_path: Optional second file with the VGG16 convs (PyTorch names).

  Raises:
    FileNotFoundError: a file does not exist.
    ValueError: weights are missing or have the wrong shapes.
  """
  from jaxgen.convert.torch_pickle import read_state_dict  # pylint: disable=g-import-not-at-top
  paths = [p for p in (path, vgg_path) if p]
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"LPIPS weights {p} not found.")
  state = {}
  for p in paths:
    state.update(read_state_dict(p))
  source = " + ".join(paths)
  if "vgg/conv1_1/kernel" in state:
    return _unflatten(state, source)
  return lpips_params_from_torch(state, source)


# ----------------------------------------------------------------------------- classifier


_CLASSIFIER_CONVS = ("conv0", "conv1", "conv2")


def classifier_features(params, images, num_classes: int = 10) -> List[jax.Array]:
  """Feature maps of the dataset classifier (`jaxgen.models.feature_cnn.FeatureCNN`):
  the ReLU outputs of its three convs and its 256-d feature vector (N, 256).

  Takes images in [-1, 1] (N, H, W, C) like those it was trained on (28x28 or 32x32
  grey for Fashion-MNIST); differentiable in the images, not in ``params``.
  """
  from jaxgen.models.feature_cnn import FeatureCNN  # pylint: disable=g-import-not-at-top
  # FeatureCNN maps uint8 [0, 255] to [-1, 1] by x / 127.5 - 1: invert that on floats.
  (_, feats), state = FeatureCNN(num_classes).apply(
      {"params": jax.lax.stop_gradient(params)}, (images + 1.0) * 127.5,
      capture_intermediates=lambda mdl, _: mdl.name in _CLASSIFIER_CONVS)
  inter = state["intermediates"]
  return [nn.relu(inter[c]["__call__"][0]) for c in _CLASSIFIER_CONVS] + [feats]


def classifier_feature_fn(params, num_classes: int = 10) -> FeatureFn:
  """`classifier_features` with ``params`` closed over, for `PerceptualLoss` (the
  classifier's ~0.6M weights become constants of a jitted caller)."""
  frozen = jax.tree.map(jnp.asarray, params)
  return lambda images: classifier_features(frozen, images, num_classes)
