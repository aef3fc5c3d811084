"""A dataset classifier that jaxgen trains once and caches, used as a feature network.

For datasets without a standard feature network (Fashion-MNIST: Inception features
of 28x28 grey images mean little), the Frechet distance is computed in the
penultimate features of a small CNN trained on the dataset's train split, as FID uses
Inception. Its accuracy on class-conditional samples tells whether samples show the
class they were asked for.
"""

from __future__ import annotations

import json
import os
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from tqdm import tqdm

from jaxgen.data import datasets
from jaxgen.models.feature_cnn import FeatureCNN  # noqa: F401  (re-exported)

CLASSIFIER_VERSION = 2
_LOSS_EVERY = 20  # steps between loss read-outs on the progress bar


def default_dir() -> str:
  return os.environ.get("JAXGEN_CLASSIFIER_DIR", os.path.join(
      os.path.expanduser("~"), ".cache", "jaxgen", "classifiers"))


class DatasetClassifier:
  """Features and predictions of a trained FeatureCNN on native-size uint8 images."""

  def __init__(self, params, num_classes: int, info: dict):
    self.module = FeatureCNN(num_classes)
    self.params = params
    self.info = info
    self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

  def features_and_logits(self, images_uint8: np.ndarray, batch: int = 1000
                          ) -> Tuple[np.ndarray, np.ndarray]:
    feats, logits = [], []
    for i in range(0, len(images_uint8), batch):
      chunk = images_uint8[i:i + batch]
      n = len(chunk)
      if n < batch and len(images_uint8) > batch:  # pad: one compiled shape
        chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
      lo, fe = self._apply(self.params, jnp.asarray(chunk))
      feats.append(np.asarray(fe)[:n])
      logits.append(np.asarray(lo)[:n])
    return np.concatenate(feats), np.concatenate(logits)


def train_classifier(spec: datasets.DatasetSpec, *, epochs: int = 3, batch: int = 128,
                     seed: int = 0, log=print, progress: bool = True) -> DatasetClassifier:
  """Trains a FeatureCNN on the train split; reports test accuracy.

  Args:
    spec: the dataset (its train and test splits are read whole).
    epochs: passes over the train split.
    batch: examples per step (at most the train split's size).
    seed: initialisation, data order and dropout.
    log: takes a line per epoch and the test accuracy.
    progress: a progress bar over all steps on stderr (steps/s, epoch, the loss every
      ``_LOSS_EVERY`` steps): a first `jaxgen eval` trains for minutes on a CPU.

  Returns:
    The trained classifier, its test accuracy in ``info``.
  """
  x_train, y_train = datasets.load_arrays(spec, "train")
  x_test, y_test = datasets.load_arrays(spec, "test")

  def loss_fn(outputs, y):
    logits, _ = outputs
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def flip(np_rng, x):  # random horizontal flips
    f = np_rng.random(len(x)) < 0.5
    return np.where(f[:, None, None, None], x[:, :, ::-1], x)

  params = fit(FeatureCNN(spec.num_classes), x_train, (y_train,), loss_fn, epochs=epochs,
               batch=batch, seed=seed, augment=flip, desc="classifier", log=log,
               progress=progress)
  clf = DatasetClassifier(params, spec.num_classes, {})
  _, logits = clf.features_and_logits(x_test)
  acc = float((logits.argmax(-1) == y_test).mean())
  clf.info = dict(dataset=spec.name, version=CLASSIFIER_VERSION, test_accuracy=acc,
                  epochs=epochs, seed=seed, image_shape=list(spec.image_shape))
  log(f"classifier test accuracy {acc:.4f}")
  return clf


