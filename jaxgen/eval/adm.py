"""ImageNet-grade figures as the ADM evaluator computes them (``jaxgen eval --suite adm``).

openai/guided-diffusion's ``evaluations/evaluator.py`` is what DiT, VAR, MaskGIT, MAGE
and most class-conditional ImageNet papers report: FID, sFID, Inception Score and
precision / recall between a sample batch and a reference batch (``.npz`` files:
``arr_0`` uint8 NHWC images, the reference optionally with precomputed ``mu, sigma,
mu_s, sigma_s``). This module computes the same five figures with the FID Inception of
`jaxgen.eval.inception` (pytorch-fid's port of the TensorFlow graph
``inception-2015-12-05``, weights from a local file), without TensorFlow.

Which outputs stand in for the evaluator's graph tensors:

* ``pool_3:0`` (FID, IS, precision / recall): `FIDInceptionV3.pool3`, the global
  average of ``Mixed_7c`` (2048).
* ``mixed_6/conv:0`` (sFID): the output (conv, BatchNorm, ReLU) of the 1x1 branch of
  the fourth 17x17 block, ``Mixed_6d.branch1x1`` (TF's ``mixed`` .. ``mixed_10`` are
  torchvision's ``Mixed_5b`` .. ``Mixed_7c``; ``conv`` is a block's first tower), of
  which the evaluator keeps the first 7 channels: 17 x 17 x 7 = 2023 features.
* ``softmax/logits/MatMul`` (IS): ``pool_3 @ W`` with the 1008-class weight ``fc.weight``
  and, as the evaluator, *without* the bias (``softmax/biases``; pytorch-fid's ``fc``
  adds it).

Preprocessing, ``preprocess="tf"`` (the default here): the evaluator feeds float32
pixels in [0, 255] into the graph at ``ExpandDims``, whose ``ResizeBilinear`` (TF1:
``align_corners=False``, no half-pixel centres) makes them 299 x 299 before ``Sub 128``
and ``Mul 1/128``; `preprocess_tf` does the same (the resize is tested against
TensorFlow's own op). ``preprocess="pytorch-fid"`` is `inception.preprocess`
(half-pixel bilinear, ``2 x / 255 - 1``), for figures comparable with pytorch-fid.
Known offsets from the TensorFlow graph: the network is pytorch-fid's port (it states
equal outputs on single inputs up to float error); XLA and TF differ in convolution
arithmetic order (float32 rounding only).

Precision / recall (Kynkaanniemi et al. 2019, k = 3): a sample is "precise" when it
lies within the k-th-nearest-neighbour radius of some reference feature, a reference
feature is "recalled" when it lies within that of some sample. Squared Euclidean
distances are computed as the evaluator's TensorFlow graph does: in float16 (features,
norms, product and sums rounded to float16 at each operation; products accumulated in
float32), or, for a block with any non-finite value, in float32; blocks of 10,000 x
10,000 as there. TF's float16 kernels round inside their reductions in their own order
(CPU and GPU differ): against TF CPU, 65% of the entries are equal and the rest within
two float16 ulps, at most 0.12% (tested). ``distances="float32"`` skips the float16
rounding.

Inception Score: the mean over splits of 5,000 samples of ``exp(E_x KL(p(y|x) ||
p(y)))`` of the softmax above.

Reference and sample images are streamed from the ``.npz`` (never more than one batch
in host memory) and fed sharded over the devices of a mesh; features are kept (2048 +
2023 floats per image).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError
from jaxgen.eval import frechet
from jaxgen.eval import inception as inc
from jaxgen.sharding import mesh as mesh_lib

SPATIAL_BLOCK = ("Mixed_6d", "branch1x1")   # TF mixed_6/conv
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
IS_SPLIT_SIZE = 5000
PR_K = 3
PR_BLOCK = 10000
PREPROCESS = ("tf", "pytorch-fid")
DISTANCES = ("float16", "float32")

_LAYOUT = ("the ADM evaluator layout: arr_0 = uint8 images N x H x W x 3 (grey N x H x "
           "W x 1 is repeated to RGB); a reference batch may add mu, sigma, mu_s, sigma_s")


# ----------------------------------------------------------------- preprocessing


def tf_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of TF1 ``ResizeBilinear`` (align_corners=False, no half-pixel
  centres): output ``i`` samples input ``i * in / out`` (float32, as TF computes it)."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(np.float32)).astype(np.float64)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


def preprocess_tf(images, size: int = inc.INPUT_SIZE):
  """uint8 (or float in [0, 255]) NHWC -> the TF graph's input: legacy bilinear resize
  to ``size`` (always, as the graph does), then ``(x - 128) / 128``."""
  x = jnp.asarray(images).astype(jnp.float32)
  mh = jnp.asarray(tf_resize_matrix(x.shape[1], size))
  mw = jnp.asarray(tf_resize_matrix(x.shape[2], size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hi)
  x = jnp.einsum("pw,nowc->nopc", mw, x, precision=hi)
  return (x - 128.0) * (1.0 / 128.0)


def _check_preprocess(preprocess: str) -> None:
  if preprocess not in PREPROCESS:
    raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}.")


def adm_forward(variables, images, preprocess: str = "tf"):
  """uint8 NHWC RGB images -> (pool_3 (N, 2048), mixed_6/conv[..., :7] (N, 2023)).

  One pass of `inception.FIDInceptionV3`; the spatial features are captured from
  ``Mixed_6d.branch1x1`` (flattened in HWC order, as the evaluator's reshape)."""
  _check_preprocess(preprocess)
  model = inc.FIDInceptionV3()
  x = preprocess_tf(images) if preprocess == "tf" else inc.preprocess(images)
  pool, state = model.apply(
      variables, x, method=inc.FIDInceptionV3.pool3,
      capture_intermediates=lambda mdl, name: (name == "__call__"
                                               and mdl.path == SPATIAL_BLOCK))
  node = state["intermediates"]
  for key in SPATIAL_BLOCK:
    node = node[key]
  spatial = node["__call__"][0][..., :SPATIAL_CHANNELS]
  return pool, spatial.reshape(spatial.shape[0], -1)


# ----------------------------------------------------------------- batch files


class NpzArray:
  """One array of an ``.npz`` read in batches from its zip member (stored or deflated),
  never whole: ``shape``, ``dtype``, ``batches(n)``."""

  def __init__(self, path: str, name: str = "arr_0"):
    self.path, self.name = path, name
    with self._member() as f:
      self.shape, self.dtype, self._offset = self._header(f)

  @contextlib.contextmanager
  def _member(self):
    try:
      with zipfile.ZipFile(self.path) as zf:
        with zf.open(self.name + ".npy") as f:
          yield f
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
      raise DataError(f"{self.path} is damaged ({type(e).__name__}: {e}); write it "
                      "again.") from None

  def _header(self, f):
    try:
      version = np.lib.format.read_magic(f)
      read = {(1, 0): np.lib.format.read_array_header_1_0,
              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
      if read is None:
        raise ValueError(f"unsupported .npy version {version}")
      shape, fortran, dtype = read(f)
    except ValueError as e:
      raise DataError(f"{self.path}: {self.name} is not a readable .npy array ({e}).") \
          from None
    if fortran or dtype.hasobject:
      how = "in Fortran order" if fortran else "as Python objects"
      raise DataError(f"{self.path}: {self.name} is stored {how}; save a C-ordered "
                      "uint8 array (np.ascontiguousarray).")
    return tuple(shape), dtype, f.tell()

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive (<= batch_size, ...) arrays over the leading axis."""
    row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
    with self._member() as f:
      f.read(self._offset)
      for start in range(0, self.shape[0], batch_size):
        n = min(batch_size, self.shape[0] - start)
        data = f.read(n * row)
        if len(data) != n * row:
          raise DataError(f"{self.path}: {self.name} ends after {start} of "
                          f"{self.shape[0]} images (truncated file); write it again.")
        yield np.frombuffer(data, self.dtype).reshape((n,) + self.shape[1:])


def open_batch(path: str, role: str) -> Tuple[Optional[NpzArray], Dict[str, np.ndarray]]:
  """``(images, stats)`` of an ADM batch file: ``images`` streams ``arr_0`` (None when a
  reference holds only statistics), ``stats`` the precomputed ``mu, sigma, mu_s,
  sigma_s`` (empty when absent).

  Raises:
    FileNotFoundError: no file at ``path``.
    DataError: not an .npz, damaged, or another layout (said in one line).
  """
  if not os.path.isfile(path):
    how = ("the published ones are listed in openai/guided-diffusion's "
           "evaluations/README.md" if role == "reference" else
           "write one with `jaxgen sample --format adm --out FILE.npz`")
    raise FileNotFoundError(f"{role} batch {path} does not exist; {how}.")
  try:
    with zipfile.ZipFile(path) as zf:
      names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f"{role} batch {path} is not an .npz archive ({type(e).__name__}); "
                    f"expected {_LAYOUT}.") from None
  stat_keys = ("mu", "sigma", "mu_s", "sigma_s")
  stats: Dict[str, np.ndarray] = {}
  if all(k in names for k in stat_keys):
    try:
      with np.load(path) as f:
        stats = {k: np.asarray(f[k], np.float64) for k in stat_keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
      raise DataError(f"{role} batch {path} is damaged: its statistics cannot be read "
                      f"({e}).") from None
    want = {"mu": (2048,), "sigma": (2048, 2048), "mu_s": (SPATIAL_DIM,),
            "sigma_s": (SPATIAL_DIM, SPATIAL_DIM)}
    bad = [f"{k} {stats[k].shape} (expected {want[k]})" for k in stat_keys
           if stats[k].shape != want[k]]
    if bad:
      raise DataError(f"{role} batch {path}: precomputed statistics of another network: "
                      f"{', '.join(bad)}.")
  if "arr_0" not in names:
    if stats and role == "reference":
      return None, stats
    raise DataError(f"{role} batch {path} has no 'arr_0' array (arrays: "
                    f"{', '.join(sorted(names)) or 'none'}); expected {_LAYOUT}.")
  images = NpzArray(path)
  shape = images.shape
  if images.dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
    raise DataError(f"{role} batch {path}: arr_0 must be uint8 N x H x W x 3 images, got "
                    f"{images.dtype} {shape}. Images in [-1, 1] convert with "
                    "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8).")
  if shape[0] <= PR_K:
    raise DataError(f"{role} batch {path} holds {shape[0]} image(s); the figures need at "
                    f"least {PR_K + 1} (precision / recall with k = {PR_K}; ADM uses 50,000 "
                    "samples and 10,000 reference images).")
  return images, stats


# ----------------------------------------------------------------- features


def feature_mesh(devices=None) -> jax.sharding.Mesh:
  """All (given) devices on the data axis: features are data-parallel."""
  devices = list(devices if devices is not None else jax.local_devices())
  return mesh_lib.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)


class FeatureExtractor:
  """The jitted ADM forward (or another ``forward``), sharded over ``mesh``'s data axes.

  ``extract(batches)`` runs any iterable of uint8 NHWC batches through it in steps of
  ``batch_per_device * data-parallel size`` images (the last step zero-padded, the
  padding dropped) and returns float32 ``(pool_3 (N, 2048), spatial (N, 2023))``.

  Other networks (the I3D of `jaxgen.eval.i3d`) pass ``forward(variables, x)``
  returning a tuple of (N, D) arrays, ``ndim`` (5 for videos N x T x H x W x C) and
  ``feature_dims`` (the D of each output); grey inputs are repeated to RGB either way.
  """

  def __init__(self, variables, mesh: Optional[jax.sharding.Mesh] = None,
               batch_per_device: int = 16, preprocess: str = "tf", progress: bool = True,
               *, forward=None, ndim: int = 4,
               feature_dims: Tuple[int, ...] = (inc.FEATURE_DIM, SPATIAL_DIM)):
    if forward is None:
      _check_preprocess(preprocess)
      forward = lambda v, x: adm_forward(v, x, preprocess)  # noqa: E731
    self.mesh = mesh or feature_mesh()
    self.batch = batch_per_device * mesh_lib.data_parallel_size(self.mesh)
    self.progress = progress
    self.ndim, self.feature_dims = ndim, tuple(feature_dims)
    self.variables = jax.device_put(variables, mesh_lib.replicated(self.mesh))
    out = mesh_lib.batch_sharding(self.mesh, 2)
    self._fn = jax.jit(forward,
                       in_shardings=(mesh_lib.replicated(self.mesh),
                                     mesh_lib.batch_sharding(self.mesh, ndim)),
                       out_shardings=tuple(out for _ in self.feature_dims))
    self._image_sharding = mesh_lib.batch_sharding(self.mesh, ndim)

  def _steps(self, batches) -> Iterator[np.ndarray]:
    """Re-chunks the incoming batches into full steps (the last one short)."""
    pending, have = [], 0
    for b in batches:
      b = np.asarray(b)
      b = inc.as_rgb_batch(b[..., None] if b.ndim == self.ndim - 1 else b)
      pending.append(b)
      have += len(b)
      while have >= self.batch:
        joined = np.concatenate(pending)
        yield joined[:self.batch]
        pending, have = [joined[self.batch:]], have - self.batch
    if have:
      yield np.concatenate(pending)

  def extract(self, batches, total: Optional[int] = None, desc: str = "features"
              ) -> Tuple[np.ndarray, ...]:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    outs = [[] for _ in self.feature_dims]
    unit = "img" if self.ndim == 4 else "video"
    with tqdm(total=total, desc=desc, unit=unit, disable=not self.progress) as bar:
      for chunk in self._steps(batches):
        n = len(chunk)
        if chunk.dtype != np.uint8 or chunk.ndim != self.ndim or chunk.shape[-1] != 3:
          layout = "(N, H, W, 3) images" if self.ndim == 4 else "(N, T, H, W, 3) videos"
          raise ValueError(f"expected uint8 {layout}, got {chunk.dtype} {chunk.shape}.")
        if n < self.batch:
          pad = np.zeros((self.batch - n,) + chunk.shape[1:], np.uint8)
          chunk = np.concatenate([chunk, pad])
        x = jax.device_put(chunk, self._image_sharding)
        for acc, feats in zip(outs, self._fn(self.variables, x)):
          acc.append(np.asarray(feats, np.float32)[:n])
        bar.update(n)
    return tuple(np.concatenate(acc) if acc else np.zeros((0, d), np.float32)
                 for acc, d in zip(outs, self.feature_dims))


# ----------------------------------------------------------------- figures


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
  """Mean over consecutive splits of ``exp(mean_x KL(softmax(x) || mean softmax))``."""
  logits = np.asarray(logits, np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for i in range(0, len(p), split_size):
    part = p[i:i + split_size]
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  return float(np.mean(scores))


def is_weight_of(variables) -> np.ndarray:
  """(2048, 1008) weight of the evaluator's IS logits ``pool_3 @ W``: the FID
  Inception's ``fc`` kernel; its bias is left out, as the evaluator leaves it."""
  return np.asarray(variables["params"]["fc"]["kernel"], np.float64)


def _round16(x):
  """float32 rounded to float16's precision and range (overflow -> inf), staying
  float32: ``reduce_precision``, which XLA keeps (a float16 round trip of casts may be
  simplified away on GPUs)."""
  return jax.lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)


@jax.jit
def _sq_distances16(u, v):
  """The evaluator's float16 graph: every op's output rounded to float16."""
  u, v = _round16(u), _round16(v)
  nu = _round16(jnp.sum(_round16(u * u), 1))[:, None]
  nv = _round16(jnp.sum(_round16(v * v), 1))[None, :]
  uv = _round16(jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST))
  d = _round16(_round16(nu - _round16(2.0 * uv)) + nv)
  return jnp.maximum(d, 0.0)


