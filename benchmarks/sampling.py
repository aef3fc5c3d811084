"""Sampling speed: images/s against the number of sampler steps, and compile time.

  python benchmarks/sampling.py                         # quickstart model, random weights
  python benchmarks/sampling.py --workdir runs/qs       # a trained run's EMA weights

The sampler is one ``lax.scan`` over steps, so compile time should stay flat as the
number of steps grows while images/s falls as 1/steps (times model calls per step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgen import config as config_lib  # pylint: disable=wrong-import-position
from jaxgen.samplers import ode  # pylint: disable=wrong-import-position
from jaxgen.train import loop  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.py"))
  p.add_argument("--workdir", default=None, help="use this run's config and EMA weights")
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--steps", default="1,2,4,8,16,32")
  p.add_argument("--solvers", default="euler,heun")
  p.add_argument("--cfg-scale", type=float, default=1.5)
  args, rest = p.parse_known_args()
  _, overrides = config_lib.split_overrides(rest)
  if args.workdir:
    from jaxgen import generate  # pylint: disable=g-import-not-at-top
    exp, state, _ = generate.load_run(args.workdir, overrides)
    params = state.ema_params
  else:
    config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
    exp = loop.build_abstract(config)
    params = exp.init_state().params
  labels = jnp.arange(args.batch, dtype=jnp.int32) % exp.paradigm.num_classes
  key = jax.random.PRNGKey(0)
  print(f"model {exp.config.model.name} {exp.config.model.get('variant', '')}, batch "
        f"{args.batch}, cfg {args.cfg_scale}, {jax.devices()[0].device_kind}")
  print(f"{'solver':>8} {'steps':>5} {'NFE':>5} {'compile s':>10} {'images/s':>10} "
        f"{'ms/NFE':>8}")
  for solver in args.solvers.split(","):
    for steps in map(int, args.steps.split(",")):
      fn = jax.jit(lambda pr, k, y, s=steps, so=solver: exp.paradigm.sample(
          pr, k, y, steps=s, solver=so, cfg_scale=args.cfg_scale))
      t0 = time.perf_counter()
      compiled = fn.lower(params, key, labels).compile()
      compile_s = time.perf_counter() - t0
      sec = bench_utils.time_fn(compiled, params, key, labels, warmup=1, iters=2,
                                min_time=1.0)
      nfe = steps * ode.MODEL_CALLS_PER_STEP[solver]
      print(f"{solver:>8} {steps:>5} {nfe:>5} {compile_s:>10.2f} {args.batch / sec:>10.1f} "
            f"{1e3 * sec / nfe:>8.1f}")


if __name__ == "__main__":
  main()
