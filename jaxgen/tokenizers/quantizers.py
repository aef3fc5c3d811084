"""Vector quantizers for image and video tokenizers.

* `VectorQuantizer`: nearest-code look-up with straight-through gradients, codebook and
  commitment losses (VQ-VAE), ViT-VQGAN's factorised codes (project to a small look-up
  space and back) and l2-normalised codes (cosine look-up), an EMA codebook (VQ-VAE-2 /
  sonnet) and dead-code restart from batch vectors. Acts on the last axis of inputs of any
  rank: (N, h, w, C), (N, t, h, w, C), (N, L, C), ...
* `LookupFreeQuantizer`: MAGVIT-v2's lookup-free quantization (sign bits, implicit 2^d
  codebook, entropy loss in exact or per-bit factorised form), same calling convention
  and aux dict as `VectorQuantizer`.
* `MultiScaleResidualQuantizer`: VAR's multi-scale residual quantizer (Tian et al. 2024,
  FoundationVision/VAR ``models/quant.py``) on 2-D feature maps (N, H, W, C), with the
  index -> feature-map directions that VAR's teacher forcing and sampling need.

State that is not trained by gradients (EMA statistics, usage EMA, the EMA codebook) lives
in the ``"vq_stats"`` variable collection. A call with ``train=True`` updates it when the
collection is mutable (``apply(..., mutable=["vq_stats"])``) and leaves it untouched
otherwise, like ``batch_stats`` in BatchNorm; ``init`` never updates it.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.layers import Conv, xavier, zeros

Array = jax.Array
Dtype = jnp.dtype
STATS = "vq_stats"
# Distances decide discrete assignments: never let a TPU/GPU run them in bfloat16 passes.
HIGHEST = jax.lax.Precision.HIGHEST
default_codebook_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)  # rows of norm ~1


# ----------------------------------------------------------------------------- helpers


def l2norm(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """``x / max(||x||, eps)`` along ``axis`` (``torch.nn.functional.normalize``)."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def nearest_code(z: Array, codebook_kd: Array, cosine: bool = False) -> Array:
  """Index of the nearest codebook row for every vector on the last axis of ``z``.

  Args:
    z: (..., D) vectors.
    codebook_kd: (K, D) codes.
    cosine: argmax of cosine similarity instead of argmin of squared distance.

  Returns:
    int32 indices of shape ``z.shape[:-1]``.
  """
  z = z.astype(jnp.float32)
  c = codebook_kd.astype(jnp.float32)
  if cosine:
    sim = jnp.einsum("...d,kd->...k", l2norm(z), l2norm(c), precision=HIGHEST)
    return jnp.argmax(sim, axis=-1).astype(jnp.int32)
  dist = (jnp.sum(jnp.square(z), -1, keepdims=True)
          - 2.0 * jnp.einsum("...d,kd->...k", z, c, precision=HIGHEST)
          + jnp.sum(jnp.square(c), -1))
  return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def code_counts(indices: Array, codebook_size: int) -> Array:
  """(K,) float32 number of positions assigned to each code (a scatter-add, no one-hot)."""
  return jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)


def perplexity(counts: Array) -> Array:
  """``exp(entropy)`` of the average assignment distribution ``p = counts / sum(counts)``.

  Equals the number of codes when usage is uniform and 1 when one code takes everything.
  """
  p = counts / jnp.maximum(jnp.sum(counts), 1e-12)
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  return jnp.exp(-jnp.sum(plogp))


def update_usage(usage_k: Array, counts_k: Array, decay: float) -> Array:
  """EMA of each code's batch frequency relative to uniform use (1.0 = its fair share).

  Relative frequency ``counts * K / sum(counts)`` makes the dead-code threshold independent
  of batch and codebook size.
  """
  k = counts_k.shape[0]
  rel = counts_k * k / jnp.maximum(jnp.sum(counts_k), 1.0)
  return decay * usage_k + (1.0 - decay) * rel


def ema_codebook_update(cluster_size_k: Array, embed_sum_kd: Array, counts_k: Array,
                        sums_kd: Array, decay: float, eps: float = 1e-5
                        ) -> Tuple[Array, Array, Array]:
  """One EMA codebook step (VQ-VAE appendix / VQ-VAE-2 / sonnet ``VectorQuantizerEMA``).

  ``N <- decay N + (1-decay) counts``, ``m <- decay m + (1-decay) sums``; the cluster sizes
  are Laplace-smoothed, ``N' = (N + eps) / (sum N + K eps) * sum N``, so that an unused
  code never divides by zero, and the codebook is ``m / N'``.

  Returns:
    (new cluster sizes (K,), new embedding sums (K, D), new codebook (K, D)).
  """
  k = cluster_size_k.shape[0]
  cluster_size = decay * cluster_size_k + (1.0 - decay) * counts_k
  embed_sum = decay * embed_sum_kd + (1.0 - decay) * sums_kd
  n = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (n + k * eps) * n
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def sample_rows(key: Array, x_nd: Array, num: int) -> Array:
  """``num`` random rows of ``x_nd`` (without replacement when there are enough rows)."""
  n = x_nd.shape[0]
  pick = jax.random.choice(key, n, (num,), replace=n < num)
  return x_nd[pick]


