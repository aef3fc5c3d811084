"""The ``jaxgen`` command: train, sample, eval, info, data, tokenize.

Examples:
  jaxgen train --config configs/quickstart.py --workdir runs/qs
  jaxgen train --workdir runs/qs --config.train.num_steps=3000   # continue longer
  jaxgen sample --workdir runs/qs --num 1000 --seed 0 --out runs/qs/samples.npz
  jaxgen eval --workdir runs/qs --samples runs/qs/samples.npz
  jaxgen info --config configs/imagenet256_dit_xl2.py
  jaxgen train --config configs/fmnist_vqgan.py --workdir runs/vqgan      # a tokenizer
  jaxgen eval --workdir runs/vqgan                                       # PSNR, SSIM, rFD
  jaxgen tokenize --workdir runs/vqgan --out data/fmnist_vqgan_codes     # codes, once
  jaxgen recaption --data fashion_mnist_captions --out data/fmnist_captions  # captions
  jaxgen embed-captions --config configs/fmnist_t2i.py --out data/fmnist_minilm  # once
  jaxgen sample --workdir runs/t2i --prompt "a small dark sandal" --num 8   # text runs
  jaxgen eval --workdir runs/t2i --prompt-following 1000   # class + attribute accuracy
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from jaxgen import config as config_lib


def _load_config(args, overrides):
  """Config from --config (file) or, when absent, the workdir's stored config.json."""
  if args.config:
    config = config_lib.load_config_file(args.config)
  else:
    from jaxgen.train import checkpoint  # pylint: disable=g-import-not-at-top
    stored = checkpoint.read_config(args.workdir) if getattr(args, "workdir", None) else None
    if stored is None:
      raise config_lib.ConfigError(
          "No --config given and no config.json in the workdir: pass "
          "--config NAME (e.g. quickstart) or --config path/to/config.py.")
    config = config_lib.from_dict(stored)
  return config_lib.apply_overrides(config, overrides)


def cmd_train(args, overrides):
  from jaxgen.train import loop  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides)
  config_lib.validate(config)
  t0 = time.time()
  loop.train(config, args.workdir, reset_optimizer=args.reset_optimizer)
  print(f"Training done in {time.time() - t0:.0f}s. Workdir: {args.workdir} "
        f"(samples/, metrics.jsonl, tensorboard/, checkpoints/).")


def _check_sample_args(args) -> None:
  """Refuses bad --num / --steps / --batch-size / --out before anything is loaded or
  compiled (an unwritable --out used to fail only after sampling)."""
  for flag, value in (("--num", args.num), ("--steps", args.steps),
                      ("--batch-size", args.batch_size)):
    if value is not None and value < 1:
      raise config_lib.ConfigError(f"{flag} {value}: must be at least 1.")
  if args.out:
    from jaxgen import fileio  # pylint: disable=g-import-not-at-top
    out_dir = os.path.dirname(fileio.absolute(args.out))
    try:
      fileio.makedirs(out_dir)
    except OSError as e:
      raise config_lib.ConfigError(f"--out {args.out}: cannot create its directory "
                                   f"({e.strerror}); pick another path.") from None
    if not fileio.is_remote(out_dir) and not os.access(out_dir, os.W_OK):
      raise config_lib.ConfigError(f"--out {args.out}: {out_dir} is not writable.")


