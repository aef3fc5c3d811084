"""Evaluating runs: the figures ``jaxgen eval`` prints, as functions.

`adm_figures` scores a sample batch against a reference batch as the ADM evaluator
does (FID, sFID, Inception Score, precision, recall); `sample_figures` a samples file
(Frechet distance and accuracy in the dataset's classifier, optionally the standard
Inception FID, and the same figures of as many real images; a video dataset's samples get
`video_sample_figures`); `fvd_figures` the FVD of two video files; `reconstruction_figures` a tokenizer run's reconstructions;
`prompt_following` a text-to-image run's samples of held-out prompts (class and
attribute accuracy); `linear_probe` a representation-learning run's frozen features.
Each checks that the run can do what is asked (`Paradigm.require`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from jaxgen import generate
from jaxgen.data import captions, datasets, pipeline
from jaxgen.errors import DataError
from jaxgen.eval import adm
from jaxgen.eval import classifier as clf_lib
from jaxgen.eval import evaluate, linear_probe as probe_lib, reconstruction
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base


def sample_figures(config, samples_path: str, *, inception_weights: Optional[str] = None,
                   reference: bool = True, fvd: bool = False,
                   i3d_weights: Optional[str] = None) -> Dict[str, Any]:
  """Figures of the samples in ``samples_path`` (``jaxgen sample``'s .npz, either
  layout) against the dataset ``config`` names (a token run's: its tokenizer's
  images): ``samples`` and, with ``reference``, ``real_<eval split>``. Video datasets:
  `video_sample_figures` (``fvd``, ``i3d_weights`` are for those only)."""
  data_cfg = tok_base.image_data_config(config)
  if datasets.describe(data_cfg).is_video:
    if inception_weights:
      raise DataError("--inception-weights is for image datasets; video samples get "
                      "FVD with --fvd.")
    return video_sample_figures(data_cfg, config.eval.classifier_dir, samples_path,
                                reference=reference, fvd=fvd, i3d_weights=i3d_weights)
  if fvd or i3d_weights:
    raise DataError(f"--fvd is for video datasets; {data_cfg.name} holds images.")
  images, labels = evaluate.load_samples(samples_path)  # a bad file stops here, at once
  spec = datasets.get_dataset(data_cfg)
  images, labels = evaluate.check_samples(images, labels, spec, samples_path)
  images = evaluate.to_native(images, spec.image_shape, data_cfg.pp)
  ev = evaluate.Evaluator(spec, config.eval.classifier_dir)
  result = {"samples": ev.figures(images, labels)}
  if inception_weights:
    result["samples"]["fid_inception"] = ev.inception_fid(images, inception_weights)
  if reference:
    split = data_cfg.eval_split
    result["real_" + split] = ev.reference(len(images), split)
    if inception_weights:
      real, _ = datasets.load_arrays(spec, split, limit=len(images))
      result["real_" + split]["fid_inception"] = ev.inception_fid(real, inception_weights)
  result["classifier_test_accuracy"] = ev.classifier.info.get("test_accuracy")
  return result


def _load_video_samples(samples_path: str, spec, data_cfg):
  """``(videos, labels, directions)`` of a video samples file fitted to ``spec``
  (channels as `evaluate.check_samples`, frames resized to the dataset's size);
  ``directions`` (one per video, optional) come from a direction-conditioned run."""
  videos, labels = evaluate.load_samples(samples_path, video=True)
  with np.load(samples_path) as f:
    directions = f["directions"] if "directions" in f else None
  if directions is not None and directions.shape != (len(videos),):
    raise DataError(f"{samples_path}: directions must be one integer per video, got "
                    f"{directions.shape} for {len(videos)} videos.")
  if videos.shape[1] != spec.image_shape[0]:
    raise DataError(f"{samples_path}: videos of {videos.shape[1]} frames, but "
                    f"{spec.name} (as configured) has {spec.image_shape[0]}; evaluate "
                    "samples of a run on this dataset.")
  videos, labels = evaluate.check_samples(videos, labels, spec, samples_path)
  n, t = videos.shape[:2]
  frames = evaluate.to_native(videos.reshape((n * t,) + videos.shape[2:]),
                              spec.image_shape[1:], data_cfg.pp)
  return frames.reshape((n, t) + frames.shape[1:]), labels, directions


def _video_evaluator(data_cfg, classifier_dir: str):
  """``(evaluator, spec, data_cfg)`` of the in-domain video figures of ``data_cfg``'s
  dataset (loaded with its motion labels)."""
  from jaxgen.eval import video  # pylint: disable=g-import-not-at-top
  if data_cfg.name not in video.FRAME_DATASETS:
    raise DataError(f"The in-domain video figures are defined for "
                    f"{', '.join(video.FRAME_DATASETS)}, not {data_cfg.name}; use "
                    "`jaxgen eval --suite fvd --samples S.npz --ref REAL.npz`.")
  data_cfg = data_cfg.copy_and_resolve_references()
  data_cfg.motion_labels = True
  data_cfg.label = "class"  # the classifiers learn classes (and directions) apart
  spec = datasets.get_dataset(data_cfg)
  image_spec = datasets.get_dataset(datasets.image_dataset_config(
      video.FRAME_DATASETS[data_cfg.name], data_cfg.data_dir, data_cfg.source_dir))
  ev = video.VideoEvaluator(spec, data_cfg, clf_lib.load_or_train(image_spec,
                                                                   classifier_dir),
                            classifier_dir)
  return ev, spec, data_cfg


def video_sample_figures(data_cfg, classifier_dir: str, samples_path: str, *,
                         reference: bool = True, fvd: bool = False,
                         i3d_weights: Optional[str] = None) -> Dict[str, Any]:
  """The video figures (`jaxgen.eval.video`) of the videos in ``samples_path``
  (uint8 (N, T, H, W, C), ``labels``, optionally ``directions``) and, with
  ``reference``, of as many held-out real videos (``real_<eval split>``, the floor).
  With ``fvd``, FVD (`jaxgen.eval.i3d`) of each against as many train videos."""
  from jaxgen.data import moving_fmnist  # pylint: disable=g-import-not-at-top
  from jaxgen.eval import i3d, video  # pylint: disable=g-import-not-at-top
  run_spec = datasets.describe(data_cfg)  # the run's labels (class or class_direction)
  ev, spec, data_cfg_eval = _video_evaluator(data_cfg, classifier_dir)
  videos, labels, directions = _load_video_samples(samples_path, run_spec, data_cfg)
  if data_cfg.name == "moving_fashion_mnist" and labels is not None and (
      moving_fmnist.label_mode(data_cfg) == "class_direction"):
    labels, label_directions = moving_fmnist.split_label(labels)
    directions = label_directions if directions is None else directions
  data_cfg = data_cfg_eval
  result: Dict[str, Any] = {"samples": ev.figures(videos, labels, directions)}
  split = data_cfg.eval_split
  real = None
  if reference:
    real, y, d = video.load_videos(spec, split, len(videos))
    result["real_" + split] = ev.figures(real, y, d)
  if fvd:
    feats = i3d.I3DFeatures(i3d.load_i3d_variables(i3d_weights))
    train, _, _ = video.load_videos(spec, data_cfg.train_split, len(videos))
    ref = i3d.all_process_features(feats, train, "I3D train videos")
    result["samples"]["fvd"] = i3d.fvd(
        i3d.all_process_features(feats, videos, "I3D samples"), ref)
    if real is not None:
      result["real_" + split]["fvd"] = i3d.fvd(
          i3d.all_process_features(feats, real, f"I3D {split} videos"), ref)
  result["classifier_test_accuracy"] = ev.video_clf.info.get("test_class_accuracy")
  result["classifier_test_direction_accuracy"] = ev.video_clf.info.get(
      "test_direction_accuracy")
  return result


def fvd_figures(ref_path: str, samples_path: str, i3d_weights: Optional[str] = None,
                batch_per_device: int = 2) -> Dict[str, Any]:
  """``{"fvd": {...}}``: FVD between the videos of two .npz files (``arr_0`` uint8
  (N, T, H, W, C) each), I3D features sharded over this process's devices."""
  from jaxgen.eval import i3d  # pylint: disable=g-import-not-at-top
  ref, _ = evaluate.load_samples(ref_path, video=True)
  samples, _ = evaluate.load_samples(samples_path, video=True)
  feats = i3d.I3DFeatures(i3d.load_i3d_variables(i3d_weights),
                          batch_per_device=batch_per_device)
  value = i3d.fvd(i3d.all_process_features(feats, samples, "I3D samples"),
                  i3d.all_process_features(feats, ref, "I3D reference"))
  return {"fvd": {"fvd": value, "num_samples": len(samples), "num_reference": len(ref),
                  "frames": f"{samples.shape[1]}->{i3d.NUM_FRAMES}"}}


def adm_figures(ref_path: str, samples_path: str, inception_weights: str, *,
                batch_per_device: int = 16, preprocess: str = "tf",
                distances: str = "float16") -> Dict[str, Any]:
  """``{"adm": figures}`` of ``samples_path`` against ``ref_path`` (ADM batch files:
  `jaxgen.eval.adm`), features sharded over this process's devices."""
  figs = adm.evaluate(ref_path, samples_path, inception_weights,
                      batch_per_device=batch_per_device, preprocess=preprocess,
                      distances=distances)
  return {"adm": figs}


def reconstruction_figures(tok, config, num: Optional[int] = None) -> Dict[str, Any]:
  """PSNR, SSIM, rFD and code usage of the frozen tokenizer ``tok`` on ``config``'s
  eval split (``num`` images; None = all); a video tokenizer's rFD in the video
  figures' classifiers (``rfd_video``, ``rfd_frame``) and its reconstructions'
  accuracies (``rframe_accuracy``, ``rclass_accuracy``, ``rdirection_accuracy`` where
  the labels hold directions, ``rtemporal_consistency``), each beside the originals'."""
  spec = datasets.get_dataset(config.data)
  split = config.data.eval_split
  figures_fn = (_video_reconstruction_figures(config.data, config.eval.classifier_dir)
                if spec.is_video else None)
  figs = reconstruction.evaluate_tokenizer(tok, spec, split=split, pp=config.data.pp,
                                           num=num, classifier_dir=config.eval.classifier_dir,
                                           figures_fn=figures_fn)
  return {"reconstructions_" + split: figs}


def _video_reconstruction_figures(data_cfg, classifier_dir: str):
  """``figures_fn(uint8 videos, labels)`` of `reconstruction.evaluate_tokenizer`: the
  video figures (FD in the video classifier and, per frame, the image classifier;
  accuracies), joint class_direction labels scored apart as for samples."""
  from jaxgen.data import moving_fmnist  # pylint: disable=g-import-not-at-top
  ev, _, _ = _video_evaluator(data_cfg, classifier_dir)
  split_labels = (data_cfg.name == "moving_fashion_mnist"
                  and moving_fmnist.label_mode(data_cfg) == "class_direction")

  def figures_fn(videos, labels):
    directions = None
    if labels is not None and split_labels:
      labels, directions = moving_fmnist.split_label(labels)
    figs = ev.figures(videos, labels, directions)
    return {k: figs[k] for k in ("fd_video", "fd_frame", "frame_accuracy", "class_accuracy",
                                 "direction_accuracy", "temporal_consistency") if k in figs}
  return figures_fn


def prompt_following(exp, params, num: int, seed: int = 0, out_npz: Optional[str] = None,
                     **sample_options) -> Dict[str, float]:
  """Class and attribute accuracy of ``num`` samples of the held-out prompts
  ``captions.make_prompts(num, seed)``, scored by the dataset's classifier."""
  exp.paradigm.require("prompts", "--prompt-following", exp.config)
  c = exp.config
  prompts, targets = captions.make_prompts(num, seed, exp.dataset.class_names)
  images, _ = generate.generate(exp, params, num=num, seed=seed, prompts=prompts,
                                labels=targets["label"], batch_size=c.sample.batch_size,
                                **sample_options)
  spec = datasets.get_dataset(datasets.image_dataset_config(
      c.data.name, c.data.data_dir, c.data.source_dir))
  native = evaluate.to_native(images, spec.image_shape, c.data.pp)
  if out_npz:
    generate.save_samples(out_npz, native, targets["label"], prompts=prompts)
  clf = clf_lib.load_or_train(spec, c.eval.classifier_dir)
  return captions.prompt_following(native, targets, clf)


def linear_probe(exp, params, num: Optional[int] = None, batch_size: int = 500
                 ) -> Dict[str, float]:
  """Test accuracy of a linear classifier fit on the frozen features
  (``paradigm.features``: nothing masked) of the train split's first ``num`` examples
  (None = all), evaluated on the eval split's."""
  paradigm = exp.paradigm
  paradigm.require("features", "--linear-probe", exp.config)
  fn = exp.frozen.jit(lambda p, b: paradigm.features(p, paradigm.codes(b)))
  c = exp.config

  def feats(split):
    ds = pipeline.eval_dataset(exp.dataset, split=split, pp=c.data.pp, batch_size=batch_size)
    n = exp.dataset.splits[split] if num is None else min(num, exp.dataset.splits[split])
    batches = (b for _, b in zip(range(-(-n // batch_size)), ds))
    with mesh_lib.activate(exp.mesh):
      x, y = probe_lib.extract(lambda b: fn(params, b), batches, desc=f"features {split}")
    return x[:n], y[:n]

  train, test = feats(c.data.train_split), feats(c.data.eval_split)
  return probe_lib.linear_probe(*train, *test, num_classes=paradigm.num_classes)
