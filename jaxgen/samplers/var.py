"""VAR's next-scale sampling (Tian et al., 2024): one step per scale, coarse to fine.

Step ``k`` feeds scale ``k``'s ``s_k^2`` inputs (the start token for ``k = 0``, else the
accumulated feature map ``f_hat`` area-resized to ``s_k``), gets their logits at once
(parallel within a scale), applies classifier-free guidance, temperature, top-k and
top-p (``jaxgen.samplers.autoregressive.sample_logits``), draws the scale's codes, and
adds them to ``f_hat`` through the tokenizer (``next_input_fn``). The shapes differ per
scale, so the scales are a Python loop unrolled at trace time, not a ``lax.scan``.

Guidance follows VAR: the conditional and unconditional streams run as one batch of 2B
(both fed the conditional stream's codes) and ``uncond + w_k (cond - uncond)`` with
``w_k = 1 + (cfg_scale - 1) k / (S - 1)`` (``cfg_schedule="linear"``, VAR's rule: no
guidance at the first scale, ``cfg_scale`` at the last; VAR's ``cfg=c`` is
``cfg_scale=1+c``) or ``w_k = cfg_scale`` ("constant").

``decode_cached`` keeps a KV cache across scales; ``decode_prefix`` is its honest
uncached baseline: at every scale it re-runs the block-causal model on the scales
decoded so far (the prefix) and the new one, with the same randomness;
``decode_uncached`` runs the whole padded pyramid at every scale (the reference for
tests: it needs nothing but the training forward).
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import jax
import jax.numpy as jnp

from jaxgen.nn import layers
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers.autoregressive import sample_logits

# decode_fn(inputs_blc, labels_b, cache, scale_index) -> (logits_blv, cache)
DecodeFn = Callable[[jax.Array, jax.Array, Any, int], Tuple[jax.Array, Any]]
# logits_fn(inputs_b(L-first)c, labels_b) -> logits_bLv: the block-causal model
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]
# next_input_fn(scale_index, f_hat, codes_bss) -> (f_hat, next scale's input map)
NextInputFn = Callable[[int, jax.Array, jax.Array], Tuple[jax.Array, jax.Array]]


def guidance_scale(k: int, num_scales: int, cfg_scale: float, schedule: str = "linear"):
  """VAR's CFG weight at scale ``k``: the first scale unguided, ``cfg_scale`` at the
  last (``linear``), or ``cfg_scale`` throughout (``constant``): the shared
  `cfg.guidance_scale` with the first scale counted as step -1."""
  if schedule == "constant":
    return cfg_lib.guidance_scale(k, num_scales, cfg_scale, schedule)
  return cfg_lib.guidance_scale(k - 1, max(num_scales - 1, 1), cfg_scale, schedule)


def _draw(rng, logits_blv, scale: int, **sampling):
  b, l, v = logits_blv.shape
  codes = sample_logits(rng, logits_blv.reshape(b * l, v), **sampling)
  return codes.reshape(b, scale, scale)


def _run(scale_logits, next_input_fn: NextInputFn, labels_b, rng, *, scales: Sequence[int],
         feature_shape: Tuple[int, ...], null, cfg_scale: float = 1.0,
         cfg_schedule: str = "linear", temperature: float = 1.0, top_k: int = 0,
         top_p: float = 1.0):
  """The scale loop shared by the cached and the uncached decoder. ``scale_logits(k,
  inputs_blc, cond, codes_so_far)`` returns scale ``k``'s (2B or B, s_k^2, V) logits."""
  guided = cfg_scale != 1.0
  cond = cfg_lib.with_null(labels_b, null, cfg_scale)
  b, num = cfg_lib.batch_size(labels_b), len(scales)
  f_hat = jnp.zeros((b,) + tuple(feature_shape), jnp.float32)
  inputs, codes = None, []
  for k, s in enumerate(scales):
    rng, r_sample = jax.random.split(rng)
    logits = scale_logits(k, inputs, cond, codes)
    w = guidance_scale(k, num, cfg_scale, cfg_schedule)
    idx = _draw(r_sample, cfg_lib.combine(logits, w) if guided else logits, s, temperature=temperature,
                top_k=top_k, top_p=top_p)
    codes.append(idx)
    f_hat, nxt = next_input_fn(k, f_hat, idx)
    if k + 1 < num:
      inputs = nxt.reshape(b, -1, nxt.shape[-1])
      if guided:
        inputs = jnp.concatenate([inputs, inputs])
  return codes, f_hat


