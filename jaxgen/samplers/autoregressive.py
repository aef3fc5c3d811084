"""Raster-order autoregressive decoding as step functions of the shared sampler loop:
one token per step, with a KV cache (``cached_step``) or by re-running the model on the
whole sequence (``uncached_step``, the reference for tests and benchmarks).

Step ``i`` feeds the input at position ``start + i`` (the last class-prefix token for
``i = 0``, code ``i - 1`` after), takes the logits it returns for code ``i``, applies
classifier-free guidance, temperature, top-k and top-p (in that order), samples and
writes code ``i``. The carry is ``DecodeState(tokens, cache, rng)``; both steps split
the rng the same way, so with the same model they draw the same codes.

Guidance runs the conditional and unconditional streams as one batch of 2B (the cache
holds both streams; each step feeds both the same sampled code) and combines the
logits as ``jaxgen.samplers.cfg.guided`` does: ``uncond + scale * (cond - uncond)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from jaxgen.nn import layers
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import filters
from jaxgen.samplers import loop

# decode_fn(tokens_b, labels_b, cache) -> (logits_bv, cache): one cached position.
DecodeFn = Callable[[jax.Array, jax.Array, Any], Tuple[jax.Array, Any]]
# logits_fn(tokens_bn, labels_b) -> logits_bnv: the teacher-forced model.
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


class DecodeState(NamedTuple):
  tokens: jax.Array   # (B, N) int32: codes sampled so far (0 where not yet)
  cache: Any          # KV caches (2B rows with guidance); () when uncached
  rng: jax.Array


def sample_logits(rng, logits_bv, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0):
  """One code per row: argmax at ``temperature == 0``, else a draw from
  ``softmax(top_p(top_k(logits / temperature)))``."""
  logits_bv = logits_bv.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits_bv = filters.top_k_logits(logits_bv / temperature, top_k)
  logits_bv = filters.top_p_logits(logits_bv, top_p)
  return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)


def _previous(tokens_bn, i):
  """Code ``i - 1`` (anything at ``i = 0``, where the prefix position ignores it)."""
  return jax.lax.dynamic_index_in_dim(tokens_bn, jnp.maximum(i - 1, 0), axis=1,
                                      keepdims=False)


def _write(tokens_bn, i, code_b):
  return jax.lax.dynamic_update_index_in_dim(tokens_bn, code_b, i, axis=1)


def cached_step(decode_fn: DecodeFn, labels_b, *, null, cfg_scale: float = 1.0,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """The KV-cache step ``(DecodeState, i) -> DecodeState`` for ``loop.run_loop``.
  ``labels_b``: the condition (a label array or a text dict); ``null``: the null one."""
  cond = cfg_lib.with_null(labels_b, null, cfg_scale)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)

  def step(state: DecodeState, i) -> DecodeState:
    rng, r_sample = jax.random.split(state.rng)
    prev = _previous(state.tokens, i)
    if cfg_scale != 1.0:
      prev = jnp.concatenate([prev, prev])
    logits, cache = decode_fn(prev, cond, state.cache)
    if cfg_scale != 1.0:
      logits = cfg_lib.combine(logits, cfg_scale)
    code = sample_logits(r_sample, logits, **sampling)
    return DecodeState(_write(state.tokens, i, code), cache, rng)

  return step


def uncached_step(logits_fn: LogitsFn, labels_b, *, null, cfg_scale: float = 1.0,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """The reference step: the whole (B, N) sequence through the model at every step
  (guidance through the shared ``cfg.guided``); same rng use as ``cached_step``."""
  guided = cfg_lib.guided(logits_fn, null, cfg_scale)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)

  def step(state: DecodeState, i) -> DecodeState:
    rng, r_sample = jax.random.split(state.rng)
    logits = jax.lax.dynamic_index_in_dim(guided(state.tokens, labels_b), i, axis=1,
                                          keepdims=False)
    code = sample_logits(r_sample, logits, **sampling)
    return DecodeState(_write(state.tokens, i, code), state.cache, rng)

  return step


def decode_cached(decode_fn: DecodeFn, cache, labels_b, rng, *, num_tokens: int, start: int,
                  **step_kw):
  """Samples (B, num_tokens) codes with the KV cache; ``start`` = positions already in
  the cache (the prefix before its last token), static.

  Raises:
    ValueError: at trace time, if the ``num_tokens`` steps (one position each) would
      run past the cache: the loop's index is traced, so this is where the static
      sizes are known.
  """
  max_len = layers.kv_cache_length(cache)
  if start + num_tokens > max_len:
    raise ValueError(f"Decoding {num_tokens} tokens after {start} cached positions needs a "
                     f"KV cache of {start + num_tokens} positions; this one has {max_len}.")
  step = cached_step(decode_fn, labels_b, **step_kw)
  tokens = jnp.zeros((cfg_lib.batch_size(labels_b), num_tokens), jnp.int32)
  return loop.run_loop(step, DecodeState(tokens, cache, rng), num_tokens).tokens


def decode_uncached(logits_fn: LogitsFn, labels_b, rng, *, num_tokens: int, **step_kw):
  """Samples (B, num_tokens) codes by full recomputation at each step."""
  step = uncached_step(logits_fn, labels_b, **step_kw)
  tokens = jnp.zeros((cfg_lib.batch_size(labels_b), num_tokens), jnp.int32)
  return loop.run_loop(step, DecodeState(tokens, (), rng), num_tokens).tokens



def decode_prefix(prefix_logits_fn, labels_b, rng, *, num_tokens: int, null,
                  cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0):
  """The honest baseline of `decode_cached`: step ``i`` runs the model on the prefix and
  the ``i`` codes drawn so far only (no cache, and no padding to the full length as
  `decode_uncached` has), so it costs one forward pass over that many positions. The
  same draws as the cached step (the same rng use; guidance on one doubled batch). A
  Python loop unrolled at trace time: every step has its own length.
  ``prefix_logits_fn(codes_bi, cond) -> (B, V)`` gives the next code's logits after
  the (B, i) codes ``codes_bi`` (2B rows with guidance)."""
  cond = cfg_lib.with_null(labels_b, null, cfg_scale)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  codes = jnp.zeros((cfg_lib.batch_size(labels_b), 0), jnp.int32)
  for _ in range(num_tokens):
    rng, r_sample = jax.random.split(rng)
    x = codes if cfg_scale == 1.0 else jnp.concatenate([codes, codes])
    logits = prefix_logits_fn(x, cond)
    if cfg_scale != 1.0:
      logits = cfg_lib.combine(logits, cfg_scale)
    codes = jnp.concatenate([codes, sample_logits(r_sample, logits, **sampling)[:, None]],
                            axis=1)
  return codes
