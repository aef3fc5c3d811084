"""MaskGIT iterative parallel decoding as a step function of the shared sampler loop,
and the mask schedules and random masking that training and decoding share.

Decoding (Chang et al. 2022, Algorithm 1 / the official ``parallel_decode``): start
from all-[MASK] tokens (or a partly known grid for inpainting); at step ``i`` of ``T``
predict every position, sample the unknown ones, score each sampled token by its log
probability plus Gumbel noise of temperature ``choice_temperature * (1 - r)``
(``r = (i + 1) / T``: the noise anneals linearly to zero), and re-mask the
``floor(n0 * gamma(r))`` least confident of them, where ``n0`` is the number unknown
at the start and ``gamma`` the mask schedule. Tokens fixed at an earlier step get
infinite confidence and are never re-masked; at least one token is revealed per step
and none is left masked after the last one, so the revealed counts sum to ``n0``.
MaskGIT and MAGE share this step; each passes its own ``logits_fn``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.samplers.filters import top_k_logits  # lives in filters.py; re-exported

SCHEDULES = ("cosine", "linear", "sqrt", "square", "exp", "log")


def mask_ratio(r, schedule: str = "cosine", total=None):
  """gamma(r): the fraction of tokens still masked at progress ``r`` in [0, 1].

  ``cosine`` cos(pi r / 2) (the paper's default); ``linear`` 1 - r; ``sqrt`` 1 - sqrt(r);
  ``square`` 1 - r^2; ``exp`` 1 - 2^(-log2(total) (1 - r)) and ``log`` -log2(r) / log2(total)
  (``total`` = the number of tokens). Clipped to [1e-6, 1] as the official code does.
  """
  r = jnp.asarray(r, jnp.float32)
  if schedule == "cosine":
    g = jnp.cos(math.pi / 2.0 * r)
  elif schedule == "linear":
    g = 1.0 - r
  elif schedule == "sqrt":
    g = 1.0 - jnp.sqrt(r)
  elif schedule == "square":
    g = 1.0 - r ** 2
  elif schedule in ("exp", "log"):
    if total is None:
      raise ValueError(f"mask schedule {schedule!r} needs the number of tokens (total=).")
    lt = jnp.log2(jnp.asarray(total, jnp.float32))
    g = 1.0 - jnp.exp2(-lt * (1.0 - r)) if schedule == "exp" else -jnp.log2(r) / lt
  else:
    raise ValueError(f"Unknown mask schedule {schedule!r}; use one of {', '.join(SCHEDULES)}.")
  return jnp.clip(g, 1e-6, 1.0)


def random_rank_mask(rng, num_masked_b, shape):
  """Boolean (B, N) masks with exactly ``num_masked_b[b]`` True entries per row, placed
  uniformly at random (rank of i.i.d. uniform scores below the count)."""
  scores = jax.random.uniform(rng, shape)
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < jnp.asarray(num_masked_b)[:, None]


def training_mask(rng, batch: int, num_tokens: int, schedule: str = "cosine"):
  """MaskGIT's training mask: r ~ U[0, 1) per example, ``ceil(gamma(r) N)`` (at least 1)
  random positions masked. Returns a boolean (B, N) mask."""
  r_ratio, r_pos = jax.random.split(rng)
  r = jax.random.uniform(r_ratio, (batch,))
  num = jnp.ceil(mask_ratio(r, schedule, num_tokens) * num_tokens)
  num = jnp.clip(num, 1, num_tokens).astype(jnp.int32)
  return random_rank_mask(r_pos, num, (batch, num_tokens))


def num_masked_after(step, num_steps: int, unknown_start, unknown_now,
                     schedule: str = "cosine", total=None):
  """How many tokens stay masked after decoding step ``step`` (0-based):
  ``floor(n0 gamma((step + 1) / T))`` (in real arithmetic), at most ``unknown_now - 1`` (reveal at least one),
  at least 0."""
  r = (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
  # The (1 + 1e-5) absorbs float32 rounding at exact boundaries (cos(pi/3) * 256 gives
  # 127.99998 in float32), so counts equal the real-arithmetic schedule.
  m = jnp.floor(unknown_start.astype(jnp.float32) * mask_ratio(r, schedule, total)
                * (1.0 + 1e-5))
  return jnp.maximum(0, jnp.minimum(unknown_now - 1, m.astype(jnp.int32)))


class DecodeState(NamedTuple):
  tokens: jax.Array          # (B, N) int32, mask_id where unknown
  rng: jax.Array
  unknown_start: jax.Array   # (B,) int32: unknown tokens before the first step


def init_state(tokens_bn, mask_id: int, rng) -> DecodeState:
  return DecodeState(tokens_bn.astype(jnp.int32), rng,
                     jnp.sum(tokens_bn == mask_id, axis=-1).astype(jnp.int32))


def decode_step(logits_fn: Callable[[jax.Array, jax.Array], jax.Array], *, mask_id: int,
                num_steps: int, schedule: str = "cosine", temperature: float = 1.0,
                choice_temperature: float = 4.5, top_k: int = 0):
  """The step function ``(DecodeState, i) -> DecodeState`` for ``loop.run_loop``.

  ``logits_fn(tokens (B, N), i) -> logits (B, N, V)`` is the model (with guidance, if
  any, already applied). ``temperature`` divides the logits before sampling (0 =
  argmax); ``choice_temperature`` scales the Gumbel confidence noise (the official
  default is 4.5; 0 = pure confidence); ``top_k`` > 0 samples from the k best codes.
  """

  def step(state: DecodeState, i) -> DecodeState:
    tokens = state.tokens
    rng, r_sample, r_choice = jax.random.split(state.rng, 3)
    logits = logits_fn(tokens, i).astype(jnp.float32)
    n = tokens.shape[-1]
    if temperature > 0:
      sampled = jax.random.categorical(r_sample, top_k_logits(logits / temperature, top_k))
    else:
      sampled = jnp.argmax(logits, axis=-1)
    unknown = tokens == mask_id
    sampled = jnp.where(unknown, sampled.astype(jnp.int32), tokens)
    logp = jax.nn.log_softmax(logits, axis=-1)
    conf = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
    r = (jnp.asarray(i, jnp.float32) + 1.0) / num_steps
    if choice_temperature > 0:
      conf = conf + choice_temperature * (1.0 - r) * jax.random.gumbel(r_choice, conf.shape)
    conf = jnp.where(unknown, conf, jnp.inf)
    keep_masked = num_masked_after(i, num_steps, state.unknown_start,
                                   jnp.sum(unknown, axis=-1), schedule, n)
    ranks = jnp.argsort(jnp.argsort(conf, axis=-1), axis=-1)  # 0 = least confident
    remask = ranks < keep_masked[:, None]
    return DecodeState(jnp.where(remask, mask_id, sampled), rng, state.unknown_start)

  return step