def cmd_sample(args, overrides):
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  _check_sample_args(args)
  exp, state, step = generate.load_run(args.workdir, overrides, data=False)  # no data read
  nc = exp.paradigm.num_classes
  if args.label is not None and not 0 <= args.label <= nc:
    raise config_lib.ConfigError(f"--label {args.label}: this run has classes 0..{nc - 1} "
                                 f"({nc} = unconditional).")
  if exp.config.paradigm.name == "tokenizer":
    raise config_lib.ConfigError(
        f"{args.workdir} is a tokenizer run: it reconstructs rather than samples. Use "
        f"`jaxgen eval --workdir {args.workdir}` (figures) or `jaxgen tokenize`.")
  params = state.ema_params if args.params == "ema" else state.params
  kwargs = {k: v for k, v in (("steps", args.steps), ("cfg_scale", args.cfg_scale),
                              ("solver", args.solver), ("shift", args.shift)) if v is not None}
  labels = None
  if args.label is not None:
    labels = [args.label] * args.num
  prompts = _sample_prompts(args, exp)
  adm_target = _adm_target(exp) if args.format == "adm" else None  # before sampling
  t0 = time.time()
  images, labels = generate.generate(exp, params, num=args.num, seed=args.seed, labels=labels,
                                     batch_size=args.batch_size or exp.config.sample.batch_size,
                                     prompts=prompts, step=step, **kwargs)
  if adm_target is not None:
    images = generate.adm_images(images, *adm_target)
  out = args.out or os.path.join(args.workdir, f"samples_step{step}_seed{args.seed}.npz")
  ncols = nc if args.num >= nc * nc and prompts is None else None
  if prompts is not None:  # a column per prompt when they cycle evenly (<= 16 of them)
    k = len(dict.fromkeys(prompts))
    ncols = min(args.num, 10) if k == 1 else (k if args.num % k == 0 and k <= 16 else None)
  png = generate.save_samples(out, images, labels, ncols=ncols, prompts=prompts)
  h, w, c = images.shape[1:]
  print(f"Wrote {len(images)} samples ({args.format} layout, {h}x{w}x{c}) from step {step} "
        f"({args.params} weights) in {time.time() - t0:.1f}s to {out} and a grid to {png}")


def _adm_target(exp):
  """``(native_shape, pp)`` of the images behind a run (a token run's: its
  tokenizer's), for `generate.adm_images`; described, not read."""
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.paradigms import tokens  # pylint: disable=g-import-not-at-top
  image_cfg = tokens.image_data_config(exp.config)
  return datasets.describe(image_cfg).image_shape, image_cfg.get("pp", "")


def _sample_prompts(args, exp):
  """--prompt (repeated for all --num samples) or --prompts FILE (cycled to --num)."""
  prompt, path = getattr(args, "prompt", None), getattr(args, "prompts", None)
  text = getattr(exp.paradigm, "conditioner", None)
  is_text = getattr(text, "kind", "label") == "text"
  if prompt is None and path is None:
    if is_text:  # labels (--label or each class in turn) through their short captions
      print(f"{args.workdir} is a text-to-image run and no --prompt/--prompts was given: "
            "sampling each label's short caption (\"a shirt\").")
    return None
  if prompt is not None and path is not None:
    raise config_lib.ConfigError("Pass --prompt or --prompts, not both.")
  if not is_text:
    raise config_lib.ConfigError(f"{args.workdir} is not text-conditioned (no "
                                 "config.text.encoder); --prompt needs a text-to-image run.")
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  prompts = [prompt] if prompt is not None else generate.read_prompts(path)
  return [prompts[i % len(prompts)] for i in range(args.num)]


def cmd_prompt_following(args, overrides):
  """Samples from held-out prompts (captions.make_prompts) and scores them."""
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  from jaxgen.data import captions  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
  exp, state, step = generate.load_run(args.workdir, overrides)
  if getattr(exp.paradigm, "conditioner", None) is None or exp.paradigm.conditioner.kind != "text":
    raise config_lib.ConfigError(f"{args.workdir} is not a text-to-image run; "
                                 "--prompt-following needs one (configs/fmnist_t2i.py).")
  params = state.ema_params if (args.params or "ema") == "ema" else state.params
  figs = prompt_following_figures(exp, params, args.prompt_following, seed=args.seed,
                                  cfg_scale=args.cfg_scale)
  figs = {"prompt_following": figs, "step": step}
  _print_figures(figs, args.json_out)
  del evaluate, captions


