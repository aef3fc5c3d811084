"""Shared Linen building blocks: dense/conv with logical axes, attention (with a
functional KV cache for causal decoding), MLP, adaLN, time/label embeddings, patch
embedding and sin-cos position embeddings.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) so that
`jaxgen.sharding` can place it on any mesh from one rules table; activations carry
logical constraints, which are no-ops outside a mesh context.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype
xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def constrain(x, axes: Tuple[Optional[str], ...]):
  """Logical sharding constraint on an activation (no-op without a mesh)."""
  return nn.with_logical_constraint(x, axes)


def _einsum_f32(spec: str, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _transposed_specs(spec: str):
  """For a (batched) matrix product ``"X,Y->Z"`` (each index in at least two of X, Y,
  Z, at most once in each: batch indices in all three): the specs of the two
  gradients, ``"Z,Y->X"`` and ``"X,Z->Y"``."""
  ins, out = spec.replace(" ", "").split("->")
  x, y = ins.split(",")
  for ch in set(x + y + out):
    if (ch in x) + (ch in y) + (ch in out) < 2 or max(s.count(ch) for s in (x, y, out)) > 1:
      raise ValueError(f"einsum_f32_accumulate: {spec!r} is not a (batched) matrix product "
                       "(each index in at least two of the three operands, once each).")
  return f"{out},{y}->{x}", f"{x},{out}->{y}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_f32_accumulate(spec: str, a, b):
  """float32 ``einsum(spec, a, b)`` of two low-precision (bf16 / f16) arrays of the same
  dtype, accumulated in float32; ``spec`` a (batched) matrix product (``"mk,kn->mn"``,
  ``"bhqd,bhkd->bhqk"``). The gradients are products of the same kind (the incoming
  float32 gradient rounded to the operands' dtype first), rounded to that dtype.
  Besides the accuracy, XLA's CPU backend runs bf16 products that accumulate in float32
  at about twice the float32 rate on CPUs with AVX512-BF16, and those that round to
  bf16 no faster than float32. The float32 output lets a bias be added (and its
  gradient summed) in float32 before one rounding. A ``custom_vjp``: reverse mode
  only."""
  _transposed_specs(spec)
  return _einsum_f32(spec, a, b)


def _einsum_fwd(spec, a, b):
  return einsum_f32_accumulate(spec, a, b), (a, b)


def _einsum_bwd(spec, res, g):
  a, b = res
  spec_a, spec_b = _transposed_specs(spec)
  g = g.astype(a.dtype)
  return _einsum_f32(spec_a, g, b).astype(a.dtype), _einsum_f32(spec_b, a, g).astype(b.dtype)


einsum_f32_accumulate.defvjp(_einsum_fwd, _einsum_bwd)


def matmul_f32_accumulate(x_mk, w_kn):
  """float32 ``x @ w`` of two low-precision matrices (`einsum_f32_accumulate`)."""
  return einsum_f32_accumulate("mk,kn->mn", x_mk, w_kn)


# Autocast (torch.autocast's CPU split): inside ``with autocast(jnp.bfloat16)``, the
# matmuls of `Dense` and `attention_core` round their float32 operands to bf16 and
# accumulate in float32, and every other op (norms, softmax, GELU, modulation, the
# residual stream) stays in float32. On XLA's CPU backend elementwise ops have no bf16
# arithmetic: with bf16 activations each of them is wrapped in converts (30% of the
# DiT-S/2 bf16 step, benchmarks/compare_torch_dit.py). Read when a function is traced.
_AUTOCAST = [None]


class autocast:  # pylint: disable=invalid-name
  """Context manager: ``with autocast(jnp.bfloat16): model.apply(...)`` traces the
  products of `Dense` and `attention_core` (float32 inputs) with bf16 operands and
  float32 accumulation, float32 outputs; ``autocast(None)`` (or float32) is a no-op.
  The model is built in float32 (its ``dtype``); the paradigms enter this for
  ``config.train.autocast`` around every application of the network."""

  def __init__(self, dtype):
    dtype = None if dtype is None else jnp.dtype(dtype)
    if dtype == jnp.float32:
      dtype = None
    if dtype is not None and dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"autocast({dtype}): use bfloat16 or float16 (None / float32: off).")
    self.dtype = dtype

  def __enter__(self):
    self._saved = _AUTOCAST[0]
    _AUTOCAST[0] = self.dtype
    return self

  def __exit__(self, *exc):
    _AUTOCAST[0] = self._saved


def _low_precision(x):
  """The dtype a product with operand ``x`` runs in when it is not float32 arithmetic:
  ``x``'s own low-precision dtype, or the `autocast` dtype for float32 ``x``; None =
  plain float32."""
  if x.dtype in (jnp.bfloat16, jnp.float16):
    return x.dtype
  return _AUTOCAST[0] if x.dtype == jnp.float32 else None


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kw):
  """``nn.Dense``'s product: low-precision 2-D products through
  `matmul_f32_accumulate`, anything else as ``lax.dot_general``."""
  (contract, batch) = dimension_numbers
  low = lhs.dtype in (jnp.bfloat16, jnp.float16) and rhs.dtype == lhs.dtype
  if low and lhs.ndim == 2 and rhs.ndim == 2 and contract == ((1,), (0,)) and batch == (
      (), ()) and not kw:
    return matmul_f32_accumulate(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kw)


class Dense(nn.Module):
  """``nn.Dense`` whose kernel and bias carry logical axis names.

  Inputs with several leading axes (B, L, D) are multiplied as one (B * L, D) matrix:
  the same arithmetic, but XLA's CPU backend then lowers all three matmuls of the
  training step (forward, input and weight gradients) to its fast GEMM library; with
  the 3-D form the weight gradient (contracting B and L) falls back to a path that is
  ~2.5x slower, which cost DiT-S/2 a quarter of its CPU train step
  (benchmarks/compare_torch_dit.py). In bf16 / f16 the products accumulate in float32
  (`matmul_f32_accumulate`) and the bias is added before the one rounding to
  ``dtype``."""
  features: int
  axes: Tuple[str, str] = ("embed", "mlp")
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = xavier
  bias_init: nn.initializers.Initializer = zeros
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    lead = x.shape[:-1]
    # under `autocast` (a float32 Dense): bf16 operands (the bias too, as torch's
    # autocast rounds it), float32 product, bias sum and output
    cast = _AUTOCAST[0] if jnp.dtype(self.dtype) == jnp.float32 else None
    y = nn.Dense(
        self.features,
        use_bias=self.use_bias,
        dtype=cast or self.dtype,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, self.axes),
        bias_init=nn.with_logical_partitioning(self.bias_init, self.axes[-1:]),
        dot_general=_dense_dot_general,
    )(x.reshape((-1, x.shape[-1])) if x.ndim > 2 else x)
    y = y.astype(self.dtype)  # low precision: float32 product + bias, rounded once
    return y.reshape(lead + (self.features,)) if x.ndim > 2 else y


# XLA's CPU backend computes the gradients of a 2-D convolution whose input map is no
# larger than its kernel (a PatchGAN's stride-1 4x4 conv on a 4x4 map, a final 4x4
# VALID conv to 1x1) 20-30x slower than the forward (measured: the input gradient of
# the 4x4 conv 256->512 on 72 4x4 maps 1.2 s, its forward 27 ms). Written as im2col +
# one matmul, forward and both gradients are matmuls (51 ms there). Larger maps keep
# the convolution, which is faster on them. `small_map_im2col(False)` turns this off
# (benchmarks/small_map_conv.py measures both in one run).
_SMALL_MAP_IM2COL = [True]


class small_map_im2col:  # pylint: disable=invalid-name
  """Context manager: ``with small_map_im2col(False): ...`` traces plain convolutions
  for small maps too (read when a function is traced, not when it runs)."""

  def __init__(self, enabled: bool):
    self.enabled = bool(enabled)

  def __enter__(self):
    self._saved = _SMALL_MAP_IM2COL[0]
    _SMALL_MAP_IM2COL[0] = self.enabled

  def __exit__(self, *exc):
    _SMALL_MAP_IM2COL[0] = self._saved


_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def im2col_conv2d(x_nhwc, kernel_hwio, strides, padding, precision=None,
                  preferred_element_type=None):
  """The 2-D convolution of ``lax.conv_general_dilated`` (NHWC input, HWIO kernel, no
  dilation or groups) as im2col + one matmul: the kh * kw shifted, strided views of the
  padded input stacked on the channels, times the kernel as a (kh kw cin, cout)
  matrix. ``padding`` "SAME" / "VALID" or ((lo, hi), (lo, hi))."""
  kh, kw, cin, cout = kernel_hwio.shape
  sh, sw = strides
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x_nhwc.shape[1:3], (kh, kw), strides, padding)
  (pt, pb), (pl, pr) = padding
  x = jnp.pad(x_nhwc, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"convolution of a {x_nhwc.shape[1:3]} map padded by {padding} with a "
                     f"{kh}x{kw} kernel has no output")
  cols = jnp.concatenate([x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                          for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("nhwk,ko->nhwo", cols, kernel_hwio.reshape(kh * kw * cin, cout),
                    precision=precision, preferred_element_type=preferred_element_type)


def _has_output(lhs, rhs, strides, padding) -> bool:
  """Whether the NHWC convolution has a non-empty output map (a 1x1 map padded by 1 has
  none with a 4x4 kernel: `lax.conv_general_dilated` returns the empty array)."""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  return all(lhs.shape[1 + i] + sum(padding[i]) >= rhs.shape[i] for i in range(2))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated``, except that on XLA's CPU backend a plain 2-D NHWC
  convolution whose input map is no larger than its kernel runs as `im2col_conv2d`
  (same numbers; its gradients 20-30x faster there: see `_SMALL_MAP_IM2COL`). The
  ``conv_general_dilated`` of every jaxgen convolution (`Conv`, the tokenizers'
  ``ConvND``), so the parameters stay ``nn.Conv``'s."""
  plain = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and tuple(jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                    dimension_numbers)) == _NHWC)
  if (plain and _SMALL_MAP_IM2COL[0] and jax.default_backend() == "cpu"
      and lhs.shape[1] <= rhs.shape[0] and lhs.shape[2] <= rhs.shape[1]
      and rhs.shape[0] * rhs.shape[1] > 1 and _has_output(lhs, rhs, window_strides, padding)):
    return im2col_conv2d(lhs, rhs, tuple(window_strides), padding, precision,
                         preferred_element_type)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)