def usage_metrics(counts_k: Array, usage_k: Array, threshold: float) -> Dict[str, Array]:
  """Perplexity, fraction of codes used in the batch and in the usage-EMA window."""
  return {
      "perplexity": perplexity(counts_k),
      "usage": jnp.mean((counts_k > 0).astype(jnp.float32)),
      "usage_window": jnp.mean((usage_k > threshold).astype(jnp.float32)),
  }


class Projection(nn.Module):
  """Linear map on the last axis (kernel/bias with logical axes, as ``layers.Dense``).

  ``features=None``: the width is taken from the call (at init) or from the stored kernel
  (afterwards), so the factorised quantizer's up-projection can serve `embed(indices)`
  without being told the input width.
  """
  features: Optional[int]
  axes: Tuple[str, str]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, features: Optional[int] = None) -> Array:
    width = self.features or features
    if width is None:
      if not self.has_variable("params", "kernel"):
        raise ValueError(f"{self.name}: output width unknown before init; call the "
                         "quantizer on inputs first or set in_dim")
      width = jnp.shape(nn.meta.unbox(self.get_variable("params", "kernel")))[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(xavier, self.axes),
                        (x.shape[-1], width), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(zeros, self.axes[-1:]),
                      (width,), jnp.float32)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def _stat(module: nn.Module, name: str, init_fn, axes: Tuple[str, ...]):
  """A ``vq_stats`` variable whose value carries logical axis names."""
  return module.variable(STATS, name, lambda: nn.LogicallyPartitioned(init_fn(), axes))


def restart_key(module: nn.Module) -> Array:
  """Key for a dead-code restart: the ``"vq_restart"`` rng stream if given, else one
  folded from the module's ``vq_stats/steps`` counter (which it advances)."""
  step = module.steps.value
  module.steps.value = step + 1
  if module.has_rng("vq_restart"):
    return module.make_rng("vq_restart")
  return jax.random.fold_in(jax.random.key(0), step)


def _updating(module: nn.Module, train: bool) -> bool:
  return train and module.is_mutable_collection(STATS) and not module.is_initializing()


# ---------------------------------------------------------------------- VectorQuantizer