@jax.jit
def _sq_distances32(u, v):
  nu = jnp.sum(u * u, 1)[:, None]
  nv = jnp.sum(v * v, 1)[None, :]
  uv = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(nu - 2.0 * uv + nv, 0.0)


def squared_distances(u: np.ndarray, v: np.ndarray, distances: str = "float16"):
  """(len(u), len(v)) squared Euclidean distances as the evaluator's DistanceBlock
  (float16 unless that block has a non-finite value, then float32), float32."""
  if distances not in DISTANCES:
    raise ValueError(f"distances must be one of {DISTANCES}, got {distances!r}.")
  u, v = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
  if distances == "float16":
    d = _sq_distances16(u, v)
    if bool(jnp.all(jnp.isfinite(d))):
      return d
  return _sq_distances32(u, v)


def manifold_radii(features: np.ndarray, k: int = PR_K, block: int = PR_BLOCK,
                   distances: str = "float16") -> np.ndarray:
  """(N,) squared distance of each feature to its k-th nearest neighbour in the set
  (the point itself counted as the 0-th), from blocks of ``block`` x ``block``."""
  n = len(features)
  if n <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} features, got {n}.")
  radii = np.zeros((n,), np.float32)
  for r in range(0, n, block):
    rows = features[r:r + block]
    best = None
    for c in range(0, n, block):
      d = squared_distances(rows, features[c:c + block], distances)
      cand = -jax.lax.top_k(-d, min(k + 1, d.shape[1]))[0]
      best = cand if best is None else -jax.lax.top_k(
          -jnp.concatenate([best, cand], 1), k + 1)[0]
    radii[r:r + block] = np.asarray(best[:, k])
  return radii


