"""Linear probing of a frozen representation (``jaxgen eval --linear-probe``).

Features of every train and test example come from ``feature_fn`` (for MAGE: the
encoder output averaged over the tokens, nothing masked, null class). They are
standardised with the train split's mean and standard deviation (MAE's parameter-free
BatchNorm before the linear layer), and a multinomial logistic regression with a small
L2 penalty is fitted on the train split by full-batch L-BFGS; the figure is the test
accuracy.
"""

from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm


def extract(feature_fn: Callable, batches, progress: bool = True, desc: str = "features"):
  """``(features, labels)`` as NumPy arrays over an iterable of batches with "label"."""
  feats, labels = [], []
  for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
    feats.append(np.asarray(feature_fn(batch), np.float32))
    labels.append(np.asarray(batch["label"], np.int32))
  return np.concatenate(feats), np.concatenate(labels)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-4,
                 steps: int = 300):
  """Weights (D, C) and bias (C,) of L2-regularised softmax regression (L-BFGS)."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))

  def loss(p):
    logits = x @ p[0] + p[1]
    nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    return nll + 0.5 * l2 * jnp.sum(p[0] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  @jax.jit
  def run(params):
    def body(carry, _):
      p, state = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
      return (optax.apply_updates(p, updates), state), value
    (p, _), values = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return p, values

  (w, b), values = run(params)
  return np.asarray(w), np.asarray(b), np.asarray(values)


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int,
                 l2: float = 1e-4) -> Dict[str, float]:
  """Train/test accuracy of a linear classifier on standardised features."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  tr, te = (train_x - mean) / std, (test_x - mean) / std
  w, b, _ = fit_logistic(tr, train_y, num_classes, l2)
  acc = lambda x, y: float(np.mean(np.argmax(x @ w + b, -1) == y))
  return {"linear_probe_train_accuracy": acc(tr, train_y),
          "linear_probe_test_accuracy": acc(te, test_y),
          "num_train": float(len(train_y)), "num_test": float(len(test_y)),
          "feature_dim": float(train_x.shape[1])}