class VectorQuantizer(nn.Module):
  """Vector quantizer on the last axis (any leading dims), straight-through gradients.

  Look-up space: ``z`` itself, or ``proj_in(z)`` (width ``code_dim``) when ``factorized``;
  l2-normalised (codes too) when ``l2_normalize``, which makes the look-up cosine
  similarity (ViT-VQGAN). The straight-through estimator ``z_e + sg(q - z_e)`` is taken in
  the look-up space, so with l2 codes the gradient passes through the normalisation, and
  when factorised the output is ``proj_out`` of it (width ``in_dim``). Losses, also in the
  look-up space: ``codebook_loss = |sg(z_e) - q|^2``, ``commitment_loss = |z_e - sg(q)|^2``
  (means), ``loss = codebook_loss + beta * commitment_loss``.

  Where the codebook lives:
    * ``use_ema=False``: ``params/codebook`` (K, code_dim), logical axes (vocab, embed),
      trained by ``codebook_loss``.
    * ``use_ema=True``: there is no codebook parameter. The codebook is
      ``vq_stats/embedding``, recomputed at every training step from ``vq_stats/
      cluster_size`` and ``vq_stats/embed_sum`` (`ema_codebook_update`); it is read under
      ``stop_gradient``, no optimizer sees it and ``codebook_loss`` is 0. Cluster sizes
      start at 1 and sums at the initial codebook, so an unused code keeps its vector
      instead of being divided by ~0.
    * ``restart_dead=True``: after each training step, codes whose usage EMA
      (`update_usage`, initialised to 0, so codes unused in the first batch are restarted
      at once) is below ``dead_threshold`` are replaced by random look-up-space vectors of
      the current batch (rng stream ``"vq_restart"`` if given, else a key folded from the
      ``vq_stats/steps`` counter). With EMA the row of the EMA codebook and its statistics
      (cluster size 1, sum = the vector) are reset. Without EMA a parameter cannot be
      assigned inside a differentiated ``apply``, so the restart writes a non-trainable
      ``vq_stats/codebook_offset`` row (new vector - parameter row) and the live codebook
      is ``params/codebook + offset``: the restarted row then trains as if the parameter
      had been overwritten.

  Usage of `vq_stats`: pass the whole ``variables`` to ``apply``; ``train=True`` with
  ``mutable=["vq_stats"]`` updates the statistics, anything else reads them only.
  """
  codebook_size: int
  code_dim: int
  beta: float = 0.25
  l2_normalize: bool = False
  factorized: bool = False
  in_dim: Optional[int] = None  # factorized: input/output width (None: inferred at init)
  use_ema: bool = False
  ema_decay: float = 0.99
  ema_epsilon: float = 1e-5
  restart_dead: bool = False
  dead_threshold: float = 1e-3
  usage_decay: float = 0.99
  codebook_init: nn.initializers.Initializer = default_codebook_init
  dtype: Dtype = jnp.float32

  def setup(self):
    k, d = self.codebook_size, self.code_dim
    new_codes = lambda: self.codebook_init(self.make_rng("params"), (k, d), jnp.float32)
    if self.use_ema:
      self.embedding = _stat(self, "embedding", new_codes, ("vocab", "embed"))
      self.cluster_size = _stat(self, "cluster_size", lambda: jnp.ones((k,)), ("vocab",))
      self.embed_sum = _stat(self, "embed_sum", lambda: self.embedding.value,
                             ("vocab", "embed"))
    else:
      self.codebook = self.param(
          "codebook", nn.with_logical_partitioning(self.codebook_init, ("vocab", "embed")),
          (k, d), jnp.float32)
      if self.restart_dead:
        self.codebook_offset = _stat(self, "codebook_offset", lambda: jnp.zeros((k, d)),
                                     ("vocab", "embed"))
    self.usage_ema = _stat(self, "usage", lambda: jnp.zeros((k,)), ("vocab",))
    if self.restart_dead:
      self.steps = self.variable(STATS, "steps", lambda: jnp.zeros((), jnp.int32))
    if self.factorized:
      self.proj_in = Projection(d, ("embed", "embed_out"), dtype=self.dtype)
      self.proj_out = Projection(self.in_dim, ("embed_out", "embed"), dtype=self.dtype)

  def _raw_codebook(self) -> Array:
    if self.use_ema:
      return jax.lax.stop_gradient(self.embedding.value)
    if self.restart_dead:
      return self.codebook + jax.lax.stop_gradient(self.codebook_offset.value)
    return self.codebook

  def _live_codebook(self) -> Array:
    """(K, code_dim) codes in the look-up space."""
    c = self._raw_codebook()
    return l2norm(c) if self.l2_normalize else c

  def to_lookup_space(self, z: Array) -> Array:
    """(..., in_dim) inputs -> (..., code_dim) float32 vectors that are looked up."""
    z_e = self.proj_in(z) if self.factorized else z
    z_e = z_e.astype(jnp.float32)
    return l2norm(z_e) if self.l2_normalize else z_e

  def lookup_codes(self, indices: Array) -> Array:
    """int indices (...) -> (..., code_dim) codes in the look-up space."""
    return jnp.take(self._live_codebook(), indices, axis=0)

  def embed(self, indices: Array) -> Array:
    """int indices (...) -> (..., in_dim) quantized vectors in the input space."""
    q = self.lookup_codes(indices)
    return self.proj_out(q) if self.factorized else q

  def __call__(self, z: Array, train: bool = False) -> Tuple[Array, Dict[str, Array]]:
    """Quantizes ``z`` (..., in_dim).

    Returns:
      ``z_q`` (same shape as ``z``; value = the code, gradient = straight-through) and
      aux: ``indices`` (int32, ``z.shape[:-1]``), ``codebook_loss``, ``commitment_loss``,
      ``loss``, ``perplexity``, ``usage`` (fraction of codes used in this batch) and
      ``usage_window`` (fraction whose usage EMA exceeds ``dead_threshold``).
    """
    width = self.in_dim if self.factorized else self.code_dim
    if width is not None and z.shape[-1] != width:
      raise ValueError(f"VectorQuantizer expects inputs (..., {width}), got {z.shape}")
    z_e = self.to_lookup_space(z)
    codebook = self._live_codebook()
    indices = nearest_code(z_e, codebook, cosine=self.l2_normalize)
    q = jnp.take(codebook, indices, axis=0)
    commitment = jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(q)))
    if self.use_ema:
      codebook_loss = jnp.zeros((), jnp.float32)
    else:
      codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z_e) - q))
    q_st = z_e + jax.lax.stop_gradient(q - z_e)
    z_q = self.proj_out(q_st, z.shape[-1]) if self.factorized else q_st
    counts = code_counts(indices, self.codebook_size)
    if _updating(self, train):
      self._update_stats(jax.lax.stop_gradient(z_e).reshape(-1, self.code_dim), indices,
                         counts)
    aux = {
        "indices": indices,
        "codebook_loss": codebook_loss,
        "commitment_loss": commitment,
        "loss": codebook_loss + self.beta * commitment,
        **usage_metrics(counts, self.usage_ema.value, self.dead_threshold),
    }
    return z_q.astype(z.dtype), aux

  def _update_stats(self, z_nd: Array, indices: Array, counts_k: Array) -> None:
    self.usage_ema.value = update_usage(self.usage_ema.value, counts_k, self.usage_decay)
    if self.use_ema:
      sums = jnp.zeros_like(self.embed_sum.value).at[indices.reshape(-1)].add(z_nd)
      cluster_size, embed_sum, embedding = ema_codebook_update(
          self.cluster_size.value, self.embed_sum.value, counts_k, sums, self.ema_decay,
          self.ema_epsilon)
    if self.restart_dead:
      dead = (self.usage_ema.value < self.dead_threshold)[:, None]
      fresh = sample_rows(self._restart_key(), z_nd, self.codebook_size)
      if self.use_ema:
        embedding = jnp.where(dead, fresh, embedding)
        embed_sum = jnp.where(dead, fresh, embed_sum)
        cluster_size = jnp.where(dead[:, 0], 1.0, cluster_size)
      else:
        param = jax.lax.stop_gradient(self.codebook)
        self.codebook_offset.value = jnp.where(dead, fresh - param,
                                               self.codebook_offset.value)
    if self.use_ema:
      self.cluster_size.value = cluster_size
      self.embed_sum.value = embed_sum
      self.embedding.value = embedding

  def _restart_key(self) -> Array:
    return restart_key(self)


