"""Train-step throughput and MFU against the matmul peak measured in the same run.

  python benchmarks/train_throughput.py                      # the issue's DiT-S/2 case
  python benchmarks/train_throughput.py --config configs/quickstart.py --batch 32

Prints examples/s, achieved FLOP/s (FLOPs from XLA's cost analysis of the compiled
step) and MFU = achieved / measured fp32 matmul peak. Only same-run ratios are
meaningful: machines of one kind differ by 2x in absolute speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgen import config as config_lib  # pylint: disable=wrong-import-position
from jaxgen.paradigms import base as paradigm_base  # pylint: disable=wrong-import-position
from jaxgen.train import loop  # pylint: disable=wrong-import-position


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                              "imagenet256_dit_xl2.py:variant=S/2")


def count_flops(config, batch: int) -> float:
  """FLOPs of one train step from XLA's cost analysis of the step compiled for one CPU
  device (abstract arguments, nothing allocated). GPU backends hide matmuls and
  convolutions in library calls that their cost analysis does not count, so the count
  always comes from the CPU compilation of the same program."""
  if "attn_impl" in config.model:  # fused GPU attention has no CPU lowering; same math
    config = config_lib.apply_overrides(config, [("model.attn_impl", "xla")])
  with _building(config):
    exp = loop.build_abstract(config, devices=jax.devices("cpu")[:1])
  _, jitted = loop.make_train_step(exp)
  ex = exp.paradigm.example_batch(batch)
  from jaxgen.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                            sharding=mesh_lib.batch_sharding(exp.mesh, v.ndim))
                    for k, v in ex.items()}
  return bench_utils.flops_of(jitted, exp.abstract_state, abstract_batch)


def _building(config):
  """Random latents without a tokenizer run (the default DiT case): built from the
  config alone (`shapes_only`), the step is the same; anything else as trained."""
  if config.data.name == "tokens" and not config.get("tokenizer", {}).get("workdir"):
    return paradigm_base.shapes_only()
  return contextlib.nullcontext()


def prepare(config, batch: int, with_mesh: bool = False):
  """The train step of ``config`` on a random batch: ``(run, jitted, args_of)`` (and
  the mesh, ``with_mesh``), where ``run()`` takes one step (returns the loss),
  ``jitted`` is the jitted step and ``args_of()`` its current arguments (state,
  batch)."""
  with _building(config):
    exp = loop.build_abstract(config)
  step_fn, jitted = loop.make_train_step(exp)
  state = exp.init_state()
  ex = exp.paradigm.example_batch(batch)
  rng = np.random.default_rng(0)

  def fake(v):  # random data of each field's dtype (text: embeddings, all tokens real)
    if jnp.issubdtype(v.dtype, jnp.floating):
      return rng.standard_normal(v.shape).astype(v.dtype)
    if v.dtype == jnp.bool_:
      return np.ones(v.shape, bool)
    return rng.integers(0, max(exp.paradigm.num_classes, 1), v.shape).astype(v.dtype)

  data = {k: fake(v) for k, v in ex.items()}
  from jaxgen.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  batch_arr = mesh_lib.global_batch(data, exp.mesh)
  holder = {"s": state}

  def run():
    holder["s"], m = step_fn(holder["s"], batch_arr)
    return m["loss"]

  args_of = lambda: (holder["s"], batch_arr)  # noqa: E731
  return (run, jitted, args_of, exp.mesh) if with_mesh else (run, jitted, args_of)


def measure(config, batch: int, iters: int):
  """Seconds per train step of ``config`` at ``batch`` and the step's FLOPs."""
  run, _, _ = prepare(config, batch)
  flops = count_flops(config, batch)
  sec = bench_utils.time_fn(run, iters=iters)
  return sec, flops


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help="config file[:arg]; default DiT-S/2 on 32x32x4 latents (random data)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=10)
  args, rest = p.parse_known_args()
  _, overrides = config_lib.split_overrides(rest)
  config = config_lib.load_config_file(args.config)
  config.train.batch_size = args.batch
  config.train.compute_dtype = "float32"
  if "scan_blocks" in config.model:
    # XLA's cost analysis counts a scanned loop body once: unroll so FLOPs are exact.
    config.model.scan_blocks = False
  config = config_lib.apply_overrides(config, overrides)
  # The peak in the compute dtype (bf16 runs against the bf16 matmul peak); larger
  # matrices on accelerators, where 2048^2 does not fill the chip.
  peak = bench_utils.matmul_peak(jnp.dtype(config.train.compute_dtype),
                                 n=2048 if jax.default_backend() == "cpu" else 8192)
  sec, flops = measure(config, args.batch, args.iters)
  achieved = flops / sec
  print(f"devices          {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"model            {config.model.name} {config.model.get('variant', '')}, "
        f"batch {args.batch}, {config.train.compute_dtype}")
  print(f"matmul peak      {peak / 1e9:8.1f} GFLOP/s ({config.train.compute_dtype}, "
        "measured now)")
  print(f"train step       {sec * 1e3:8.1f} ms  ({args.batch / sec:.1f} examples/s)")
  print(f"step FLOPs       {flops / 1e9:8.2f} GFLOP (XLA cost analysis)")
  print(f"achieved         {achieved / 1e9:8.1f} GFLOP/s")
  print(f"MFU              {100 * achieved / peak:8.1f} % of the measured peak")


if __name__ == "__main__":
  main()
