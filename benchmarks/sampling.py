"""Sampling speed: images/s against the number of sampler steps, and compile time.

  python benchmarks/sampling.py                         # quickstart model, random weights
  python benchmarks/sampling.py --workdir runs/qs       # a trained run's EMA weights
  python benchmarks/sampling.py --workdir runs/maskgit  # token paradigms: cost of decoding
                                                        # in forward passes (MaskGIT, MAGE)
  python benchmarks/sampling.py --workdir runs/ar --compare runs/maskgit --steps 8
      # raster AR: tokens/s of KV-cache decoding against recomputing the prefix (and,
      # beside it, the whole padded sequence) at every step (same draws), then each
      # --compare run on the same batch in the same process, and one summary table of
      # every row (AR cached / prefix / full vs MaskGIT)
  python benchmarks/sampling.py --rows --batch 500      # the quickstart's sampling: one
      # chunk of 500 images (20 Euler steps, CFG 2.5 as configured) at each number of
      # rows per network call (jaxgen.samplers.microbatch), images/s, GFLOP/s and the
      # speed-up over one call on the whole chunk (what jaxgen sample did before)
  python benchmarks/sampling.py --workdir runs/var --compare runs/maskgit,runs/ar --steps 8
      # VAR: the same, one step per scale (KV cache vs recomputing the scales decoded
      # so far, and vs the whole padded pyramid, at every scale)

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
  p.add_argument("--compare", default="",
                 help="comma list of further token-paradigm workdirs (e.g. a MaskGIT run "
                      "beside an AR one), or config files (random weights on random "
                      "codes), benchmarked on the same batch in this run")
  p.add_argument("--rows", action="store_true",
                 help="continuous paradigms: time the configured sampler (steps, solver, "
                      "cfg_scale of config.sample) on one chunk of --batch images at "
                      "each candidate number of rows per network call")
  p.add_argument("--token-grid", type=int, default=0,
                 help="token configs with random weights: decode a G x G grid (random "
                      "codes are written to a temporary tokens directory; no tokenizer)")
  args, rest = p.parse_known_args()
  _, overrides = config_lib.split_overrides(rest)
  if args.token_grid:
    overrides = list(overrides) + _random_token_data(args.token_grid)
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
  if hasattr(exp.paradigm, "sample_tokens"):
    rows = _token_rows(exp, params, key, labels, args)
    for wd in filter(None, args.compare.split(",")):
      rows += _compare_rows(wd, key, labels, args)
    if args.compare:
      _summary(rows)
    return
  if args.rows:
    rows_table(exp, params, key, labels)
    return
  print(f"{'solver':>8} {'steps':>5} {'NFE':>5} {'compile s':>10} {'images/s':>10} "
        f"{'ms/NFE':>8}")
  for solver in args.solvers.split(","):
    for steps in map(int, args.steps.split(",")):
      fn = exp.frozen.jit(lambda pr, k, y, s=steps, so=solver: exp.paradigm.sample(
          pr, k, y, steps=s, solver=so, cfg_scale=args.cfg_scale))
      t0 = time.perf_counter()
      compiled = fn.lower(params, key, labels).compile()
      compile_s = time.perf_counter() - t0
      sec = bench_utils.time_fn(compiled, params, key, labels, warmup=1, iters=2,
                                min_time=1.0)
      nfe = steps * ode.MODEL_CALLS_PER_STEP[solver]
      print(f"{solver:>8} {steps:>5} {nfe:>5} {compile_s:>10.2f} {args.batch / sec:>10.1f} "
            f"{1e3 * sec / nfe:>8.1f}")


def rows_table(exp, params, key, labels):
  """The configured sampler on one chunk at each candidate rows-per-call (the samples
  are the same: tests/test_flow.py), with GFLOP/s from the network's forward FLOPs
  (`jaxgen.info`) times the network rows evaluated."""
  from jaxgen import info as info_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.samplers import microbatch  # pylint: disable=g-import-not-at-top
  o = exp.paradigm.sample_options()
  batch = labels.shape[0]
  flops = info_lib.model_info(exp.config)["flops_per_example"]
  calls = o.steps * ode.MODEL_CALLS_PER_STEP.get(getattr(o, "solver", ""), 1)
  net_rows = batch * calls * (1 if o.cfg_scale == 1.0 else 2)
  print(f"{batch} images, {o.steps} steps of {getattr(o, 'solver', '?')}, cfg "
        f"{o.cfg_scale}: {net_rows} network rows of {flops / 1e9:.2f} GFLOP")
  print(f"{'rows/call':>9} {'compile s':>10} {'images/s':>10} {'GFLOP/s':>8} {'speed-up':>9}")
  whole = None
  for rows in reversed(microbatch.candidate_rows(batch)):
    fn = exp.frozen.jit(lambda pr, k, y, r=rows: exp.paradigm.sample(pr, k, y, o.replace(
        exp.config.paradigm.name, micro_batch=r)))
    t0 = time.perf_counter()
    compiled = fn.lower(params, key, labels).compile()
    compile_s = time.perf_counter() - t0
    sec = bench_utils.time_fn(compiled, params, key, labels, warmup=1, iters=1, min_time=0)
    whole = whole or sec
    print(f"{rows:>9} {compile_s:>10.2f} {batch / sec:>10.2f} "
          f"{net_rows * flops / sec / 1e9:>8.1f} {whole / sec:>9.2f}", flush=True)


def _random_token_data(g: int, vocab: int = 512, n: int = 64):
  """Overrides pointing a token config at random (g, g) codes of ``vocab`` entries."""
  import json  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  d = tempfile.mkdtemp(prefix="jaxgen_bench_tokens_")
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    np.save(os.path.join(d, f"{split}_codes.npy"), rng.integers(0, vocab, (n, g, g), np.int32))
    np.save(os.path.join(d, f"{split}_labels.npy"), rng.integers(0, 10, n).astype(np.int32))
  meta = dict(kind="vq", code_shape=[g, g], vocab_size=vocab, grid_shape=[g, g],
              latent_scale=1.0, tokenizer_workdir=None, source_dataset="random",
              num_classes=10, class_names=[str(i) for i in range(10)],
              splits={"train": n, "test": n})
  with open(os.path.join(d, "tokens.json"), "w") as f:
    json.dump(meta, f)
  return [("data.data_dir", d), ("model.grid_size", f"({g}, {g})"),
          ("model.codebook_size", str(vocab)), ("tokenizer.workdir", "")]


def token_table(exp, params, key, labels, args):
  """Token paradigms: decoding cost in forward passes of the model on the full grid.

  ``fwd equiv`` = decode time / time of one forward pass on the same batch, measured
  in this run: MaskGIT's T-step decoding should cost about T forward passes (twice that
  with guidance), however many tokens the grid has.
  """
  p = exp.paradigm
  rows = []
  tokens = jnp.full((args.batch, p.num_tokens), p.mask_id, jnp.int32)
  fwd = jax.jit(lambda pr, t, y: p.logits(pr, t, y))
  t_fwd = bench_utils.time_fn(fwd, params, tokens, labels, warmup=1, iters=3, min_time=1.0)
  print(f"{p.num_tokens} tokens per image; one forward pass {1e3 * t_fwd:.1f} ms")
  print(f"{'steps':>5} {'cfg':>4} {'compile s':>10} {'images/s':>10} {'tokens/s':>10} "
        f"{'fwd equiv':>10}")
  for cfg in sorted({1.0, args.cfg_scale}):
    for steps in map(int, args.steps.split(",")):
      fn = exp.frozen.jit(lambda pr, k, y, s=steps, c=cfg: p.sample_tokens(pr, k, y, steps=s,
                                                                    cfg_scale=c))
      t0 = time.perf_counter()
      compiled = fn.lower(params, key, labels).compile()
      compile_s = time.perf_counter() - t0
      sec = bench_utils.time_fn(compiled, params, key, labels, warmup=1, iters=2,
                                min_time=1.0)
      print(f"{steps:>5} {cfg:>4.1f} {compile_s:>10.2f} {args.batch / sec:>10.1f} "
            f"{args.batch * p.num_tokens / sec:>10.0f} {sec / t_fwd:>10.2f}")
      rows.append((exp.config.paradigm.name, f"{steps} steps", cfg, args.batch / sec,
                   args.batch * p.num_tokens / sec))
  return rows


def _compare_rows(workdir, key, labels, args):
  """The table of a further token run (a workdir: its EMA weights; or a config file with
  random weights on random 8x8 codes, ``--token-grid`` or 8: decoding time does not
  depend on the weights), on the same batch."""
  if workdir.endswith(".py"):
    config = config_lib.apply_overrides(config_lib.load_config_file(workdir),
                                        _random_token_data(args.token_grid or 8))
    exp = loop.build_abstract(config)
    params = exp.init_state().params
  else:
    from jaxgen import generate  # pylint: disable=g-import-not-at-top
    exp, state, _ = generate.load_run(workdir)
    params = state.ema_params
  print(f"\n{workdir}: model {exp.config.model.name} {exp.config.model.get('variant', '')}, "
        f"batch {args.batch}")
  return _token_rows(exp, params, key, labels, args)


def _token_rows(exp, params, key, labels, args):
  if hasattr(exp.paradigm, "sample_tokens_uncached"):
    return ar_table(exp, params, key, labels, args)
  return token_table(exp, params, key, labels, args)


def ar_table(exp, params, key, labels, args):
  """Raster AR and VAR: KV-cache decoding against recomputation at every step, same
  batch and same draws (they give identical codes; tests/test_autoregressive.py,
  tests/test_var.py). AR takes one step per token, VAR one per scale. Baselines:
  ``prefix`` (each step runs only what is decoded so far: raster AR the class prefix and
  the codes, VAR the coarser scales and the new one; the honest one) and ``full`` (the
  whole padded sequence at every step); ``speed-up`` = baseline time / cached time."""
  p = exp.paradigm
  n = p.num_tokens
  steps = len(p.scales) if hasattr(p, "scales") else n
  print(f"{n} tokens per image in {steps} steps; sampling {p.config.sample.to_dict()}")
  print(f"{'decoding':>9} {'cfg':>4} {'compile s':>10} {'images/s':>10} {'tokens/s':>10} "
        f"{'speed-up':>9}")
  rows = []
  modes = {"cached": p.sample_tokens, "full": p.sample_tokens_uncached}
  if hasattr(p, "sample_tokens_prefix"):
    modes["prefix"] = p.sample_tokens_prefix
  for cfg in sorted({1.0, args.cfg_scale}):
    secs = {}
    for mode, sample in modes.items():
      fn = exp.frozen.jit(lambda pr, k, y, c=cfg, f=sample: f(pr, k, y, cfg_scale=c))
      t0 = time.perf_counter()
      compiled = fn.lower(params, key, labels).compile()
      compile_s = time.perf_counter() - t0
      secs[mode] = sec = bench_utils.time_fn(compiled, params, key, labels, warmup=1,
                                             iters=2, min_time=1.0)
      speedup = secs[mode] / secs["cached"]
      print(f"{mode:>9} {cfg:>4.1f} {compile_s:>10.2f} {args.batch / sec:>10.1f} "
            f"{args.batch * n / sec:>10.0f} {speedup:>9.1f}")
      rows.append((exp.config.paradigm.name, f"{mode} ({steps} steps)", cfg, args.batch / sec,
                   args.batch * n / sec))
  return rows


def _summary(rows):
  print(f"\nsummary (same batch, same process, {jax.devices()[0].device_kind})")
  print(f"{'paradigm':>15} {'decoding':>20} {'cfg':>4} {'images/s':>10} {'tokens/s':>10}")
  for name, how, cfg, ips, tps in rows:
    print(f"{name:>15} {how:>20} {cfg:>4.1f} {ips:>10.1f} {tps:>10.0f}")


if __name__ == "__main__":
  main()