# ------------------------------------------------------------ lookup-free quantization

LFQ_ENTROPY_FORMS = ("auto", "full", "factorized")
LFQ_NORMS = ("none", "rms")
LFQ_FULL_MAX_BITS = 12  # entropy_form="auto": the exact 2^d table up to 4096 codes


def lfq_indices(z: Array) -> Array:
  """Index of the sign code of every vector on the last axis (d <= 30 channels):
  ``sum_i [z_i > 0] 2^i`` (channel 0 is the least significant bit), int32."""
  d = z.shape[-1]
  bits = (z > 0).astype(jnp.int32)
  return jnp.sum(bits << jnp.arange(d, dtype=jnp.int32), axis=-1)


def lfq_codes(indices: Array, code_dim: int, scale: float = 1.0) -> Array:
  """int indices (...) -> (..., code_dim) float32 codes: +scale where bit i is set,
  -scale elsewhere (the inverse of `lfq_indices`)."""
  bits = (indices[..., None] >> jnp.arange(code_dim, dtype=jnp.int32)) & 1
  return jnp.where(bits > 0, scale, -scale).astype(jnp.float32)


def _entropy(p: Array, axis: int = -1) -> Array:
  """``-sum p log p`` (0 log 0 = 0) along ``axis``, with finite gradients where p = 0
  (``xlogy``'s are NaN there: 0 * log 0; codes whose probability underflows, as at
  LFQ's temperature 0.01, would make every gradient NaN)."""
  positive = p > 0
  return -jnp.sum(jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1.0)), 0.0),
                  axis=axis)


def lfq_entropies_full(z_nd: Array, scale: float, temperature: float
                       ) -> Tuple[Array, Array]:
  """(mean per-sample entropy, codebook entropy) of ``q(c | z) = softmax_c(-||z - c||^2
  / temperature)`` over all 2^d codes, the exact MAGVIT-v2 definition: ``E_z[H(q(.|z))]``
  and ``H(E_z[q(.|z)])`` over the rows of ``z_nd`` (N, d). Memory N x 2^d."""
  d = z_nd.shape[-1]
  codes = lfq_codes(jnp.arange(2 ** d, dtype=jnp.int32), d, scale)
  dist = (jnp.sum(jnp.square(z_nd), -1, keepdims=True)
          - 2.0 * jnp.einsum("nd,kd->nk", z_nd, codes, precision=HIGHEST)
          + jnp.sum(jnp.square(codes), -1))
  log_q = jax.nn.log_softmax(-dist / temperature, axis=-1)
  q = jnp.exp(log_q)
  per_sample = jnp.mean(-jnp.sum(q * log_q, axis=-1))
  return per_sample, _entropy(jnp.mean(q, axis=0))


def lfq_entropies_factorized(z_nd: Array, scale: float, temperature: float
                             ) -> Tuple[Array, Array]:
  """The same two entropies from per-bit probabilities, no 2^d table (memory N x d).

  ``-||z - c||^2`` is a sum over channels, so ``q(c | z)`` is a product of independent
  bits with ``P(bit_i = 1 | z) = sigmoid(4 scale z_i / temperature)``, and the
  per-sample entropy is the sum of the bits' entropies: exact. The batch average of
  product distributions is not a product, though: the codebook entropy here is the sum
  of the entropies of the average bit probabilities, an upper bound of the exact one
  (equal when the averaged bits are independent, e.g. for one sample), as in the
  factorised entropy of BSQ (Zhao et al. 2024). It pushes every bit to be used half of
  the time but not the bits to be uncorrelated.
  """
  a = 4.0 * scale * z_nd / temperature
  p1 = jax.nn.sigmoid(a)
  per_bit = -(p1 * jax.nn.log_sigmoid(a) + (1.0 - p1) * jax.nn.log_sigmoid(-a))
  per_sample = jnp.mean(jnp.sum(per_bit, axis=-1))
  avg = jnp.mean(p1, axis=0)
  codebook = jnp.sum(_entropy(jnp.stack([avg, 1.0 - avg], axis=-1)))
  return per_sample, codebook


def annealed_weight(step: Array, weight: float, steps: int, factor: float) -> Array:
  """Linear annealing: ``factor * weight`` at step 0 to ``weight`` at ``steps`` and
  after (constant ``weight`` when ``steps <= 0``)."""
  if steps <= 0:
    return jnp.float32(weight)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
  return jnp.float32(weight) * (factor + (1.0 - factor) * frac)