def precision_recall(ref: np.ndarray, samples: np.ndarray, k: int = PR_K,
                     block: int = PR_BLOCK, distances: str = "float16"
                     ) -> Tuple[float, float]:
  """(precision, recall): the fraction of samples inside the reference manifold and of
  reference features inside the sample manifold (k-NN balls)."""
  ref_radii = jnp.asarray(manifold_radii(ref, k, block, distances))
  sample_radii = jnp.asarray(manifold_radii(samples, k, block, distances))
  ref_in = np.zeros((len(ref),), bool)
  sample_in = np.zeros((len(samples),), bool)
  for r in range(0, len(ref), block):
    for c in range(0, len(samples), block):
      d = squared_distances(ref[r:r + block], samples[c:c + block], distances)
      ref_in[r:r + block] |= np.asarray(
          jnp.any(d <= sample_radii[None, c:c + block], axis=1))
      sample_in[c:c + block] |= np.asarray(
          jnp.any(d <= ref_radii[r:r + block, None], axis=0))
  return float(sample_in.mean()), float(ref_in.mean())


def figures(ref_pool, ref_spatial, sample_pool, sample_spatial, is_weight: np.ndarray,
            ref_stats: Optional[Dict[str, np.ndarray]] = None,
            distances: str = "float16") -> Dict[str, Any]:
  """The evaluator's five figures from features: ``is_weight`` (D, classes) gives the
  Inception Score's logits ``sample_pool @ is_weight`` (`is_weight_of`); reference
  statistics come from ``ref_stats`` when given, else from the reference features;
  without reference features (None) precision and recall are left out."""
  if ref_stats:
    ref_fid, ref_sfid = (ref_stats["mu"], ref_stats["sigma"]), (ref_stats["mu_s"],
                                                                  ref_stats["sigma_s"])
  else:
    ref_fid, ref_sfid = frechet.stats(ref_pool), frechet.stats(ref_spatial)
  out = {
      "inception_score": inception_score(np.asarray(sample_pool, np.float64) @ is_weight),
      "fid": frechet.frechet_distance(*frechet.stats(sample_pool), *ref_fid),
      "sfid": frechet.frechet_distance(*frechet.stats(sample_spatial), *ref_sfid),
  }
  if ref_pool is not None and len(ref_pool):
    out["precision"], out["recall"] = precision_recall(ref_pool, sample_pool,
                                                       distances=distances)
  return out


