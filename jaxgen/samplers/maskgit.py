"""MaskGIT iterative parallel decoding as a step function of the shared sampler loop,
and the mask schedules and random masking that training and decoding share.

Decoding is the official ``parallel_decode.decode`` (google-research/maskgit) step for
step, checked against its outputs (tests/data/maskgit_decode_reference.json): start
from all-[MASK] tokens (or a partly known grid for inpainting); at step ``i`` of ``T``
predict every position, sample the unknown ones, score each sampled token by its log
probability plus Gumbel noise of temperature ``choice_temperature * (1 - r)``
(``r = (i + 1) / T``: the noise anneals linearly to zero), and re-mask the least
confident ``floor(n0 * gamma(r))`` of them (``n0``: the number unknown at the start;
``gamma``: the mask schedule, whose log / exp forms also use ``n0``; floored in
float32), clamped to at least 1 and at most the number still unknown minus 1; the last
step re-masks nothing. Tokens fixed at an earlier step get infinite confidence and
are never re-masked. The keys are used as the official code uses them (one split for
the draw, one for the choice noise), so with the same key and logits the draws are
the same. MaskGIT and MAGE share this step; each passes its own ``logits_fn``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.samplers.filters import top_k_logits  # lives in filters.py; re-exported

# The official schedules (``powX``: any exponent X) and jaxgen's earlier names for three
# of them.
SCHEDULES = ("cosine", "uniform", "pow0.5", "pow2", "log", "exp", "linear", "sqrt",
             "square")
_ALIASES = {"linear": "uniform", "sqrt": "pow0.5", "square": "pow2"}


def check_schedule(schedule: str) -> str:
  """The official name of ``schedule`` (``linear`` -> ``uniform``, ``sqrt`` ->
  ``pow0.5``, ``square`` -> ``pow2``); a ValueError for an unknown one."""
  name = _ALIASES.get(schedule, schedule)
  if name in ("cosine", "uniform", "log", "exp"):
    return name
  if name.startswith("pow"):
    try:
      if float(name[3:]) > 0:
        return name
    except ValueError:
      pass
  raise ValueError(f"Unknown mask schedule {schedule!r}; use one of cosine, uniform, "
                   "powX (X > 0, e.g. pow2), log, exp (or linear, sqrt, square).")


def mask_ratio(r, schedule: str = "cosine", total=None):
  """gamma(r): the fraction of tokens still masked at progress ``r`` in [0, 1], as
  the official ``mask_schedule.schedule`` computes it (float32).

  ``cosine`` cos(pi r / 2) (the paper's default); ``uniform`` 1 - r; ``powX`` 1 - r^X;
  ``exp`` 1 - 2^(-log2(total) (1 - r)) and ``log`` -log2(r) / log2(total) (``total``:
  the tokens that can be masked; per example where an array). Clipped to [1e-6, 1].
  """
  name = check_schedule(schedule)
  r = jnp.asarray(r, jnp.float32)
  if name == "cosine":
    g = jnp.cos(math.pi / 2.0 * r)
  elif name == "uniform":
    g = 1.0 - r
  elif name.startswith("pow"):
    g = 1.0 - r ** float(name[3:])
  else:
    if total is None:
      raise ValueError(f"mask schedule {schedule!r} needs the number of tokens (total=).")
    lt = jnp.log2(jnp.asarray(total, jnp.float32))
    g = 1.0 - jnp.exp2(-lt * (1.0 - r)) if name == "exp" else -jnp.log2(r) / lt
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
                     schedule: str = "cosine"):
  """How many tokens stay masked after decoding step ``step`` (0-based), as the official
  decoder computes it: ``floor(n0 gamma((step + 1) / T))`` in float32 (``n0`` =
  ``unknown_start``, also the ``total`` of the log / exp schedules), clamped to
  ``[1, unknown_now - 1]``; none after the last step (whose sampled tokens are the
  official decoder's output)."""
  r = (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
  m = jnp.floor(unknown_start.astype(jnp.float32) * mask_ratio(r, schedule, unknown_start))
  m = jnp.maximum(1, jnp.minimum(unknown_now - 1, m.astype(jnp.int32)))
  return jnp.where(jnp.asarray(step) == num_steps - 1, 0, m)


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

  check_schedule(schedule)

  def step(state: DecodeState, i) -> DecodeState:
    tokens = state.tokens
    rng, r_sample = jax.random.split(state.rng)
    rng, r_choice = jax.random.split(rng)
    logits = logits_fn(tokens, i).astype(jnp.float32)
    if temperature > 0:
      sampled = jax.random.categorical(r_sample, top_k_logits(logits / temperature, top_k))
    else:
      sampled = jnp.argmax(logits, axis=-1)
    unknown = tokens == mask_id
    sampled = jnp.where(unknown, sampled.astype(jnp.int32), tokens)
    probs = jax.nn.softmax(logits, axis=-1)
    conf = jnp.log(jnp.take_along_axis(probs, sampled[..., None], axis=-1)[..., 0])
    r = (jnp.asarray(i, jnp.float32) + 1.0) / num_steps
    if choice_temperature > 0:
      conf = conf + choice_temperature * (1.0 - r) * jax.random.gumbel(r_choice, conf.shape)
    conf = jnp.where(unknown, conf, jnp.inf)
    keep_masked = num_masked_after(i, num_steps, state.unknown_start,
                                   jnp.sum(unknown, axis=-1), schedule)
    # The official cut: below the keep_masked-th smallest confidence (ties stay known).
    cut = jnp.take_along_axis(jnp.sort(conf, axis=-1), keep_masked[:, None], axis=-1)
    return DecodeState(jnp.where(conf < cut, mask_id, sampled), rng, state.unknown_start)

  return step

