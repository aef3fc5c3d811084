"""Makes tests/data/adm_tf_reference.npz from TensorFlow's own ops (run once, in a
throw-away venv with tensorflow-cpu; the test suite needs no TensorFlow).

What the ADM evaluator (openai/guided-diffusion ``evaluations/evaluator.py``) runs in
TensorFlow, outside the Inception weights:

* the graph's input resize: ``ResizeBilinear`` of the 2015 Inception graph (TF1
  semantics: ``align_corners=False``, no half-pixel centres), here through
  ``tf.compat.v1.image.resize_bilinear`` on float32 pixels in [0, 255], for an
  upsampling, a downsampling and the 256 -> 299 case of ImageNet 256 (every 13th
  output row kept, to stay small);
* ``_batch_pairwise_distances`` on float16 features (the evaluator's ``DistanceBlock``)
  shaped like pool_3 activations, and the same graph in float32.

The inputs are stored beside the outputs. Nothing of TensorFlow is committed, only
these numbers.

Used: tensorflow-cpu 2.21.0, numpy as installed with it, Python 3.11 (2026-12-01).

  python tests/data/make_adm_reference.py
"""

import os

import numpy as np


def pairwise(tf, u, v):
  """The evaluator's ``_batch_pairwise_distances`` (same ops, same order)."""
  norm_u = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
  norm_v = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
  return tf.maximum(norm_u - 2 * tf.matmul(u, v, False, True) + norm_v, 0.0)


def main():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  out = {"tensorflow": np.array(tf.__version__)}
  cases = {"up": ((13, 11), (29, 31)), "down": ((40, 37), (17, 23)),
           "imagenet": ((256, 256), (299, 299))}
  for name, (src, dst) in cases.items():
    i, j, c = np.meshgrid(np.arange(2 * src[0]), np.arange(src[1]), np.arange(3),
                          indexing="ij")
    x = ((i * i * 3 + j * 5 + c * 77 + i * j) % 256).astype(np.uint8)
    x = x.reshape((2,) + src + (3,))  # a busy pattern that compresses
    y = tf.compat.v1.image.resize_bilinear(x.astype(np.float32), dst,
                                           align_corners=False).numpy()
    if name == "imagenet":
      x, y = x[:1], y[:1, ::13]  # one image, every 13th output row
    out[f"resize_{name}_in"], out[f"resize_{name}_out"] = x, y
  # pool_3-like features (ReLU-averaged activations: non-negative, many near zero),
  # 1024-d with squared norms ~500 like 2048-d pool_3 ones; float16 values, so that
  # both graphs see the same inputs.
  u = np.maximum(rng.normal(0.3, 0.65, (16, 1024)), 0).astype(np.float16)
  v = np.maximum(rng.normal(0.3, 0.65, (12, 1024)), 0).astype(np.float16)
  v[:3] = u[:3]  # equal pairs: distance 0 in exact arithmetic
  out["dist_u"], out["dist_v"] = u, v
  out["dist16"] = tf.cast(pairwise(tf, tf.constant(u), tf.constant(v)), tf.float32).numpy()
  out["dist32"] = pairwise(tf, tf.constant(u.astype(np.float32)),
                           tf.constant(v.astype(np.float32))).numpy()
  here = os.path.dirname(os.path.abspath(__file__))
  np.savez_compressed(os.path.join(here, "adm_tf_reference.npz"), **out)
  print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
  main()
