"""A sampler's network calls a slice of the batch at a time.

A sampling chunk (``config.sample.batch_size`` images) is the unit of randomness: its
noise and per-step draws come from one key, so the same seed and chunk size give the
same samples. How many of its rows one network call evaluates is a separate, purely
computational choice: every row is denoised independently (no batch statistics), so
`split_calls` runs ``fn`` on ``rows``-row slices one after the other (``lax.map``
inside the compiled sampler) and gives the same output, up to float rounding, for any
``rows``. On CPUs a call whose activations stay in the cache is much faster than one
over the whole chunk (the quickstart U-Net: 1.6x at 100 rows against 1000); on an
accelerator the whole chunk, if it fits in memory, is usually best.
`jaxgen.generate` picks ``rows`` by measurement among those that fit
(`candidate_rows`).
"""

from __future__ import annotations

from typing import Callable, List

import jax
import jax.numpy as jnp


def divisor_at_most(n: int, m: int) -> int:
  """The largest divisor of ``n`` that is <= ``m`` (at least 1)."""
  m = max(1, min(int(m), int(n)))
  while n % m:
    m -= 1
  return m


def candidate_rows(batch: int, smallest: int = 16) -> List[int]:
  """Rows per call worth measuring for a chunk of ``batch``: for each power of two
  from ``smallest`` up, the largest divisor of ``batch`` not above it, and ``batch``
  itself; ascending, without repeats."""
  out, p = {int(batch)}, smallest
  while p < batch:
    out.add(divisor_at_most(batch, p))
    p *= 2
  return sorted(r for r in out if r >= min(smallest, batch) // 2 or r == batch)


def split_calls(fn: Callable, batch: int, rows: int) -> Callable:
  """``fn(*args)`` evaluated ``rows`` rows at a time.

  Every array leaf of ``args`` whose leading axis is ``batch`` is cut into slices of
  ``rows`` (``rows`` is first lowered to a divisor of ``batch``); the other leaves
  (a scalar time, a shared table) go to every call whole. The outputs' leaves are
  put back together along their leading axis. ``rows`` <= 0 or >= ``batch``: ``fn``
  itself.
  """
  if rows <= 0 or rows >= batch:
    return fn
  rows = divisor_at_most(batch, rows)
  n = batch // rows

  def call(*args):
    leaves, tree = jax.tree.flatten(args)
    cut = [i for i, a in enumerate(leaves) if jnp.ndim(a) and jnp.shape(a)[0] == batch]
    slices = [jnp.reshape(leaves[i], (n, rows) + jnp.shape(leaves[i])[1:]) for i in cut]

    def one(parts):
      own = list(leaves)
      for i, part in zip(cut, parts):
        own[i] = part
      return fn(*jax.tree.unflatten(tree, own))

    out = jax.lax.map(one, slices)
    return jax.tree.map(lambda o: jnp.reshape(o, (n * o.shape[1],) + o.shape[2:]), out)

  return call