class LookupFreeQuantizer(nn.Module):
  """Lookup-free quantization (LFQ, MAGVIT-v2: Yu et al. 2023, "Language Model Beats
  Diffusion"), with `VectorQuantizer`'s calling convention and aux dict.

  The codebook is implicit: the ``2^d`` sign vectors ``{-scale, +scale}^d`` with
  ``d = log2(codebook_size)`` = the input width. Each channel is quantised to its sign
  (0 -> -scale), the index is ``sum_i [z_i > 0] 2^i`` (`lfq_indices`: channel 0 is the
  least significant bit; lucidrains' LFQ puts channel 0 first as the most significant),
  and the output is the straight-through ``z + sg(q - z)``. No parameters.

  Losses (means over every position and channel, like the references):
    * ``commitment_loss = |z - sg(q)|^2``, weight ``beta`` (0.25);
    * ``entropy_loss = per_sample_entropy - codebook_entropy_weight * codebook_entropy``
      with ``q(c | z) = softmax_c(-||z - c||^2 / entropy_temperature)`` over the codes
      (temperature 0.01 as MAGVIT's ``entropy_loss``, lucidrains' ``inv_temperature``
      100): the first term makes each assignment confident, the second spreads the
      batch over the codebook. ``entropy_form``: "full" (the exact 2^d table,
      `lfq_entropies_full`), "factorized" (per bit, `lfq_entropies_factorized`: exact
      per-sample term, upper-bound codebook term), "auto" (full up to 2^12 codes);
    * ``loss = beta * commitment + w * entropy_loss``, ``w = entropy_weight`` (0.1),
      annealed linearly from ``entropy_anneal_factor * w`` to ``w`` over
      ``entropy_anneal_steps`` updates (`annealed_weight`; 0 steps: constant). The step
      is ``vq_stats/steps``, advanced by each call with ``train=True`` and a mutable
      ``vq_stats`` (so with gradient accumulation it counts micro-batches).
  ``codebook_loss`` is 0 (nothing to learn).

  ``norm="rms"``: ``z <- scale z / sqrt(mean_i z_i^2 + 1e-6)`` first (before quantising
  and the losses, in the gradient path), putting z on the sphere of the codes as BSQ's
  l2 normalisation; no mean subtraction, which would forbid the codes whose bits are all
  equal. Metrics: ``perplexity``, ``usage`` (fraction of the 2^d codes used in the
  batch), ``usage_window`` (fraction whose usage EMA, in ``vq_stats/usage``, exceeds
  ``dead_threshold``), ``per_sample_entropy``, ``codebook_entropy`` (nats) and
  ``entropy_weight``. The usage statistics hold 2^d floats (1 MiB at d = 18).
  """
  codebook_size: int
  code_dim: Optional[int] = None  # d; None = log2(codebook_size)
  beta: float = 0.25
  entropy_weight: float = 0.1
  codebook_entropy_weight: float = 1.0
  entropy_temperature: float = 0.01
  entropy_form: str = "auto"
  entropy_anneal_steps: int = 0
  entropy_anneal_factor: float = 3.0
  scale: float = 1.0
  norm: str = "none"
  usage_decay: float = 0.99
  dead_threshold: float = 1e-3

  @property
  def bits(self) -> int:
    """d = log2(codebook_size); raises ValueError unless a power of two in [2, 2^30]."""
    k = self.codebook_size
    d = int(k).bit_length() - 1
    if k < 2 or k != 2 ** d or d > 30:
      raise ValueError(f"LookupFreeQuantizer: codebook_size must be a power of two "
                       f"from 2 to 2^30, got {k}")
    if self.code_dim is not None and self.code_dim != d:
      raise ValueError(f"LookupFreeQuantizer: code_dim={self.code_dim} but "
                       f"log2(codebook_size={k}) = {d}; LFQ codes have one bit a channel.")
    return d

  def setup(self):
    for field, value, allowed in (("entropy_form", self.entropy_form, LFQ_ENTROPY_FORMS),
                                  ("norm", self.norm, LFQ_NORMS)):
      if value not in allowed:
        raise ValueError(f"LookupFreeQuantizer: {field}={value!r}; use one of {allowed}")
    self.usage_ema = _stat(self, "usage", lambda: jnp.zeros((self.codebook_size,)),
                           ("vocab",))
    self.steps = self.variable(STATS, "steps", lambda: jnp.zeros((), jnp.int32))

  def lookup_codes(self, indices: Array) -> Array:
    """int indices (...) -> (..., d) codes (+-scale)."""
    return lfq_codes(indices, self.bits, self.scale)

  def embed(self, indices: Array) -> Array:
    """int indices (...) -> (..., d) quantized vectors (the codes: no projection)."""
    return self.lookup_codes(indices)

  def entropies(self, z_nd: Array) -> Tuple[Array, Array]:
    """(per-sample entropy, codebook entropy) of (N, d) vectors with `entropy_form`."""
    form = self.entropy_form
    if form == "auto":
      form = "full" if self.bits <= LFQ_FULL_MAX_BITS else "factorized"
    fn = lfq_entropies_full if form == "full" else lfq_entropies_factorized
    return fn(z_nd, self.scale, self.entropy_temperature)

  def normalize(self, z: Array) -> Array:
    """The optional pre-quantisation norm (float32)."""
    z = z.astype(jnp.float32)
    if self.norm == "rms":
      z = self.scale * z * jax.lax.rsqrt(jnp.mean(jnp.square(z), -1, keepdims=True) + 1e-6)
    return z

  def __call__(self, z: Array, train: bool = False) -> Tuple[Array, Dict[str, Array]]:
    """Quantizes ``z`` (..., d).

    Returns:
      ``z_q`` (same shape and dtype; value = the code, gradient = straight-through) and
      aux: ``indices`` (int32, ``z.shape[:-1]``), the losses and metrics listed in the
      class docstring.
    """
    d = self.bits
    if z.shape[-1] != d:
      raise ValueError(f"LookupFreeQuantizer with {self.codebook_size} codes expects "
                       f"inputs (..., {d}), got {z.shape}")
    z_e = self.normalize(z)
    indices = lfq_indices(z_e)
    q = jnp.where(z_e > 0, self.scale, -self.scale).astype(jnp.float32)
    commitment = jnp.mean(jnp.square(z_e - q))  # q is constant in z: no sg needed
    per_sample, codebook_ent = self.entropies(z_e.reshape(-1, d))
    entropy_loss = per_sample - self.codebook_entropy_weight * codebook_ent
    weight = annealed_weight(self.steps.value, self.entropy_weight,
                             self.entropy_anneal_steps, self.entropy_anneal_factor)
    counts = code_counts(indices, self.codebook_size)
    if _updating(self, train):
      self.usage_ema.value = update_usage(self.usage_ema.value, counts, self.usage_decay)
      self.steps.value = self.steps.value + 1
    z_q = z_e + jax.lax.stop_gradient(q - z_e)
    aux = {
        "indices": indices,
        "codebook_loss": jnp.zeros((), jnp.float32),
        "commitment_loss": commitment,
        "entropy_loss": entropy_loss,
        "per_sample_entropy": per_sample,
        "codebook_entropy": codebook_ent,
        "entropy_weight": weight,
        "loss": self.beta * commitment + weight * entropy_loss,
        **usage_metrics(counts, self.usage_ema.value, self.dead_threshold),
    }
    return z_q.astype(z.dtype), aux