def evaluate(ref_path: str, samples_path: str, weights_path: str, *,
             mesh: Optional[jax.sharding.Mesh] = None, batch_per_device: int = 16,
             preprocess: str = "tf", distances: str = "float16", progress: bool = True,
             log=print) -> Dict[str, Any]:
  """``jaxgen eval --suite adm``: the evaluator's figures of ``samples_path`` against
  ``ref_path`` (both ADM batch files), Inception weights from ``weights_path``."""
  ref_images, ref_stats = open_batch(ref_path, "reference")  # bad files stop here, at once
  sample_images, _ = open_batch(samples_path, "sample")
  variables = inc.load_fid_inception(weights_path)
  extractor = FeatureExtractor(variables, mesh, batch_per_device, preprocess, progress)

  def feats(images, desc):
    return extractor.extract(images.batches(extractor.batch), total=images.shape[0],
                             desc=desc)

  ref_pool = ref_spatial = None
  if ref_images is not None:
    ref_pool, ref_spatial = feats(ref_images, "reference features")
  else:
    log(f"Note: {ref_path} holds statistics but no images: precision and recall skipped.")
  sample_pool, sample_spatial = feats(sample_images, "sample features")
  out = figures(ref_pool, ref_spatial, sample_pool, sample_spatial,
                is_weight_of(variables), ref_stats=ref_stats, distances=distances)
  out.update(num_samples=int(sample_images.shape[0]),
             num_reference=int(ref_images.shape[0]) if ref_images is not None else 0,
             reference_statistics="precomputed" if ref_stats else "from its images",
             preprocess=preprocess, distances=distances)
  if len(sample_pool) < IS_SPLIT_SIZE:
    log(f"Note: {len(sample_pool)} samples: the Inception Score is one split (the "
        f"evaluator splits into {IS_SPLIT_SIZE}s; papers use 50,000 samples).")
  return out