class Conv(nn.Module):
  """``nn.Conv`` (NHWC) with logical axes ``(kh, kw, conv_in, conv_out)``."""
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  padding: str = "SAME"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(
        self.features,
        self.kernel_size,
        strides=self.strides,
        padding=self.padding,
        dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(
            self.kernel_init, ("conv_h", "conv_w", "conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(zeros, ("conv_out",)),
        conv_general_dilated=conv_general_dilated,
    )(x)


class LayerNorm(nn.Module):
  """LayerNorm in float32; ``affine=False`` gives the adaLN-style bare norm."""
  affine: bool = True
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm(
        epsilon=self.epsilon, use_bias=self.affine, use_scale=self.affine,
        dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(zeros, ("norm",)),
    )(x).astype(x.dtype)


class GroupNorm(nn.Module):
  num_groups: int = 32

  @nn.compact
  def __call__(self, x):
    groups = math.gcd(self.num_groups, x.shape[-1])
    return nn.GroupNorm(
        num_groups=groups, epsilon=1e-5, dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(zeros, ("norm",)),
    )(x).astype(x.dtype)


def modulate(x_bld, shift_bd, scale_bd):
  """adaLN modulation ``x * (1 + scale) + shift`` broadcast over tokens."""
  return x_bld * (1 + scale_bd[:, None, :]) + shift_bd[:, None, :]


def norm_modulate(norm, x_bld, shift_bd, scale_bd, dtype):
  """``modulate(norm(x), shift, scale)`` computed in float32 and rounded once to
  ``dtype``: in bf16 the gradients of shift and scale (sums over the tokens) are then
  float32 sums, not the tree of bf16 partial sums XLA's CPU backend makes of them."""
  f32 = jnp.float32
  return modulate(norm(x_bld.astype(f32)), shift_bd.astype(f32),
                  scale_bd.astype(f32)).astype(dtype)


def gated(gate_bd, h_bld, dtype):
  """``gate * h`` broadcast over tokens, in float32, rounded once to ``dtype`` (as
  `norm_modulate`, for the gate's gradient)."""
  return (gate_bd.astype(jnp.float32)[:, None] * h_bld.astype(jnp.float32)).astype(dtype)


def timestep_features(t_b, dim: int, max_period: float = 10000.0):
  """Sinusoidal features of (possibly fractional) timesteps, as in DiT/ADM: [cos, sin]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t_b.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class TimestepEmbedder(nn.Module):
  """Sinusoidal features -> MLP (Linear, SiLU, Linear)."""
  hidden_size: int
  frequency_size: int = 256
  init_std: float = 0.02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t_b):
    init = nn.initializers.normal(self.init_std)
    h = timestep_features(t_b, self.frequency_size).astype(self.dtype)
    h = Dense(self.hidden_size, ("freq", "embed"), kernel_init=init, dtype=self.dtype,
              name="mlp_in")(h)
    h = nn.silu(h)
    return Dense(self.hidden_size, ("embed", "embed_out"), kernel_init=init,
                 dtype=self.dtype, name="mlp_out")(h)


class LabelEmbedder(nn.Module):
  """Class embedding table with one extra row: the null class used for CFG.

  Label ``num_classes`` is the null (unconditional) label.
  """
  num_classes: int
  hidden_size: int
  init_std: float = 0.02

  @nn.compact
  def __call__(self, labels_b):
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                     ("vocab", "embed")),
        (self.num_classes + 1, self.hidden_size))
    return jnp.take(table, labels_b, axis=0)


def _softmax_forward(logits):
  e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


@jax.custom_vjp
def softmax(logits):
  """``jax.nn.softmax`` over the last axis, with the backward pass written out: ``p *
  (g - sum(g * p))`` from the saved probabilities. Same values; on XLA's CPU backend
  attention's training step is ~30% faster with it (the generic derivative
  materialises broadcasts of the normaliser). A ``custom_vjp``: reverse mode only
  (``jax.jvp`` / ``jacfwd`` through it raise; use ``jax.nn.softmax`` there)."""
  return _softmax_forward(logits)


def _softmax_fwd(logits):
  p = _softmax_forward(logits)
  return p, p


def _softmax_bwd(p, g):
  return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def attention_core(q_blhk, k_blhk, v_blhk, mask=None, impl: str = "xla",
                   scale: Optional[float] = None):
  """softmax(scale * q k^T) v over (batch, length, heads, head_dim) inputs; ``scale``
  defaults to 1 / sqrt(head_dim).

  ``impl="xla"``: explicit einsums with heads moved next to batch, which XLA's CPU
  backend runs about twice as fast as ``jax.nn.dot_product_attention`` (measured in
  benchmarks/). ``impl="cudnn"`` / ``"dot_product_attention"``: JAX's fused attention
  (cuDNN flash attention on NVIDIA GPUs). ``mask``: boolean, True = attend.
  bf16 / f16 inputs (or float32 ones inside `autocast`): both products take operands
  of that dtype and accumulate in float32 (`einsum_f32_accumulate`), the softmax runs
  in float32, and the output has the inputs' dtype.
  """
  if impl != "xla":
    low = _low_precision(q_blhk)
    if low is not None and q_blhk.dtype == jnp.float32:  # autocast: fused kernel in bf16
      out = attention_core(q_blhk.astype(low), k_blhk.astype(low), v_blhk.astype(low), mask,
                           impl, scale)
      return out.astype(jnp.float32)
    if mask is not None:  # cuDNN wants the mask at full (q_len, kv_len), not broadcast
      mask = jnp.broadcast_to(mask, mask.shape[:2] + (q_blhk.shape[1], k_blhk.shape[1]))
    return jax.nn.dot_product_attention(
        q_blhk, k_blhk, v_blhk, mask=mask, scale=scale,
        implementation="cudnn" if impl == "cudnn" else None)
  scale = 1.0 / math.sqrt(q_blhk.shape[-1]) if scale is None else scale
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q_blhk, k_blhk, v_blhk))  # b h l k
  q = q * jnp.asarray(scale, q.dtype)
  low = _low_precision(q)
  if low is None or k.dtype != q.dtype or v.dtype != q.dtype:
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  else:  # bf16 operands, float32 accumulation (and a float32 softmax input)
    logits = einsum_f32_accumulate("bhqd,bhkd->bhqk", q.astype(low), k.astype(low))
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  probs = softmax(logits.astype(jnp.float32))
  if low is None or v.dtype != q.dtype:
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)
  else:
    out = einsum_f32_accumulate("bhqk,bhkd->bhqd", probs.astype(low),
                                v.astype(low)).astype(v.dtype)
  return jnp.swapaxes(out, 1, 2)


def causal_mask(length: int):
  """(1, 1, length, length) boolean mask: query i attends to keys 0..i."""
  return jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]


def init_kv_cache(batch: int, max_len: int, num_heads: int, head_dim: int,
                  dtype: Dtype = jnp.float32):
  """An empty KV cache of one attention layer: ``k``, ``v`` (batch, max_len, heads,
  head_dim) and ``index`` (int32 scalar), the number of positions written so far.

  The cache is a plain pytree passed in and returned (no mutable Flax collection), so
  it can live in the carry of the ``lax.scan`` sampler loop.
  """
  kv = jnp.zeros((batch, max_len, num_heads, head_dim), dtype)
  kv = constrain(kv, ("batch", "length", "act_heads", "kv"))
  return {"k": kv, "v": kv, "index": jnp.zeros((), jnp.int32)}


def kv_cache_length(cache) -> int:
  """``max_len`` of a KV cache, or of a sequence of them (one per block)."""
  if isinstance(cache, (list, tuple)):
    return min((kv_cache_length(c) for c in cache), default=0)
  return cache["k"].shape[1]


def check_cache_room(index, length: int, max_len: int) -> None:
  """Raises ValueError (at trace time) if ``length`` new positions written at ``index``
  cannot fit a cache of ``max_len``.

  Shapes are static, so ``length > max_len`` is always caught; ``index`` is checked when
  it is concrete (a Python int or a non-traced array). Inside a ``lax.scan`` the index is
  traced: the loop that owns the cache checks ``start + steps * length <= max_len`` from
  its static sizes instead (jaxgen.samplers.autoregressive), and a write that still
  overflows at run time makes the attention output NaN rather than overwriting the last
  positions (``lax.dynamic_update_slice`` would clamp it silently).
  """
  if length > max_len:
    raise ValueError(f"{length} new positions do not fit a KV cache of {max_len} "
                     "positions: build a longer cache (init_cache(..., max_len=)).")
  try:
    start = int(index)
  except TypeError:  # a tracer: checked by the owner of the loop from static sizes
    return
  if start + length > max_len:
    raise ValueError(f"Writing {length} positions at index {start} overflows the KV cache "
                     f"of {max_len} positions (would end at {start + length}).")


def update_kv_cache(cache, k_blhk, v_blhk, causal: bool = True):
  """Writes new keys/values at ``cache["index"]``; returns ``(k_all, v_all, mask,
  new_cache)`` where ``mask`` (1, 1, l, max_len) lets query ``index + i`` attend to
  cache positions ``<= index + i`` (``causal``), or to every position written so far,
  the ``l`` new ones included (``causal=False``: a block of positions that see each
  other, as VAR's scales do). Unwritten positions are never attended."""
  max_len, l = cache["k"].shape[1], k_blhk.shape[1]
  index = cache["index"]
  check_cache_room(index, l, max_len)
  zero = jnp.zeros_like(index)
  at = (zero, index, zero, zero)
  k_all = jax.lax.dynamic_update_slice(cache["k"], k_blhk.astype(cache["k"].dtype), at)
  v_all = jax.lax.dynamic_update_slice(cache["v"], v_blhk.astype(cache["v"].dtype), at)
  q_pos = index + (jnp.arange(l, dtype=jnp.int32) if causal
                   else jnp.full((l,), l - 1, jnp.int32))
  mask = (jnp.arange(max_len, dtype=jnp.int32)[None, :] <= q_pos[:, None])[None, None]
  return k_all, v_all, mask, {"k": k_all, "v": v_all, "index": index + l}


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection.

  ``mask`` is boolean, broadcastable to (batch, heads, q_len, kv_len), True = attend.
  ``cache`` (optional, from ``init_kv_cache``): attention of the ``l`` new positions
  over everything written so far, causal among them (``cache_causal``) or not; the new
  keys/values are written at ``cache["index"]`` and the call returns ``(out,
  new_cache)`` instead of ``out``. A given ``mask`` is then combined (AND) with the
  cache mask over (q_len, max_len).

  Options of VAR's attention (Tian et al. 2024): ``k_bias=False`` keeps biases on q and
  v only; ``qk_l2_norm=True`` l2-normalises q and k per head and scales the logits by a
  learned per-head ``exp(min(log_scale, log 100))`` (initialised to 4) instead of
  ``1 / sqrt(head_dim)``.
  """
  num_heads: int
  qkv_bias: bool = True
  out_init: nn.initializers.Initializer = xavier
  impl: str = "xla"
  k_bias: bool = True
  qk_l2_norm: bool = False
  cache_causal: bool = True
  kernel_init: nn.initializers.Initializer = xavier
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bld, mask=None, cache=None):
    b, l, d = x_bld.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    head_dim = d // self.num_heads
    fused_bias = self.qkv_bias and self.k_bias
    qkv = Dense(3 * d, ("embed", "qkv"), use_bias=fused_bias, kernel_init=self.kernel_init,
                dtype=self.dtype, name="qkv")(x_bld)
    if self.qkv_bias and not self.k_bias:
      init = nn.with_logical_partitioning(zeros, ("qkv",))
      q_bias, v_bias = self.param("q_bias", init, (d,)), self.param("v_bias", init, (d,))
      qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    qkv_blthk = qkv.reshape(b, l, 3, self.num_heads, head_dim)
    q, k, v = (qkv_blthk[:, :, i] for i in range(3))
    scale = None
    if self.qk_l2_norm:
      log_scale = self.param("log_scale", nn.with_logical_partitioning(
          nn.initializers.constant(math.log(4.0)), ("heads",)), (self.num_heads,))
      mul = jnp.exp(jnp.minimum(log_scale, math.log(100.0)))
      q = _l2_normalize(q) * mul[:, None].astype(q.dtype)
      k = _l2_normalize(k)
      scale = 1.0
    q = constrain(q, ("batch", "length", "act_heads", "kv"))
    if cache is not None:
      k, v, cache_mask, cache = update_kv_cache(cache, k, v, self.cache_causal)
      mask = cache_mask if mask is None else jnp.logical_and(mask, cache_mask)
      q = q.astype(k.dtype)
    out_blhk = attention_core(q, k, v, mask, self.impl, scale)
    out = out_blhk.reshape(b, l, d)
    out = Dense(d, ("qkv", "embed"), kernel_init=self.out_init, dtype=self.dtype,
                name="proj")(out)
    if cache is None:
      return out
    # An overflowing write (index traced past the static checks) poisons the output.
    out = jnp.where(cache["index"] <= cache["k"].shape[1], out, jnp.nan)
    return out, cache


class CrossAttention(nn.Module):
  """Multi-head attention of queries ``x`` (B, L, D) to a ``context`` (B, Lc, Dc):
  q from x, fused k/v from the context; ``context_mask`` (B, Lc) bool, True = attend
  (text padding is never attended). The output projection is zero-initialised (the
  branch starts switched off, as adaLN-Zero does for the others)."""
  num_heads: int
  impl: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bld, context_bcd, context_mask_bc=None):
    b, l, d = x_bld.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    hd = d // self.num_heads
    q = Dense(d, ("embed", "qkv"), dtype=self.dtype, name="q")(x_bld)
    kv = Dense(2 * d, ("embed", "qkv"), dtype=self.dtype, name="kv")(
        context_bcd.astype(self.dtype))
    q = q.reshape(b, l, self.num_heads, hd)
    kv = kv.reshape(b, kv.shape[1], 2, self.num_heads, hd)
    mask = None if context_mask_bc is None else context_mask_bc[:, None, None, :]
    out = attention_core(q, kv[:, :, 0], kv[:, :, 1], mask, self.impl).reshape(b, l, d)
    return Dense(d, ("qkv", "embed"), kernel_init=zeros, dtype=self.dtype,
                 name="proj")(out)


def _l2_normalize(x, eps: float = 1e-12):
  """x / max(|x|, eps) over the last axis (PyTorch's F.normalize)."""
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class Mlp(nn.Module):
  """Transformer MLP: Linear -> GELU (tanh; ``approximate_gelu=False``: the exact erf
  GELU of PyTorch's ``nn.GELU``, as timm's ViT blocks use) -> Linear."""
  hidden_size: int
  out_size: Optional[int] = None
  dtype: Dtype = jnp.float32
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, x):
    out = self.out_size or x.shape[-1]
    h = Dense(self.hidden_size, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = nn.gelu(h, approximate=self.approximate_gelu)
    # tokens (B, L, M), or one vector per example (B, M) (a pooled-text projection)
    axes = {2: ("batch", "act_mlp"), 3: ("batch", "length", "act_mlp")}.get(h.ndim)
    if axes:
      h = constrain(h, axes)
    return Dense(out, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class PatchEmbed(nn.Module):
  """Non-overlapping ``patch_size`` patches -> tokens (B, L, D); 2D (NHWC) or spacetime
  (NTHWC, with ``patch_size`` a (pt, ph, pw) tuple)."""
  hidden_size: int
  patch_size: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = tuple(self.patch_size)
    kernel_axes = tuple(f"patch_{i}" for i in range(len(p))) + ("conv_in", "embed")
    h = nn.Conv(
        self.hidden_size, p, strides=p, padding="VALID", dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(flat_xavier_uniform, kernel_axes),
        bias_init=nn.with_logical_partitioning(zeros, ("embed",)))(x)
    return h.reshape(h.shape[0], -1, self.hidden_size)


def flat_xavier_uniform(key, shape, dtype=jnp.float32):
  """Xavier-uniform of a conv kernel seen as a Linear layer on the flattened patch
  (fan_in = prod(kernel) * in, fan_out = out), DiT's patch-embedding init."""
  fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """1-D sin-cos embedding (MAE/DiT convention: [sin, cos])."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """2-D sin-cos position embedding (h*w, dim) as in MAE and DiT."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim % 4 == 0, got {dim}")
  gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64),
                       np.arange(grid_h, dtype=np.float64))
  emb_h = sincos_1d(dim // 2, gw)  # DiT embeds the first half with the w-grid
  emb_w = sincos_1d(dim // 2, gh)
  return np.concatenate([emb_h, emb_w], axis=1).astype(np.float32)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), with
  dropout on both residual branches (ViT / MAE / MAGE layout).

  ``post_ln``: BERT's post-LayerNorm block instead (the official MaskGIT transformer):
  x = LN(x + Attn(x)), then x = LN(x + MLP(x)); same parameters. ``ln_eps``: the
  LayerNorms' epsilon (BERT's is 1e-12).

  ``mask``: boolean attention mask broadcastable to (batch, heads, q_len, kv_len).
  ``cache``: a KV cache (``init_kv_cache``) for cached causal decoding; the block then
  returns ``(x, new_cache)``. ``approximate_gelu``: the MLP's GELU (`Mlp`).
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attn_impl: str = "xla"
  dtype: Dtype = jnp.float32
  approximate_gelu: bool = True
  post_ln: bool = False
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x_bld, mask=None, train: bool = False, cache=None):
    norm1 = LayerNorm(epsilon=self.ln_eps, name="norm1")
    norm2 = LayerNorm(epsilon=self.ln_eps, name="norm2")
    pre = (lambda n, x: x) if self.post_ln else (lambda n, x: n(x))
    post = (lambda n, x: n(x)) if self.post_ln else (lambda n, x: x)
    h = Attention(self.num_heads, impl=self.attn_impl, dtype=self.dtype, name="attn")(
        pre(norm1, x_bld), mask, cache)
    if cache is not None:
      h, cache = h
    x_bld = post(norm1, x_bld + nn.Dropout(self.dropout)(h, deterministic=not train))
    h = Mlp(self.mlp_dim, dtype=self.dtype, approximate_gelu=self.approximate_gelu,
            name="mlp")(pre(norm2, x_bld))
    x_bld = post(norm2, x_bld + nn.Dropout(self.dropout)(h, deterministic=not train))
    x_bld = constrain(x_bld, ("batch", "length", "act_embed"))
    return x_bld if cache is None else (x_bld, cache)