# ------------------------------------------------------------------- multi-scale (VAR)


def _hw(scale: Union[int, Sequence[int]]) -> Tuple[int, int]:
  if np.ndim(scale) == 0:
    return int(scale), int(scale)
  return int(scale[0]), int(scale[1])


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution kernel with PyTorch's ``a = -0.75``."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=None)
def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """(out_size, in_size) matrix of a 1-D resize with PyTorch ``F.interpolate`` semantics.

  ``"area"``: adaptive average pooling (window ``[floor(i*in/out), ceil((i+1)*in/out))``).
  ``"bicubic"`` / ``"bilinear"``: ``align_corners=False`` (half-pixel centres), edge
  samples clamped, no antialiasing; bicubic uses ``a = -0.75``. Both are separable, so a
  2-D resize is one matrix per axis. Equal sizes give the identity.
  """
  m = np.zeros((out_size, in_size), np.float64)
  if method == "area":
    for i in range(out_size):
      lo, hi = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return m.astype(np.float32)
  scale = in_size / out_size
  for i in range(out_size):
    src = scale * (i + 0.5) - 0.5
    if method == "bilinear":
      src = max(src, 0.0)
      x0 = int(np.floor(src))
      t = src - x0
      m[i, min(x0, in_size - 1)] += 1 - t
      m[i, min(x0 + 1, in_size - 1)] += t
    elif method == "bicubic":
      x0 = int(np.floor(src))
      t = src - x0
      taps = np.arange(x0 - 1, x0 + 3)
      weights = _cubic(np.array([t + 1, t, 1 - t, 2 - t]))
      np.add.at(m[i], np.clip(taps, 0, in_size - 1), weights)
    else:
      raise ValueError(f"unknown resize method {method!r} (area, bilinear, bicubic)")
  return m.astype(np.float32)


def resize_2d(x_nhwc: Array, size: Tuple[int, int], method: str) -> Array:
  """Resizes the two spatial axes of NHWC ``x`` with `resize_matrix`."""
  (h, w), (oh, ow) = x_nhwc.shape[1:3], size
  if (h, w) == (oh, ow):
    return x_nhwc
  mh, mw = resize_matrix(h, oh, method), resize_matrix(w, ow, method)
  return jnp.einsum("oh,nhwc,pw->nopc", mh, x_nhwc, mw, precision=HIGHEST)


