"""Helpers shared by the benchmark scripts: timing and the machine's matmul peak."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def time_fn(fn, *args, warmup: int = 2, iters: int = 10, min_time: float = 2.0):
  """Median-free simple timer: seconds per call after ``warmup`` calls (blocks)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  n, t0 = 0, time.perf_counter()
  while n < iters or time.perf_counter() - t0 < min_time:
    jax.block_until_ready(fn(*args))
    n += 1
  return (time.perf_counter() - t0) / n


def matmul_peak(dtype=jnp.float32, n: int = 2048, min_time: float = 3.0) -> float:
  """Measured FLOP/s of a large square matmul (the machine's practical peak). Low
  precision (bf16 / f16) products accumulate in float32, as jaxgen's layers compute
  them (`layers.einsum_f32_accumulate`: on XLA's CPU backend 2-3x the rate of a bf16
  product rounded to bf16)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  low = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32 if low
                                      else None))
  best = 0.0
  for size in (n, n * 2):
    if size != n:
      a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
      b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    s = time_fn(f, a, b, iters=3, min_time=min_time)
    best = max(best, 2 * size ** 3 / s)
  return best


def flops_of(jitted, *args) -> float:
  """FLOPs of one call from XLA's cost analysis of the lowered (pre-optimisation)
  program: after compilation GPU backends hide matmuls in library calls that the
  analysis does not count."""
  lowered = jitted.lower(*args)
  cost = None
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    pass
  if not cost:
    cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))
