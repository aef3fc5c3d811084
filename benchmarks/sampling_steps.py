"""Quality against the number of sampling steps: accuracy and FD of ``--num`` EMA
samples (each class in turn) of one or more trained runs at each step count, scored as
``jaxgen eval`` scores them (the classifier of the images behind the run: a latent or
token run's tokenizer's dataset). Prints a Markdown table and writes JSON lines.

  python benchmarks/sampling_steps.py --workdir runs/latent_flow --workdir runs/latent_ddpm \\
      --steps 5,10,25,50,100 --num 1000 --out runs/steps.jsonl

Times are per run and step count, measured here, one job at a time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", action="append", required=True, help="a trained run (repeat)")
  ap.add_argument("--steps", default="5,10,25,50,100", help="comma-separated step counts")
  ap.add_argument("--num", type=int, default=1000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch-size", type=int, default=None)
  ap.add_argument("--out", default="", help="JSON lines of the figures")
  ap.add_argument("--option", action="append", default=[],
                  help="a sampler option for every run, NAME=VALUE (e.g. solver=ddim, "
                       "cfg_scale=2.0); repeatable")
  args = ap.parse_args(argv)
  options = {}
  for item in args.option:
    name, _, value = item.partition("=")
    try:
      options[name] = float(value) if name in ("cfg_scale", "eta", "shift") else value
    except ValueError:
      ap.error(f"--option {item}: {name} takes a number")

  import jaxgen  # pylint: disable=g-import-not-at-top
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
  from jaxgen.paradigms import tokens  # pylint: disable=g-import-not-at-top

  rows = []
  for wd in args.workdir:
    run = jaxgen.load(wd)
    image_cfg = tokens.image_data_config(run.config)
    spec = datasets.get_dataset(image_cfg)
    ev = evaluate.Evaluator(spec, run.config.eval.classifier_dir)
    for n in [int(s) for s in args.steps.split(",")]:
      t0 = time.perf_counter()
      images, labels = run.sample(num=args.num, seed=args.seed, steps=n,
                                  batch_size=args.batch_size, **options)
      secs = time.perf_counter() - t0
      images = evaluate.to_native(images, spec.image_shape, image_cfg.get("pp", ""))
      figs = ev.figures(images, labels)
      row = dict(workdir=wd, paradigm=run.config.paradigm.name,
                 solver=options.get("solver", run.config.sample.solver),
                 cfg_scale=options.get("cfg_scale", run.config.sample.cfg_scale),
                 steps=n, accuracy=figs["accuracy"], fd=figs["fd"], num=args.num,
                 sample_seconds=secs, checkpoint_step=run.step)
      rows.append(row)
      print(json.dumps(row), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(row) + "\n")
  print("\n| run | sampler | steps | accuracy | FD | sampling time |\n|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workdir']} | {r['paradigm']} {r['solver']}, CFG {r['cfg_scale']} | "
          f"{r['steps']} | {100 * r['accuracy']:.1f}% | {r['fd']:.2f} | "
          f"{r['sample_seconds']:.0f} s |")
  return np.asarray([r["fd"] for r in rows])


if __name__ == "__main__":
  main()