def phi_index(scale_index: int, num_scales: int, num_phi: int) -> int:
  """Which of ``num_phi`` shared phi convs refines scale ``scale_index`` (VAR's rule).

  The scale's relative position ``k / (S - 1)`` (0 when S = 1) picks the nearest of
  ``num_phi`` evenly spread ticks: ``linspace(1/(3K), 1 - 1/(3K), K)`` for K = 4 (VAR's
  default ``share_quant_resi=4``), ``linspace(1/(2K), 1 - 1/(2K), K)`` otherwise; K = S
  gives one phi per scale and K = 1 one shared phi.
  """
  k = num_phi
  ticks = (np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4
           else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k))
  at = scale_index / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(ticks - at)))


class Phi(nn.Module):
  """VAR's refinement ``(1 - r) h + r conv3x3(h)`` of an upsampled code map."""
  ratio: float

  @nn.compact
  def __call__(self, h_nhwc: Array) -> Array:
    conv = Conv(h_nhwc.shape[-1], (3, 3), name="conv")(h_nhwc)
    return (1.0 - self.ratio) * h_nhwc + self.ratio * conv


class MultiScaleResidualQuantizer(nn.Module):
  """VAR's multi-scale residual quantizer on 2-D feature maps (N, H, W, C), C = code_dim.

  One shared codebook, scales ``s_1 < ... < s_S = H`` (ints, or (h, w) pairs; the last one
  is the full map). With ``r_1 = f`` and ``f_hat_0 = 0``, for k = 1..S:

      idx_k   = nearest_code(area_resize(r_k, s_k), codebook)           (N, s_k, s_k)
      h_k     = phi_{j(k)}(upsample(codebook[idx_k], H))                 (N, H, W, C)
      f_hat_k = f_hat_{k-1} + h_k,   r_{k+1} = r_k - h_k

  ``area_resize`` is PyTorch's area interpolation (adaptive average pooling) and
  ``upsample`` its bicubic (``align_corners=False``, ``a = -0.75``) as in VAR, or bilinear
  with ``upsample="bilinear"``; both are exact matrices (`resize_matrix`). ``phi_j(h) =
  (1 - r) h + r conv3x3_j(h)`` with ``r = phi_ratio`` and j chosen by `phi_index` among
  ``num_phi`` convs shared across scales (``num_phi=0`` or ``phi_ratio=0``: identity).
  With ``l2_normalize`` the look-up is cosine (VAR's ``using_znorm``) but, as in VAR, the
  raw code vectors are what gets added.

  Loss (VAR): mean over scales of ``|f_hat_k - sg(f)|^2 + beta |sg(f_hat_k) - f|^2``;
  the output is the straight-through ``f + sg(f_hat_S - f)``. The codebook is a gradient
  parameter; ``vq_stats/usage`` holds the usage EMA over all scales for the metrics.

  ``restart_dead=True``: after each training step, codes whose usage EMA is below
  ``dead_threshold`` are moved to random feature vectors of the batch, through a
  non-trainable ``vq_stats/codebook_offset`` exactly as in `VectorQuantizer` (the live
  codebook is ``params/codebook + offset``).
  """
  codebook_size: int
  code_dim: int
  scales: Sequence[Union[int, Tuple[int, int]]] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  beta: float = 0.25
  num_phi: int = 4
  phi_ratio: float = 0.5
  l2_normalize: bool = False
  upsample: str = "bicubic"
  usage_decay: float = 0.99
  dead_threshold: float = 1e-3  # usage EMA above which a code counts in usage_window
  restart_dead: bool = False
  codebook_init: nn.initializers.Initializer = default_codebook_init

  def setup(self):
    self.codebook = self.param(
        "codebook", nn.with_logical_partitioning(self.codebook_init, ("vocab", "embed")),
        (self.codebook_size, self.code_dim), jnp.float32)
    if self.restart_dead:
      self.codebook_offset = _stat(
          self, "codebook_offset", lambda: jnp.zeros((self.codebook_size, self.code_dim)),
          ("vocab", "embed"))
      self.steps = self.variable(STATS, "steps", lambda: jnp.zeros((), jnp.int32))
    use_phi = self.num_phi > 0 and abs(self.phi_ratio) > 1e-6
    self.phi = [Phi(abs(self.phi_ratio)) for _ in range(self.num_phi if use_phi else 0)]
    self.usage_ema = _stat(self, "usage", lambda: jnp.zeros((self.codebook_size,)),
                           ("vocab",))

  @property
  def _sizes(self) -> List[Tuple[int, int]]:
    return [_hw(s) for s in self.scales]

  def _check(self, f: Array) -> None:
    if f.ndim != 4 or f.shape[1:3] != self._sizes[-1] or f.shape[-1] != self.code_dim:
      raise ValueError(
          f"MultiScaleResidualQuantizer expects (N, H, W, C) = (N, {self._sizes[-1]}, "
          f"{self.code_dim}) features (last scale = full map), got {f.shape}")

  def _live_codebook(self) -> Array:
    if self.restart_dead:
      return self.codebook + jax.lax.stop_gradient(self.codebook_offset.value)
    return self.codebook

  def _code_map(self, k: int, indices: Array) -> Array:
    """h_k: the codes of scale k upsampled to the full map and refined by phi."""
    h = jnp.take(self._live_codebook(), indices, axis=0)
    h = resize_2d(h, self._sizes[-1], self.upsample)
    if self.phi:
      h = self.phi[phi_index(k, len(self._sizes), len(self.phi))](h)
    return h

  def _quantize(self, f: Array) -> Tuple[List[Array], List[Array]]:
    """The recursion: per-scale indices and f_hat after each scale (grads to codes/phi)."""
    self._check(f)
    if self.is_initializing():  # every phi gets parameters, whichever scales use it
      for phi in self.phi:
        phi(jnp.zeros((1, 3, 3, self.code_dim)))
    rest = jax.lax.stop_gradient(f.astype(jnp.float32))
    f_hat = jnp.zeros_like(rest)
    indices, f_hats = [], []
    for k, size in enumerate(self._sizes):
      idx = nearest_code(resize_2d(rest, size, "area"), self._live_codebook(),
                         cosine=self.l2_normalize)
      h = self._code_map(k, idx)
      f_hat = f_hat + h
      rest = rest - jax.lax.stop_gradient(h)
      indices.append(idx)
      f_hats.append(f_hat)
    return indices, f_hats

  def __call__(self, f: Array, train: bool = False) -> Tuple[Array, Dict]:
    """Quantizes features (N, H, W, C).

    Returns:
      the straight-through reconstruction (N, H, W, C) and aux: ``indices`` (list of
      (N, s, s) int32), ``codebook_loss``, ``commitment_loss``, ``loss``, ``perplexity``,
      ``usage`` and ``usage_window`` (over all scales together).
    """
    indices, f_hats = self._quantize(f)
    f32 = f.astype(jnp.float32)
    f_sg = jax.lax.stop_gradient(f32)
    codebook_loss = sum(jnp.mean(jnp.square(fh - f_sg)) for fh in f_hats) / len(f_hats)
    commitment = sum(jnp.mean(jnp.square(jax.lax.stop_gradient(fh) - f32))
                     for fh in f_hats) / len(f_hats)
    counts = sum(code_counts(idx, self.codebook_size) for idx in indices)
    if _updating(self, train):
      self.usage_ema.value = update_usage(self.usage_ema.value, counts, self.usage_decay)
      if self.restart_dead:
        self._restart(f_sg.reshape(-1, self.code_dim))
    out = f32 + jax.lax.stop_gradient(f_hats[-1] - f32)
    aux = {
        "indices": indices,
        "codebook_loss": codebook_loss,
        "commitment_loss": commitment,
        "loss": codebook_loss + self.beta * commitment,
        **usage_metrics(counts, self.usage_ema.value, self.dead_threshold),
    }
    return out.astype(f.dtype), aux

  def _restart(self, f_nd: Array) -> None:
    key = restart_key(self)
    dead = (self.usage_ema.value < self.dead_threshold)[:, None]
    fresh = sample_rows(key, f_nd, self.codebook_size)
    param = jax.lax.stop_gradient(self.codebook)
    self.codebook_offset.value = jnp.where(dead, fresh - param, self.codebook_offset.value)

  def features_to_indices(self, f: Array) -> List[Array]:
    """Features (N, H, W, C) -> per-scale token maps, a list of (N, s, s) int32."""
    return self._quantize(jax.lax.stop_gradient(f))[0]

  def indices_to_cumulative(self, indices: Sequence[Array]) -> List[Array]:
    """Token maps (all scales, or the first few) -> f_hat (N, H, W, C) after each scale."""
    f_hat, out = 0.0, []
    for k, idx in enumerate(indices):
      f_hat = f_hat + self._code_map(k, idx)
      out.append(f_hat)
    return out

  def indices_to_features(self, indices: Sequence[Array]) -> Array:
    """Token maps of every scale -> the reconstruction f_hat (N, H, W, C)."""
    return self.indices_to_cumulative(indices)[-1]

  def teacher_forcing_inputs(self, indices: Sequence[Array]) -> List[Array]:
    """VAR's teacher-forcing inputs (``idxBl_to_var_input``): for k < S, f_hat after scale
    k area-resized to scale k+1, a list of S - 1 maps (N, s_{k+1}, s_{k+1}, C)."""
    f_hats = self.indices_to_cumulative(indices[:len(self._sizes) - 1])
    return [resize_2d(fh, self._sizes[k + 1], "area") for k, fh in enumerate(f_hats)]

  def next_autoregressive_input(self, scale_index: int, f_hat: Array, indices: Array
                                ) -> Tuple[Array, Array]:
    """One sampling step (``get_next_autoregressive_input``): adds scale ``scale_index``'s
    tokens (N, s, s) to ``f_hat`` (N, H, W, C; zeros before the first scale) and returns
    (new f_hat, the next scale's input: f_hat area-resized to the next scale, or f_hat
    itself after the last scale). ``scale_index`` is a Python int."""
    f_hat = f_hat + self._code_map(scale_index, indices)
    if scale_index == len(self._sizes) - 1:
      return f_hat, f_hat
    return f_hat, resize_2d(f_hat, self._sizes[scale_index + 1], "area")