def decode_cached(decode_fn: DecodeFn, cache, next_input_fn: NextInputFn, labels_b, rng, *,
                  scales: Sequence[int], **kw) -> Tuple[List[jax.Array], jax.Array]:
  """Per-scale codes (list of (B, s, s)) and the final f_hat, with a KV cache (2B rows
  with guidance) holding the coarser scales.

  Raises:
    ValueError: at trace time, if the pyramid does not fit the cache.
  """
  total, max_len = sum(s * s for s in scales), layers.kv_cache_length(cache)
  if total > max_len:
    raise ValueError(f"Scales {tuple(scales)} need a KV cache of {total} positions; this "
                     f"one has {max_len}.")
  state = {"cache": cache}

  def scale_logits(k, inputs, cond, codes):
    del codes
    if inputs is None:
      inputs = jnp.zeros((cfg_lib.batch_size(cond), scales[0] ** 2, 1), jnp.float32)  # start
    logits, state["cache"] = decode_fn(inputs, cond, state["cache"], k)
    return logits

  return _run(scale_logits, next_input_fn, labels_b, rng, scales=scales, **kw)


def _known_inputs(teacher_forcing_fn, codes, code_dim: int, rows: int):
  """(rows, n, code_dim) teacher-forcing inputs of the scales after the first whose
  coarser codes are known (n = 0 before any), both guidance streams fed the same."""
  if not codes:
    return jnp.zeros((rows, 0, code_dim), jnp.float32)
  maps = teacher_forcing_fn(codes)
  known = jnp.concatenate([m.reshape(m.shape[0], -1, code_dim) for m in maps], axis=1)
  return known if rows == known.shape[0] else jnp.concatenate([known, known])


def decode_prefix(prefix_logits_fn, teacher_forcing_fn: Callable[[List[jax.Array]],
                                                                  List[jax.Array]],
                  next_input_fn: NextInputFn, labels_b, rng, *, scales: Sequence[int],
                  code_dim: int, **kw) -> Tuple[List[jax.Array], jax.Array]:
  """The same draws as `decode_cached`, recomputing at scale ``k`` the prefix of scales
  ``0..k`` only: ``prefix_logits_fn(inputs, cond, k + 1)`` gives the logits of those
  scales from their teacher-forcing inputs (the model's ``prefix_logits``)."""
  def scale_logits(k, inputs, cond, codes):
    del inputs
    x = _known_inputs(teacher_forcing_fn, codes, code_dim, cfg_lib.batch_size(cond))
    return prefix_logits_fn(x, cond, k + 1)[:, -scales[k] ** 2:]

  return _run(scale_logits, next_input_fn, labels_b, rng, scales=scales, **kw)


def decode_uncached(logits_fn: LogitsFn, teacher_forcing_fn: Callable[[List[jax.Array]],
                                                                       List[jax.Array]],
                    next_input_fn: NextInputFn, labels_b, rng, *, scales: Sequence[int],
                    code_dim: int, **kw) -> Tuple[List[jax.Array], jax.Array]:
  """The same draws as `decode_cached` by running the whole pyramid at every scale: the
  inputs of the scales decoded so far come from ``teacher_forcing_fn(codes)`` (the
  training path), the rest are zeros (the block-causal mask hides them)."""
  offsets = [0]
  for s in scales:
    offsets.append(offsets[-1] + s * s)
  first = scales[0] ** 2

  def scale_logits(k, inputs, cond, codes):
    del inputs
    b2 = cfg_lib.batch_size(cond)
    known = _known_inputs(teacher_forcing_fn, codes, code_dim, b2)
    x = jnp.zeros((b2, offsets[-1] - first, code_dim), jnp.float32)
    x = x.at[:, :known.shape[1]].set(known)
    return logits_fn(x, cond)[:, offsets[k]:offsets[k + 1]]

  return _run(scale_logits, next_input_fn, labels_b, rng, scales=scales, **kw)
