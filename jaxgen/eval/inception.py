"""Inception-v3 pool3 features for FID on RGB datasets, as pytorch-fid / TTUR compute them.

`FIDInceptionV3` is the Inception-v3 variant of the original TensorFlow FID graph
(``inception-2015-12-05``) in the form pytorch-fid ports it: torchvision's Inception-v3
without the auxiliary head, a 1008-class ``fc``, and the FID patches -- the 3x3 average
pools inside the A, C and E blocks leave padding out of the mean, and the pool branch of
the last E block (``Mixed_7c``) takes a max. Every convolution is bias-free and followed by
BatchNorm (eps 1e-3, running statistics) and ReLU. Layout is NHWC.

Preprocessing follows pytorch-fid: uint8 ``[0, 255]`` -> ``[0, 1]``, bilinear resize to
299x299 (half-pixel centres, no antialiasing, as ``F.interpolate(align_corners=False)``),
then ``2x - 1`` (no resize for 299x299 inputs). pytorch-fid states that its network
reproduces the TF graph on single inputs but that FIDs can still differ slightly from
TTUR's through image interpolation and backends; this module follows pytorch-fid.

Weights: `load_fid_inception` reads pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
without torch (both the zip format of ``torch.save`` since 1.6 and the older
single-stream format are read by a restricted unpickler), or an ``.npz`` holding the same
state-dict names and layouts.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import errors
from jaxgen.convert.torch_pickle import read_state_dict
from jaxgen.eval import frechet

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
HIGHEST = jax.lax.Precision.HIGHEST

IntPair = Union[int, Tuple[int, int]]


def _pair(v: IntPair) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- model


class ConvBN(nn.Module):
  """Bias-free conv, BatchNorm (running stats, eps 1e-3), ReLU: torchvision's BasicConv2d.

  Attributes:
    features: Output channels.
    kernel: Kernel size (int or (kh, kw)).
    strides: Stride (int or pair).
    pad: Symmetric zero padding per spatial dim (int or (ph, pw)).
    precision: Precision of the convolution.
  """
  features: int
  kernel: IntPair
  strides: IntPair = 1
  pad: IntPair = 0
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.pad)
    x = nn.Conv(self.features, _pair(self.kernel), _pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3 / stride 1 / pad 1 average that leaves padding out of the mean (TF's pool)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int = 1, pad: int = 1):
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""
  pool_features: int
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b1 = conv(64, 1, name="branch1x1")(x)
    b5 = conv(48, 1, name="branch5x5_1")(x)
    b5 = conv(64, 5, pad=2, name="branch5x5_2")(b5)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, pad=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, pad=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, 1, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, pad=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b..e) with factorised 7x7 convolutions."""
  channels_7x7: int
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x)
    b7 = conv(c7, 1, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), pad=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), pad=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), pad=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), pad=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), pad=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), pad=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b3 = conv(192, 1, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, 1, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), pad=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), pad=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b/c) with split 1x3 / 3x1 heads.

  Attributes:
    pool: ``"avg"`` (Mixed_7b) or ``"max"`` (Mixed_7c, the FID graph's max pool).
    precision: Precision of the convolutions.
  """
  pool: str = "avg"
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b1 = conv(320, 1, name="branch1x1")(x)
    b3 = conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), pad=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), pad=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, pad=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), pad=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), pad=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = _max_pool_3x3(x) if self.pool == "max" else _avg_pool_3x3(x)
    bp = conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images, resize: bool = True):
  """uint8 (or float in [0, 255]) NHWC -> float32 in [-1, 1], bilinearly resized to 299."""
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  n, h, w, c = x.shape
  if resize and (h, w) != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
  return 2.0 * x - 1.0


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID Inception-v3; submodule names equal the PyTorch state-dict names.

  Attributes:
    resize_input: Resize inputs to 299x299 first (as pytorch-fid does).
    precision: Conv / dense precision; HIGHEST keeps float32 on TF32-capable GPUs.
  """
  resize_input: bool = True
  precision: Any = HIGHEST

  def setup(self):
    conv = functools.partial(ConvBN, precision=self.precision)
    p = dict(precision=self.precision)
    self.Conv2d_1a_3x3 = conv(32, 3, strides=2)
    self.Conv2d_2a_3x3 = conv(32, 3)
    self.Conv2d_2b_3x3 = conv(64, 3, pad=1)
    self.Conv2d_3b_1x1 = conv(80, 1)
    self.Conv2d_4a_3x3 = conv(192, 3)
    self.Mixed_5b = InceptionA(32, **p)
    self.Mixed_5c = InceptionA(64, **p)
    self.Mixed_5d = InceptionA(64, **p)
    self.Mixed_6a = InceptionB(**p)
    self.Mixed_6b = InceptionC(128, **p)
    self.Mixed_6c = InceptionC(160, **p)
    self.Mixed_6d = InceptionC(160, **p)
    self.Mixed_6e = InceptionC(192, **p)
    self.Mixed_7a = InceptionD(**p)
    self.Mixed_7b = InceptionE("avg", **p)
    self.Mixed_7c = InceptionE("max", **p)
    self.fc = nn.Dense(NUM_CLASSES, precision=self.precision)

  def stem(self, x):
    """Preprocessed (N, H, W, 3) in [-1, 1] -> (N, 35, 35, 192) for 299x299 inputs."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool_3x3(x, 2, 0)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    return _max_pool_3x3(x, 2, 0)

  def pool3(self, x):
    """Preprocessed input -> (N, 2048) global-average-pooled Mixed_7c features."""
    x = self.stem(x)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return x.mean(axis=(1, 2))

  def __call__(self, images):
    """uint8 [0, 255] (N, H, W, 3) -> (pool3 features (N, 2048), logits (N, 1008))."""
    feats = self.pool3(preprocess(images, self.resize_input))
    return feats, self.fc(feats)


# ------------------------------------------------------ state-dict names <-> Flax tree

# (collection, Flax leaf name) -> PyTorch leaf name.
_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                  ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                  ("batch_stats", "var"): "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


@functools.lru_cache(maxsize=1)
def variable_shapes() -> Dict[str, Any]:
  """The ``{'params', 'batch_stats'}`` tree of `FIDInceptionV3` as ShapeDtypeStructs."""
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.uint8)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), dummy)


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def torch_name(path: Sequence[str]) -> str:
  """``('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel')`` ->
  ``'Mixed_5b.branch1x1.conv.weight'``."""
  collection, *modules, leaf = path
  return ".".join(modules + [_LEAF_TO_TORCH[(collection, leaf)]])


def _to_torch_layout(a: np.ndarray) -> np.ndarray:
  """Conv HWIO -> OIHW, dense (in, out) -> (out, in); vectors unchanged."""
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  return a.T if a.ndim == 2 else a


def _from_torch_layout(a: np.ndarray) -> np.ndarray:
  if a.ndim == 4:
    return a.transpose(2, 3, 1, 0)
  return a.T if a.ndim == 2 else a


def _torch_shape(shape: Tuple[int, ...]) -> Tuple[int, ...]:
  shape = tuple(int(d) for d in shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return shape[::-1] if len(shape) == 2 else shape


def torch_state_dict_shapes() -> Dict[str, Tuple[int, ...]]:
  """PyTorch state-dict name -> shape (PyTorch layout) of every loaded tensor."""
  return {torch_name(p): _torch_shape(s.shape) for p, s in _leaves(variable_shapes())}


def variables_to_state_dict(variables) -> Dict[str, np.ndarray]:
  """Flax variables -> PyTorch-named, PyTorch-layout numpy arrays (inverse of loading)."""
  return {torch_name(p): np.ascontiguousarray(_to_torch_layout(np.asarray(v)))
          for p, v in _leaves(variables)}


def _check_names(state, expected, source: str):
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected and not k.endswith(_IGNORED_SUFFIXES)]
  if missing or unexpected:
    raise ValueError(
        f"{source} is not a pytorch-fid FID Inception state dict: missing "
        f"{len(missing)} tensors {missing[:5]}, unexpected {len(unexpected)} "
        f"{unexpected[:5]}.")


def state_dict_to_variables(state: Dict[str, Any], source: str = "state dict"):
  """PyTorch-named arrays -> ``{'params', 'batch_stats'}`` of float32 numpy arrays.

  Raises:
    ValueError: a tensor is missing, unexpected, or has a shape that does not fit.
  """
  expected = torch_state_dict_shapes()
  _check_names(state, expected, source)
  out: Dict[str, Any] = {}
  for path, spec in _leaves(variable_shapes()):
    name = torch_name(path)
    arr = np.asarray(state[name])
    if tuple(arr.shape) != expected[name]:
      raise ValueError(f"{source}: parameter {name} has shape {tuple(arr.shape)}, the FID "
                       f"Inception expects {expected[name]}.")
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(_from_torch_layout(arr).astype(np.float32))
  return out


def load_fid_inception(path: str) -> Dict[str, Any]:
  """Reads FID Inception weights into ``{'params': ..., 'batch_stats': ...}`` (numpy).

  Args:
    path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or an ``.npz`` with
      the same state-dict names and PyTorch layouts.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ConfigError (a ValueError): the file is not the FID Inception state dict (not a
      readable checkpoint, or other names or shapes), in one line.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"FID Inception weights {path} not found. Download "
        f"pt_inception-2015-12-05-6726825d.pth from the pytorch-fid GitHub release "
        f"{FID_WEIGHTS_URL} and pass its local path.")
  try:
    return state_dict_to_variables(read_state_dict(path), source=path)
  except errors.ConfigError:
    raise
  except ValueError as e:
    raise errors.ConfigError(f"--inception-weights {path}: {e}") from None


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=None)
def _forward_fn(resize: bool):
  model = FIDInceptionV3(resize_input=resize)
  return jax.jit(lambda variables, x: model.apply(variables, x))


