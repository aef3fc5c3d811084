"""Where a train step's time goes: a `jax.profiler` trace of the compiled step, its XLA
ops grouped by what they compute.

  python benchmarks/step_breakdown.py                              # DiT-S/2, fp32
  python benchmarks/step_breakdown.py --dtype bfloat16+autocast    # or bfloat16
  python benchmarks/step_breakdown.py --config configs/quickstart.py --batch 32

Runs ``--iters`` steps under the profiler, reads the per-op events of the trace
(each XLA CPU thunk is one event, named by its HLO instruction) and the compiled
program's HLO (each instruction's ``op_name``: the JAX name stack with the Flax module
path, and the primitive), and prints milliseconds per step by group: dense matmuls,
attention matmuls, softmax, GELU, norms and adaLN modulation, dtype converts, copies
and transposes, the optimizer, EMA and finite check (the ops outside the loss and its
gradient), the rest (residual and bias adds, gated branches, the loss, embeddings). A fusion is grouped by the
``op_name`` XLA kept for it (its root op), so the groups are approximate where XLA
fused across them. Run alone: other jobs on the cores change every figure.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgen import config as config_lib  # pylint: disable=wrong-import-position

GROUPS = ("dense matmuls", "attention matmuls", "attention softmax + scaling", "GELU",
          "norms + adaLN modulation", "dtype converts", "copies / transposes",
          "optimizer, EMA, finite check", "other")


def classify(op_name: str, opcode: str, name: str = "") -> str:
  """The group of one HLO instruction from its ``op_name`` metadata (the JAX name
  stack: ``jvp(...)`` / ``transpose(...)`` inside the loss and its gradient, the Flax
  module path, the primitive), its opcode and its name (XLA names fusions after what
  they fuse)."""
  prim = op_name.rsplit("/", 1)[-1]
  path = op_name.lower()
  if opcode in ("dot", "convolution") or prim.startswith("dot_general") or (
      opcode == "custom-call" and "dot" in path):
    in_attn = "/attn/" in path or "/cross_attn/" in path
    return ("attention matmuls" if in_attn and not re.search(r"/(qkv|proj|q|kv)/", path)
            else "dense matmuls")
  if op_name and "jvp(" not in path and "transpose(" not in path:
    return "optimizer, EMA, finite check"   # outside the loss and its gradient
  if prim.startswith("convert_element_type") or opcode == "convert":
    return "dtype converts"
  if opcode in ("copy", "transpose") or name.startswith(("transpose", "copy")):
    return "copies / transposes"
  if "/attn/" in path and not re.search(r"/(qkv|proj)/", path):
    return "attention softmax + scaling"
  if "/mlp/" in path and "/dense_" not in path:
    return "GELU"
  if any(k in path for k in ("norm", "modulat", "adaln")):
    return "norms + adaLN modulation"
  return "other"


def hlo_groups(hlo_text: str) -> dict:
  """HLO instruction name -> group, from the compiled module's text."""
  out = {}
  pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(")
  for line in hlo_text.splitlines():
    m = pat.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    op = re.search(r'op_name="([^"]*)"', line)
    out[name] = classify(op.group(1) if op else "", opcode, name)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=train_throughput.DEFAULT_CONFIG)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--top", type=int, default=0, help="also list the N slowest ops")
  p.add_argument("--dtype", default="float32",
                 help="float32 | bfloat16 (bf16 activations) | bfloat16+autocast")
  args, rest = p.parse_known_args()
  if args.dtype not in ("float32", "bfloat16", "bfloat16+autocast"):
    sys.exit(f"--dtype {args.dtype!r}: use float32, bfloat16 or bfloat16+autocast")
  rest, overrides = config_lib.split_overrides(rest)
  if rest:
    sys.exit(f"unknown arguments {rest}; config fields go as --config.SECTION.FIELD=VALUE")
  config = config_lib.load_config_file(args.config)
  config.train.batch_size = args.batch
  config.train.compute_dtype, _, autocast = args.dtype.partition("+")
  config.train.autocast = autocast == "autocast"
  if "scan_blocks" in config.model:
    config.model.scan_blocks = False   # one instruction per block: names stay apart
  config = config_lib.apply_overrides(config, overrides)
  run, jitted, args_of, mesh = train_throughput.prepare(config, args.batch, with_mesh=True)
  from jaxgen.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  with mesh_lib.activate(mesh):   # traced as `run` traces it (logical constraints on)
    hlo = jitted.lower(*args_of()).compile().as_text()
  groups = hlo_groups(hlo)
  for _ in range(2):
    jax.block_until_ready(run())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(args.iters):
        jax.block_until_ready(run())
    path = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ms, per_op, unmatched = collections.Counter(), collections.Counter(), 0.0
  for e in events:
    op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and op:
      t = e.get("dur", 0.0) / 1e3 / args.iters
      ms[groups.get(op, "other")] += t
      per_op[op] += t
      unmatched += 0.0 if op in groups else t
  total = sum(ms.values())
  print(f"{config.model.name} {config.model.get('variant', '')}, batch {args.batch}, "
        f"{args.dtype}: {total:.0f} ms of XLA ops a step (summed over threads)")
  for g in GROUPS:
    print(f"  {g:<26} {ms[g]:8.1f} ms  {100 * ms[g] / max(total, 1e-9):5.1f}%")
  print(f"  ({unmatched:.1f} ms of ops not found in the compiled HLO are in 'other')")
  if args.top:
    names = {m.group(1): m.group(2) for m in re.finditer(
        r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]*)"', hlo, re.M)}
    names.update({n: "(no op_name)" for n in per_op if n not in names})
    for op, t in per_op.most_common(args.top):
      print(f"  {t:8.2f} ms  {groups.get(op, 'other'):<26} {op}  {names.get(op, '')[-90:]}")


if __name__ == "__main__":
  main()