class Transformer(nn.Module):
  """``depth`` pre-LN blocks and a final LayerNorm; with ``post_ln``, ``depth`` BERT
  post-LN blocks and no final LayerNorm (`TransformerBlock`).

  ``cache``: a sequence of ``depth`` KV caches (one per block, ``init_kv_cache``) for
  cached causal decoding; the call then returns ``(x, new_caches)`` (a tuple).
  ``final_norm=False`` returns the last block's output without the final LayerNorm
  (MAE-style linear probing pools it). ``approximate_gelu``: the MLPs' GELU (`Mlp`).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attn_impl: str = "xla"
  dtype: Dtype = jnp.float32
  approximate_gelu: bool = True
  post_ln: bool = False
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x_bld, mask=None, train: bool = False, cache=None,
               final_norm: bool = True):
    if cache is not None and len(cache) != self.depth:
      raise ValueError(f"{len(cache)} KV caches for a transformer of depth {self.depth}.")
    new_cache = []
    for i in range(self.depth):
      block = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout, self.attn_impl,
                               self.dtype, approximate_gelu=self.approximate_gelu,
                               post_ln=self.post_ln, ln_eps=self.ln_eps, name=f"block_{i}")
      if cache is None:
        x_bld = block(x_bld, mask, train)
      else:
        x_bld, c = block(x_bld, mask, train, cache[i])
        new_cache.append(c)
    if final_norm and not self.post_ln:
      x_bld = LayerNorm(epsilon=self.ln_eps, name="norm")(x_bld)
    return x_bld if cache is None else (x_bld, tuple(new_cache))


def drop_path(x_bld, rate: float, module: nn.Module, train: bool):
  """Stochastic depth: zeroes a residual branch per example with probability ``rate``
  (and rescales the rest by 1 / (1 - rate)) in training; identity otherwise. Draws
  from the module's "dropout" rng."""
  if not train or rate <= 0.0:
    return x_bld
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate,
                              (x_bld.shape[0],) + (1,) * (x_bld.ndim - 1))
  return jnp.where(keep, x_bld / (1.0 - rate), jnp.zeros_like(x_bld))


