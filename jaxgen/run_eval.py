"""Evaluating runs: the figures ``jaxgen eval`` prints, as functions.

`adm_figures` scores a sample batch against a reference batch as the ADM evaluator
does (FID, sFID, Inception Score, precision, recall); `sample_figures` a samples file
(Frechet distance and accuracy in the dataset's classifier, optionally the standard
Inception FID, and the same figures of as many real images); `reconstruction_figures` a tokenizer run's reconstructions;
`prompt_following` a text-to-image run's samples of held-out prompts (class and
attribute accuracy); `linear_probe` a representation-learning run's frozen features.
Each checks that the run can do what is asked (`Paradigm.require`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from jaxgen import generate
from jaxgen.data import captions, datasets, pipeline
from jaxgen.eval import adm
from jaxgen.eval import classifier as clf_lib
from jaxgen.eval import evaluate, linear_probe as probe_lib, reconstruction
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base


def sample_figures(config, samples_path: str, *, inception_weights: Optional[str] = None,
                   reference: bool = True) -> Dict[str, Any]:
  """Figures of the samples in ``samples_path`` (``jaxgen sample``'s .npz, either
  layout) against the dataset ``config`` names (a token run's: its tokenizer's
  images): ``samples`` and, with ``reference``, ``real_<eval split>``."""
  data_cfg = tok_base.image_data_config(config)
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
  eval split (``num`` images; None = all)."""
  spec = datasets.get_dataset(config.data)
  split = config.data.eval_split
  figs = reconstruction.evaluate_tokenizer(tok, spec, split=split, pp=config.data.pp,
                                           num=num, classifier_dir=config.eval.classifier_dir)
  return {"reconstructions_" + split: figs}


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