def prompt_following_figures(exp, params, num: int, seed: int = 0, cfg_scale=None,
                             out_npz=None):
  """Class and attribute accuracy of ``num`` samples from ``make_prompts(num, seed)``."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  from jaxgen.data import captions, datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import classifier as clf_lib, evaluate  # pylint: disable=g-import-not-at-top
  c = exp.config
  prompts, targets = captions.make_prompts(num, seed, exp.dataset.class_names)
  kwargs = {} if cfg_scale is None else {"cfg_scale": cfg_scale}
  images, _ = generate.generate(exp, params, num=num, seed=seed, prompts=prompts,
                                labels=targets["label"], batch_size=c.sample.batch_size,
                                **kwargs)
  image_cfg = ml_collections.ConfigDict(dict(
      name=getattr(registry_dataset(c.data.name), "image_dataset", c.data.name),
      data_dir=c.data.get("data_dir", ""), source_dir=c.data.get("source_dir", "")))
  spec = datasets.get_dataset(image_cfg)
  native = evaluate.to_native(images, spec.image_shape, c.data.pp)
  if out_npz:
    generate.save_samples(out_npz, native, targets["label"], prompts=prompts)
  clf = clf_lib.load_or_train(spec, c.eval.classifier_dir)
  return captions.prompt_following(native, targets, clf)


def registry_dataset(name):
  from jaxgen import registry  # pylint: disable=g-import-not-at-top
  return registry.DATASETS.get(name)


def cmd_embed_captions(args, overrides):
  """Encodes every caption once with the config's text encoder (a cache for training)."""
  from jaxgen import conditioning  # pylint: disable=g-import-not-at-top
  from jaxgen.data import caption_embeddings, datasets  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides)
  if not conditioning.uses_text(config):
    raise config_lib.ConfigError(f"{args.config} sets no config.text.encoder: nothing to "
                                 "embed the captions with.")
  enc = conditioning.load_text_encoder(config.text)
  spec = datasets.get_dataset(config.data)
  t0 = time.time()
  entries = caption_embeddings.embed_captions(spec, config.data, enc, args.out,
                                              args.splits.split(","))
  for split, e in entries.items():
    print(f"{split}: {e['num_examples']} examples, {e['num_unique']} distinct captions")
  print(f"Embedded with {enc!r} in {time.time() - t0:.0f}s into {args.out}; train with "
        f"--config.data.embeddings_dir={args.out}")


def _print_figures(result, json_out=None):
  for name, figs in result.items():
    if isinstance(figs, dict):
      line = "  ".join(f"{k}={v:.4f}" if k != "num" else f"n={int(v)}" for k, v in figs.items())
      print(f"{name:>12}: {line}")
  print(json.dumps(result))
  if json_out:
    with open(json_out, "w") as f:
      json.dump(result, f, indent=2)


def _tokenizer_and_data(args, overrides):
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.tokenizers.base import Tokenizer  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides)
  if config.paradigm.name != "tokenizer":
    raise config_lib.ConfigError(
        f"{args.workdir} holds a {config.paradigm.name!r} run; this needs a tokenizer run "
        "(configs/fmnist_vqgan.py, _vitvq, _msvq, _vae).")
  tok = Tokenizer.from_workdir(args.workdir, params=args.params)
  return config, tok, datasets.get_dataset(config.data)


def cmd_eval_tokenizer(args, overrides):
  from jaxgen.eval import reconstruction  # pylint: disable=g-import-not-at-top
  config, tok, spec = _tokenizer_and_data(args, overrides)
  split = config.data.eval_split
  figs = reconstruction.evaluate_tokenizer(tok, spec, split=split, pp=config.data.pp,
                                           num=args.num, classifier_dir=config.eval.classifier_dir)
  _print_figures({"reconstructions_" + split: figs}, args.json_out)


def cmd_tokenize(args, overrides):
  from jaxgen.tokenizers import base, precompute  # pylint: disable=g-import-not-at-top
  config, tok, spec = _tokenizer_and_data(args, overrides)
  if tok.kind == "kl" and base.read_latent_scale(args.workdir) is None:
    scale = _fit_latent_scale(tok, spec, config, args.scale_examples)
    base.write_latent_scale(args.workdir, scale, num_examples=args.scale_examples)
    tok.latent_scale = scale
    print(f"Latent scale factor 1/std = {scale:.4f} (from {args.scale_examples} train "
          f"images), saved in {args.workdir}/{base.SCALE_FILE}")
  splits = args.splits.split(",")
  t0 = time.time()
  written = precompute.tokenize_dataset(tok, spec, pp=config.data.pp, out_dir=args.out,
                                        splits=splits, batch_size=args.batch_size)
  print(f"Wrote {written} in {time.time() - t0:.0f}s to {args.out}; train on it with "
        f"--config.data.name=tokens --config.data.data_dir={args.out}")