def var_modulation_init(gate_gain: float = 1e-5, gain: float = 0.5):
  """VAR's adaLN init for a (D, 6C) modulation kernel laid out as [shift, scale, gate]
  x 2: truncated normal with std sqrt(1 / 3C) (VAR's automatic init_std), times
  ``gain`` (0.5) on shifts/scales and ``gate_gain`` (1e-5) on the gates."""

  def init(key, shape, dtype=jnp.float32):
    c = shape[-1] // 6
    std = math.sqrt(1.0 / (3 * c))
    w = nn.initializers.truncated_normal(std)(key, shape, dtype)
    gains = jnp.tile(jnp.repeat(jnp.asarray([gain, gain, gate_gain], dtype), c), 2)
    return w * gains

  return init


class AdaLNBlock(nn.Module):
  """Transformer block conditioned through adaptive LayerNorm (DiT's adaLN-Zero, VAR's
  AdaLNSelfAttn): from ``c`` (B, D), ``shift, scale, gate`` for the attention and the
  MLP branch; ``x + gate * branch(LN(x) * (1 + scale) + shift)``.

  ``modulation_init``: "zeros" (adaLN-Zero: identity at initialisation, DiT) or "var"
  (`var_modulation_init`). ``mask`` / ``cache`` / attention options as in `Attention`
  (VAR: block-causal mask, q/v-only biases, l2-normalised q/k, non-causal cache
  blocks); ``drop_path``: stochastic depth on both branches when ``train``. With a
  cache the call returns ``(x, new_cache)``.

  ``cross_attention=True`` (PixArt-alpha's text conditioning) adds ``x + CrossAttn(LN(x),
  context)`` between the self-attention and the MLP: image tokens attend to ``context``
  (B, Lc, D) where ``context_mask`` (B, Lc) is True. PixArt feeds ``x`` un-normalised;
  we pre-normalise (affine LayerNorm, as Stable Diffusion's transformer blocks do) and
  zero-initialise the output projection, so the block starts as DiT's.
  """
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attn_impl: str = "xla"
  modulation_init: str = "zeros"
  k_bias: bool = True
  qk_l2_norm: bool = False
  cache_causal: bool = True
  drop_path: float = 0.0
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x_bld, c_bd, mask=None, train: bool = False, cache=None,
               context_bld=None, context_mask_bl=None):
    inits = {"zeros": zeros, "var": var_modulation_init()}
    if self.modulation_init not in inits:
      raise ValueError(f"modulation_init={self.modulation_init!r}; use one of {sorted(inits)}.")
    mod = Dense(6 * self.hidden_size, ("embed", "mlp"),
                kernel_init=inits[self.modulation_init], dtype=self.dtype,
                name="adaLN_modulation")(nn.silu(c_bd))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)
    h = norm_modulate(LayerNorm(affine=False, name="norm1"), x_bld, shift_msa, scale_msa,
                      x_bld.dtype)
    h = Attention(self.num_heads, impl=self.attn_impl, k_bias=self.k_bias,
                  qk_l2_norm=self.qk_l2_norm, cache_causal=self.cache_causal,
                  dtype=self.dtype, name="attn")(h, mask, cache)
    if cache is not None:
      h, cache = h
    x_bld = x_bld + drop_path(gated(gate_msa, h, x_bld.dtype), self.drop_path, self, train)
    if self.cross_attention:
      if context_bld is None:
        raise ValueError("AdaLNBlock(cross_attention=True) needs context_bld (text tokens).")
      x_bld = x_bld + CrossAttention(self.num_heads, impl=self.attn_impl, dtype=self.dtype,
                                     name="cross_attn")(
          LayerNorm(name="norm_cross")(x_bld), context_bld, context_mask_bl)
    h = norm_modulate(LayerNorm(affine=False, name="norm2"), x_bld, shift_mlp, scale_mlp,
                      x_bld.dtype)
    h = Mlp(int(self.hidden_size * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    x_bld = x_bld + drop_path(gated(gate_mlp, h, x_bld.dtype), self.drop_path, self, train)
    x_bld = constrain(x_bld, ("batch", "length", "act_embed"))
    return x_bld if cache is None else (x_bld, cache)


def is_text_condition(cond) -> bool:
  """True for the text condition dict of `jaxgen.conditioning` (False: class labels)."""
  return isinstance(cond, dict) and "text_tokens" in cond


def condition_prefix(cond, *, class_embedding=None, text_projection=None,
                     num_class_tokens: int = 1, text_length: int = 0):
  """A model's condition as prefix tokens (shared by the token transformers).

  Class models (``class_embedding``: a `LabelEmbedder` of width ``num_class_tokens * D``)
  take a label array (or ``{"label": ...}``): ``num_class_tokens`` learned tokens,
  nothing masked. Text models (``text_projection``: e.g. `Mlp` to width D) take the text
  dict: the projected encoder tokens (B, L, D) and their padding mask (B, L), True =
  a real token (``text_length``: the L the model was built for, checked). Returns
  ``(prefix (B, K, D), mask (B, K) bool or None)``; a condition of the other kind is a
  ValueError naming both.
  """
  if is_text_condition(cond):
    if text_projection is None:
      raise ValueError("This model is class-conditional but got a text condition; build "
                       "it with text_length > 0 (config.text.encoder) for text.")
    have = cond["text_tokens"].shape[1]
    if text_length and have != text_length:
      raise ValueError(f"{have} text tokens per example; the model was built for "
                       f"text_length={text_length} (config.text.max_length).")
    return text_projection(cond["text_tokens"]), cond["text_mask"].astype(bool)
  if class_embedding is None:
    raise ValueError("This model is text-conditional (text_length > 0) but got class "
                     "labels; pass the text condition dict (text_tokens, text_mask, "
                     "text_pooled).")
  labels = cond["label"] if isinstance(cond, dict) else cond
  emb = class_embedding(labels)
  return emb.reshape(emb.shape[0], num_class_tokens, -1), None


def key_mask(prefix_mask, length: int):
  """(B, 1, 1, K + length) attention mask from a prefix's padding mask (None: no mask):
  queries never attend to padded prefix tokens; the ``length`` others are all real."""
  if prefix_mask is None:
    return None
  b = prefix_mask.shape[0]
  return jnp.concatenate([prefix_mask, jnp.ones((b, length), bool)], axis=1)[:, None, None]


def embedding_table(module: nn.Module, name: str, rows: int, width: int,
                    std: float = 0.02):
  """A (rows, width) embedding parameter with logical axes ("vocab", "embed")."""
  return module.param(name, nn.with_logical_partitioning(
      nn.initializers.normal(std), ("vocab", "embed")), (rows, width))


class MlmHead(nn.Module):
  """BERT's masked-token head, as in MaskGIT and MAGE: Dense -> GELU -> LayerNorm, then
  logits against the (tied) token embedding ``table`` (V, D) plus a per-token bias.
  ``epsilon``: the LayerNorm's (official MAGE's ``MlmLayer``: PyTorch's default 1e-5;
  the official MaskGIT's: 1e-12); ``approximate_gelu``: tanh GELU (the official
  MaskGIT's ``jax.nn.gelu``) instead of the exact one."""
  dtype: Dtype = jnp.float32
  epsilon: float = 1e-6
  approximate_gelu: bool = False

  @nn.compact
  def __call__(self, x_bld, table_vd):
    h = Dense(table_vd.shape[-1], ("embed", "mlp"), dtype=self.dtype, name="dense")(x_bld)
    h = LayerNorm(epsilon=self.epsilon, name="norm")(
        nn.gelu(h, approximate=self.approximate_gelu))
    bias = self.param("bias", nn.with_logical_partitioning(zeros, ("vocab",)),
                      (table_vd.shape[0],))
    logits = jnp.einsum("bld,vd->blv", h, table_vd.astype(h.dtype))
    return logits.astype(jnp.float32) + bias