def as_rgb_batch(chunk: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) grey images repeated to RGB; RGB ones as they are."""
  return np.repeat(chunk, 3, axis=-1) if chunk.shape[-1] == 1 else chunk


def inception_features(images_uint8_nhwc: np.ndarray, params, batch_size: int = 100,
                       return_logits: bool = False, resize: bool = True):
  """FID Inception pool3 features of uint8 NHWC images (grey ones repeated to RGB).

  Args:
    images_uint8_nhwc: (N, H, W, 3), (N, H, W, 1) or (N, H, W) uint8 in [0, 255].
    params: Variables from `load_fid_inception`.
    batch_size: Images per forward pass; a shorter last batch is zero-padded so one
      compiled shape serves every batch.
    return_logits: Also return the (N, 1008) logits of the 1008-class ``fc``.
    resize: Resize to 299x299 (pytorch-fid's default).

  Returns:
    float32 (N, 2048) features, or (features, logits) when ``return_logits``.
  """
  images = np.asarray(images_uint8_nhwc)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected uint8 (N, H, W, 1 or 3) images, got {images.dtype} "
                     f"{images.shape}.")
  variables = jax.device_put(params)
  forward = _forward_fn(resize)
  batch = max(1, min(batch_size, len(images)))
  feats, logits = [], []
  for i in range(0, len(images), batch):
    chunk = as_rgb_batch(images[i:i + batch])
    n = len(chunk)
    if n < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], np.uint8)])
    f, lo = forward(variables, jnp.asarray(chunk))
    feats.append(np.asarray(f, np.float32)[:n])
    logits.append(np.asarray(lo, np.float32)[:n])
  empty = lambda d: np.zeros((0, d), np.float32)  # noqa: E731
  feats = np.concatenate(feats) if feats else empty(FEATURE_DIM)
  if not return_logits:
    return feats
  return feats, (np.concatenate(logits) if logits else empty(NUM_CLASSES))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """FID between two (N, 2048) Inception feature sets (`jaxgen.eval.frechet`)."""
  return frechet.frechet_distance_features(features_a, features_b)