def _fit_latent_scale(tok, spec, config, num: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxgen.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxgen.tokenizers import base  # pylint: disable=g-import-not-at-top
  ds = pipeline.eval_dataset(spec, split=config.data.train_split, pp=config.data.pp,
                             batch_size=250)
  tok.latent_scale = 1.0
  latents, n = [], 0
  for batch in ds:
    latents.append(np.asarray(tok.encode(batch["image"])))
    n += len(batch["image"])
    if n >= num:
      break
  return base.compute_latent_scale(latents)


def cmd_linear_probe(args, overrides):
  """Linear probe on a representation-learning run's frozen features (MAGE)."""
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  from jaxgen.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import linear_probe  # pylint: disable=g-import-not-at-top
  from jaxgen.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  exp, state, step = generate.load_run(args.workdir, overrides)
  paradigm = exp.paradigm
  if not hasattr(paradigm, "features"):
    raise config_lib.ConfigError(
        f"{args.workdir} holds a {exp.config.paradigm.name!r} run, which has no "
        "representation to probe; --linear-probe needs a MAGE run (configs/fmnist_mage.py).")
  params = state.ema_params if (args.params or paradigm.default_params) == "ema" else state.params
  fn = exp.frozen.jit(lambda p, b: paradigm.features(p, paradigm.codes(b)))
  c = exp.config

  def feats(split):
    ds = pipeline.eval_dataset(exp.dataset, split=split, pp=c.data.pp, batch_size=500)
    n = exp.dataset.splits[split] if args.num is None else min(args.num, exp.dataset.splits[split])
    batches = (b for i, b in zip(range(-(-n // 500)), ds))
    with mesh_lib.activate(exp.mesh):
      x, y = linear_probe.extract(lambda b: fn(params, b), batches, desc=f"features {split}")
    return x[:n], y[:n]

  t0 = time.time()
  tr, te = feats(c.data.train_split), feats(c.data.eval_split)
  figs = linear_probe.linear_probe(*tr, *te, num_classes=paradigm.num_classes)
  print(f"Linear probe of step {step} ({time.time() - t0:.0f}s):")
  _print_figures({"linear_probe": figs}, args.json_out)


def cmd_eval(args, overrides):
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
  from jaxgen.paradigms import tokens  # pylint: disable=g-import-not-at-top
  if args.linear_probe:
    return cmd_linear_probe(args, overrides)
  if args.prompt_following:
    return cmd_prompt_following(args, overrides)
  if args.samples is None:
    return cmd_eval_tokenizer(args, overrides)
  config = _load_config(args, overrides)
  config.data = tokens.image_data_config(config)  # a token run's images: its tokenizer's
  images, labels = evaluate.load_samples(args.samples)  # a bad file stops here, at once
  spec = datasets.get_dataset(config.data)
  images, labels = evaluate.check_samples(images, labels, spec, args.samples)
  images = evaluate.to_native(images, spec.image_shape, config.data.pp)
  ev = evaluate.Evaluator(spec, config.eval.classifier_dir)
  result = {"samples": ev.figures(images, labels)}
  if args.inception_weights:
    result["samples"]["fid_inception"] = ev.inception_fid(images, args.inception_weights)
  if not args.no_reference:
    ref_split = config.data.eval_split
    result["real_" + ref_split] = ev.reference(len(images), ref_split)
    if args.inception_weights:
      real, _ = datasets.load_arrays(spec, ref_split, limit=len(images))
      result["real_" + ref_split]["fid_inception"] = ev.inception_fid(
          real, args.inception_weights)
  result["classifier_test_accuracy"] = ev.classifier.info.get("test_accuracy")
  _print_figures(result, args.json_out)


def cmd_info(args, overrides):
  from jaxgen import info  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides)  # model_info validates it, reading no data
  print(info.format_info(info.model_info(config, batch=args.batch)))


def cmd_data(args, overrides):
  """Prepares a config's dataset, or (--from-folder) a folder of images, once."""
  from jaxgen.data import datasets, folder  # pylint: disable=g-import-not-at-top
  if args.from_folder:
    if args.config or overrides:
      raise config_lib.ConfigError("`jaxgen data --from-folder DIR` takes no --config or "
                                   "--config.* overrides; its options are --out, "
                                   "--image-size, --crop, --grey, --test-fraction, --captions.")
    data_cfg = folder.data_config(args.from_folder, args.out, args.image_size, args.crop,
                                  args.grey, args.test_fraction, args.captions)
  elif args.config:
    data_cfg = _load_config(args, overrides).data
  else:
    raise config_lib.ConfigError("`jaxgen data` needs --config C (prepare C's dataset) or "
                                 "--from-folder DIR (a folder of images).")
  spec = datasets.get_dataset(data_cfg)
  print(f"{spec.name}: splits {spec.splits}, image {spec.image_shape}, "
        f"{spec.num_classes} classes, prepared in "
        f"{data_cfg.data_dir or datasets.default_data_dir()}")
  if args.from_folder:
    print(f"Classes: {', '.join(spec.class_names)}. Train any config on it with\n  "
          f"{folder.overrides_line(data_cfg)}")


def cmd_recaption(args, overrides):
  """Runs a captioner over a dataset's splits; writes <out>/<split>.jsonl + meta.json."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from jaxgen import registry  # pylint: disable=g-import-not-at-top
  from jaxgen.data import captions, datasets  # pylint: disable=g-import-not-at-top
  if overrides:
    raise config_lib.ConfigError(
        "`jaxgen recaption` takes no --config.* overrides; use --data-dir / --source-dir.")
  cls = registry.DATASETS.get(args.data)
  data_cfg = ml_collections.ConfigDict(dict(
      name=getattr(cls, "image_dataset", args.data), data_dir=args.data_dir,
      source_dir=args.source_dir))
  spec = datasets.get_dataset(data_cfg)
  if args.captioner:
    try:
      captioner = captions.load_captioner(args.captioner)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    name = args.captioner
  elif hasattr(cls, "make_captioner"):
    from jaxgen.eval import classifier as clf_lib  # pylint: disable=g-import-not-at-top
    captioner = cls.make_captioner(
        args.seed, lambda: clf_lib.load_or_train(spec, args.classifier_dir))
    name = getattr(captioner, "name", type(captioner).__name__)
  else:
    raise config_lib.ConfigError(f"{args.data} has no built-in captioner; pass "
                                 "--captioner module:attr (any (images, indices) -> "
                                 "list of str callable).")
  t0 = time.time()
  shown = []
  for split in args.splits.split(","):
    source = spec.source(split)
    n, written = len(source), []
    with tqdm(total=n, desc=f"recaption {split}", unit="img") as bar:
      for start in range(0, n, args.batch):
        indices = np.arange(start, min(n, start + args.batch))
        examples = source.__getitems__(indices.tolist()) if hasattr(
            source, "__getitems__") else [source[int(i)] for i in indices]
        batch = captioner(np.stack([e["image"] for e in examples]), indices)
        if len(batch) != len(indices):
          raise ValueError(f"Captioner {name!r} returned {len(batch)} captions for "
                           f"{len(indices)} images.")
        written.extend(batch)
        shown += [(split, int(i), int(e["label"]), c) for i, e, c in
                  zip(indices, examples, batch)][:max(0, args.show - len(shown))]
        bar.update(len(indices))
    path = captions.write_captions(args.out, split, written, captioner=name, seed=args.seed,
                                   dataset=args.data,
                                   fingerprint=captions.split_fingerprint(source))
    print(f"{split}: {n} captions -> {path}")
  print(f"Recaptioned in {time.time() - t0:.0f}s with {name} (seed {args.seed}). Examples:")
  for split, i, label, caption in shown:
    print(f"  {split}[{i}] ({captions.short_caption(label, spec.class_names)}): {caption}")
  print(f"Train on them with config.data.name={args.data!r}, config.data.captions_dir="
        f"{args.out!r} and config.data.pp starting with choose_caption(r), r = "
        "config.data.detailed_ratio.")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="jaxgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Any config field can be overridden: --config.train.num_steps=3000 "
             "--config.model.variant=S/2 ...")
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train (or resume) a model in a workdir")
  t.add_argument("--config", help="NAME[:arg] (a packaged config, e.g. quickstart) or "
                 "path.py[:arg]; default: workdir/config.json")
  t.add_argument("--workdir", required=True, help="where checkpoints, logs and samples go")
  t.add_argument("--reset-optimizer", action="store_true",
                 help="resume the parameters, EMA and data position of the newest "
                      "checkpoint with a fresh optimizer state (after changing e.g. "
                      "optim.grad_clip, which changes the optimizer state's layout)")
  t.set_defaults(fn=cmd_train)

  s = sub.add_parser("sample", help="write samples (.npz: arr_0 uint8 NHWC + labels; "
                                    "PNG grid)")
  s.add_argument("--workdir", required=True)
  s.add_argument("--num", type=int, default=100, help="number of samples")
  s.add_argument("--seed", type=int, default=0, help="same seed, same samples")
  s.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (1 = off)")
  s.add_argument("--steps", type=int, default=None, help="sampler steps")
  s.add_argument("--solver", default=None, help="ODE solver: euler | heun | midpoint")
  s.add_argument("--shift", type=float, default=None, help="time-grid shift (1 = none)")
  s.add_argument("--label", type=int, default=None, help="one class for all samples")
  s.add_argument("--prompt", default=None,
                 help="text-to-image runs: one prompt for all --num samples")
  s.add_argument("--prompts", default=None,
                 help="text-to-image runs: a file of prompts, one per line (cycled to --num)")
  s.add_argument("--params", choices=("ema", "raw"), default="ema")
  s.add_argument("--batch-size", type=int, default=None,
                 help="images per sampling call (default: config.sample.batch_size); "
                      "with --seed it fixes the samples, and the progress bar moves "
                      "once per call")
  s.add_argument("--out", default=None, help="output .npz (a .png grid is written beside)")
  s.add_argument("--format", choices=("jaxgen", "adm"), default="jaxgen",
                 help="jaxgen: the model's resolution and channels (e.g. 32x32 grey, "
                      "padded); adm: what the ADM evaluator (guided-diffusion "
                      "evaluations, used by DiT/VAR) reads, uint8 RGB at the dataset's "
                      "size (padding cropped, grey repeated). `jaxgen eval` reads both")
  s.set_defaults(fn=cmd_sample)

  e = sub.add_parser(
      "eval", help="samples: Frechet distance and classifier accuracy; tokenizer runs "
                   "(no --samples): reconstruction PSNR, SSIM, rFD, codebook usage; "
                   "--linear-probe: a MAGE run's representation")
  e.add_argument("--workdir", help="run whose config names the dataset")
  e.add_argument("--config", help="or a config file naming the dataset")
  e.add_argument("--samples", default=None,
                 help=".npz written by `jaxgen sample`; omit to evaluate the tokenizer "
                      "in --workdir on the eval split")
  e.add_argument("--num", type=int, default=None,
                 help="tokenizer eval: number of eval-split images; linear probe: "
                      "examples per split (default: all)")
  e.add_argument("--params", choices=("ema", "raw"), default=None,
                 help="tokenizer eval: weights to use (default: the paradigm's, raw)")
  e.add_argument("--no-reference", action="store_true", help="skip the real-image line")
  e.add_argument("--inception-weights", default=None,
                 help="also compute the standard Inception FID against as many real train "
                      "images, with pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                      "(or an .npz of its state dict) from this local path")
  e.add_argument("--linear-probe", action="store_true",
                 help="MAGE runs: fit a linear classifier on the frozen encoder features "
                      "of the train split (nothing masked) and report test accuracy")
  e.add_argument("--prompt-following", type=int, default=0, metavar="N",
                 help="text-to-image runs: sample N held-out prompts (captions.make_prompts)"
                      " and report class and attribute accuracy")
  e.add_argument("--seed", type=int, default=0, help="--prompt-following: prompts and noise")
  e.add_argument("--cfg-scale", type=float, default=None,
                 help="--prompt-following: guidance scale (default: the config's)")
  e.add_argument("--json-out", default=None)
  e.set_defaults(fn=cmd_eval)

  m = sub.add_parser("embed-captions",
                     help="encode every caption once with the config's frozen text encoder "
                          "(cache for text-to-image training)")
  m.add_argument("--config", required=True, help="the text-to-image experiment's config")
  m.add_argument("--out", required=True, help="cache directory (config.data.embeddings_dir)")
  m.add_argument("--splits", default="train,test", help="comma-separated splits")
  m.set_defaults(fn=cmd_embed_captions, workdir=None)

  i = sub.add_parser("info", help="parameter count and forward GFLOPs, nothing allocated")
  i.add_argument("--config", required=True)
  i.add_argument("--batch", type=int, default=1)
  i.set_defaults(fn=cmd_info)

  k = sub.add_parser("tokenize", help="encode a dataset once with a trained tokenizer "
                                      "(codes / latents for later paradigms)")
  k.add_argument("--workdir", required=True, help="the tokenizer's run")
  k.add_argument("--out", required=True, help="output directory (tokens.json + .npy files)")
  k.add_argument("--splits", default="train,test", help="comma-separated splits")
  k.add_argument("--params", choices=("ema", "raw"), default=None)
  k.add_argument("--batch-size", type=int, default=250)
  k.add_argument("--scale-examples", type=int, default=2000,
                 help="KL-VAE: train images used to fit the latent scale factor")
  k.set_defaults(fn=cmd_tokenize, config=None)

  r = sub.add_parser("recaption", help="caption a dataset with a captioner (DALL-E 3 style) "
                                       "and write the captions beside it")
  r.add_argument("--data", default="fashion_mnist_captions", help="registered dataset")
  r.add_argument("--out", required=True,
                 help="captions directory (<split>.jsonl + meta.json); the config's "
                      "data.captions_dir")
  r.add_argument("--captioner", default="",
                 help="module:attr of a captioner, (images uint8 NHWC, indices) -> list "
                      "of str, or a class making one; default: the dataset's own")
  r.add_argument("--seed", type=int, default=0, help="same seed, same captions")
  r.add_argument("--splits", default="train,test", help="comma-separated splits")
  r.add_argument("--batch", type=int, default=1000, help="images per captioner call")
  r.add_argument("--show", type=int, default=10, help="example captions to print")
  r.add_argument("--data-dir", default="", help="prepared TFDS data; default as in configs")
  r.add_argument("--source-dir", default="", help="raw files (IDX for Fashion-MNIST)")
  r.add_argument("--classifier-dir", default="",
                 help="cache of jaxgen's dataset classifiers (built-in captioner)")
  r.set_defaults(fn=cmd_recaption)

  d = sub.add_parser("data", help="prepare a config's dataset (or a folder of images) "
                                  "and print its splits")
  d.add_argument("--config", help="the config whose dataset to prepare")
  d.add_argument("--from-folder", metavar="DIR",
                 help="a folder of images: DIR/<class>/... or flat (config.data.name="
                      "folder, config.data.source_dir=DIR)")
  d.add_argument("--out", default="", metavar="DATA_DIR",
                 help="--from-folder: data dir (config.data.data_dir; default "
                      "$JAXGEN_DATA_DIR or ~/.cache/jaxgen/tfds)")
  d.add_argument("--image-size", type=int, default=32, help="--from-folder: side length")
  d.add_argument("--crop", choices=("center", "none"), default="center",
                 help="--from-folder: center (short side to the size, middle square) or "
                      "none (stretch)")
  d.add_argument("--grey", action="store_true", help="--from-folder: one grey channel")
  d.add_argument("--test-fraction", type=float, default=0.1,
                 help="--from-folder: share of images (by a hash of the path) in 'test'")
  d.add_argument("--captions", default="", metavar="FILE",
                 help="--from-folder: JSONL ({\"path\", \"caption\"}) or TSV "
                      "(path<TAB>caption), paths relative to DIR")
  d.set_defaults(fn=cmd_data)
  return p


class _DropOrbaxErrors(logging.Filter):
  """Orbax logs a failed background save with its traceback before raising it; the
  command reports the raised error in one line instead (`Checkpointer`)."""

  def filter(self, record):
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _quiet_orbax_errors() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxErrors())


def main(argv=None) -> int:
  """Runs one command. Every expected failure (a `jaxgen.errors.JaxgenError`, or a
  missing file) ends as one ``jaxgen: error: ...`` line and the error's exit code."""
  from jaxgen import errors  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else argv
  _quiet_orbax_errors()
  try:
    rest, overrides = config_lib.split_overrides(argv)
    args = build_parser().parse_args(rest)
    args.fn(args, overrides)
  except errors.JaxgenError as e:
    print(f"jaxgen: error: {e}", file=sys.stderr)
    return e.exit_code
  except FileNotFoundError as e:
    print(f"jaxgen: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