def fit(module, x: np.ndarray, targets: Tuple[np.ndarray, ...], loss_fn, *, epochs: int,
        batch: int, seed: int = 0, augment=None, desc: str = "classifier", log=print,
        progress: bool = True):
  """Parameters of ``module`` fitted to uint8 inputs ``x`` and ``targets`` (arrays
  aligned with ``x``): Adam with a cosine decay from 2e-3 over ``epochs`` passes in
  shuffled batches of ``batch`` (at most ``len(x)``), dropout on, the loss
  ``loss_fn(module outputs, *targets)``; ``augment(np_rng, x_batch)`` changes each
  batch on the host. Seeded by ``seed`` (initialisation, order, dropout, augmentation).
  A progress bar over all steps (steps/s, epoch, the loss every ``_LOSS_EVERY``
  steps) unless ``progress`` is False, and a ``log`` line per epoch. The image
  classifier and the video classifier (`jaxgen.eval.video`) train with it."""
  rng = jax.random.PRNGKey(seed)
  params = jax.jit(module.init)(rng, jnp.zeros((1,) + x.shape[1:], jnp.uint8))["params"]
  batch = min(batch, len(x))  # a small dataset (a folder of a few images): one batch
  steps_per_epoch = len(x) // batch
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, epochs * steps_per_epoch))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, ys, r):
    def objective(p):
      out = module.apply({"params": p}, xb, train=True, rngs={"dropout": r})
      return loss_fn(out, *ys)
    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  np_rng = np.random.default_rng(seed)
  t0 = time.time()
  with tqdm(total=epochs * steps_per_epoch, desc=desc, unit="step",
            disable=not progress) as bar:
    for epoch in range(epochs):
      perm = np_rng.permutation(len(x))
      for i in range(steps_per_epoch):
        idx = perm[i * batch:(i + 1) * batch]
        xb = x[idx] if augment is None else augment(np_rng, x[idx])
        params, opt_state, loss = step(params, opt_state, xb, tuple(t[idx] for t in targets),
                                       jax.random.fold_in(rng, epoch * steps_per_epoch + i))
        if progress and (i % _LOSS_EVERY == 0 or i == steps_per_epoch - 1):
          # Reading the loss waits for the step, so the bar (which counts dispatched
          # steps) runs at most _LOSS_EVERY steps ahead of the work.
          bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}, loss {float(loss):.3f}",
                              refresh=False)
        bar.update(1)
      with tqdm.external_write_mode():
        log(f"{desc} epoch {epoch + 1}/{epochs}: loss {float(loss):.3f} "
            f"({time.time() - t0:.0f}s)")
  return params


def load_or_train(spec: datasets.DatasetSpec, directory: str = "", log=print, seed: int = 0,
                  progress: bool = True) -> DatasetClassifier:
  """The cached classifier of ``spec`` (trained and saved on first use, with a progress
  bar unless ``progress`` is False).

  Evaluation uses seed 0; another seed gives an independently trained network (the
  tokenizers' perceptual loss uses one, so rFD is not measured in the features the
  tokenizer was trained to match).
  """
  directory = directory or default_dir()
  base = os.path.join(directory, f"{spec.name}_v{CLASSIFIER_VERSION}" +
                      (f"_seed{seed}" if seed else ""))
  if os.path.isfile(base + ".msgpack") and os.path.isfile(base + ".json"):
    with open(base + ".json") as f:
      info = json.load(f)
    module = FeatureCNN(spec.num_classes)
    template = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                              jnp.zeros((1,) + tuple(info["image_shape"]), jnp.uint8))["params"]
    with open(base + ".msgpack", "rb") as f:
      params = serialization.from_bytes(template, f.read())
    return DatasetClassifier(params, spec.num_classes, info)
  log(f"Training the {spec.name} feature classifier once (cached in {directory}) ...")
  clf = train_classifier(spec, log=log, seed=seed, progress=progress)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    for ext, data, mode in ((".msgpack", serialization.to_bytes(clf.params), "wb"),
                            (".json", json.dumps(clf.info, indent=2), "w")):
      with open(base + ext + ".tmp", mode) as f:
        f.write(data)
      os.replace(base + ext + ".tmp", base + ext)
  return clf
