"""Evaluation: Frechet distance against SciPy, sample-layout handling, and the
dataset-classifier evaluator on (synthetic) data."""

import contextlib
import io

import ml_collections
import numpy as np
import pytest
from scipy import linalg

from jaxgen import generate
from jaxgen.data import datasets
from jaxgen.errors import DataError
from jaxgen.eval import classifier, evaluate, frechet


def _scipy_fd(mu1, s1, mu2, s2):
  covmean = linalg.sqrtm(s1 @ s2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("sizes", [(500, 400), (5, 400), (400, 5), (5, 4)],
                         ids=["both_pd", "first_singular", "second_singular", "both_singular"])
def test_frechet_distance_matches_scipy_sqrtm(sizes):
  # each path of trace_sqrt_product: Cholesky of S1, of S2, or neither (N < D)
  rng = np.random.default_rng(0)
  a = rng.standard_normal((sizes[0], 6)) @ rng.standard_normal((6, 6))
  b = rng.standard_normal((sizes[1], 6)) @ rng.standard_normal((6, 6)) + 0.5
  ours = frechet.frechet_distance_features(a, b)
  ref = _scipy_fd(*frechet.stats(a), *frechet.stats(b))
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_frechet_distance_closed_form_cases():
  rng = np.random.default_rng(1)
  f = rng.standard_normal((300, 4))
  assert abs(frechet.frechet_distance_features(f, f)) < 1e-8
  # Isotropic Gaussians: |mu1 - mu2|^2 + d (s1 - s2)^2.
  d = 3
  fd = frechet.frechet_distance(np.zeros(d), 4 * np.eye(d), np.ones(d), np.eye(d))
  np.testing.assert_allclose(fd, d + d * (2 - 1) ** 2)


def test_to_native_crops_padding_and_resizes_otherwise():
  x = np.zeros((2, 32, 32, 1), np.uint8)
  x[:, 2:30, 2:30] = 200
  out = evaluate.to_native(x, (28, 28, 1), "pad(32)|scale(-1, 1)")
  assert out.shape == (2, 28, 28, 1) and (out == 200).all()
  out = evaluate.to_native(x, (28, 28, 1), "resize(32)")
  assert out.shape == (2, 28, 28, 1)


def test_adm_images_are_rgb_at_the_datasets_size():
  x = np.zeros((2, 32, 32, 1), np.uint8)
  x[:, 2:30, 2:30] = 200
  out = generate.adm_images(x, (28, 28, 1), "pad(32)|scale(-1, 1)")
  assert out.shape == (2, 28, 28, 3) and (out == 200).all() and out.flags.c_contiguous
  rgb = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  assert generate.adm_images(rgb, (24, 24, 3), "resize(16)").shape == (2, 24, 24, 3)
  # A latent dataset's shape (4 channels) is not an image size: decoded size kept.
  np.testing.assert_array_equal(generate.adm_images(rgb, (4, 4, 4)), rgb)
  with pytest.raises(ValueError, match="uint8 NHWC"):
    generate.adm_images(rgb.astype(np.float32), (16, 16, 3))


def test_load_samples_refuses_wrong_layout(tmp_path):
  p = tmp_path / "s.npz"
  np.savez(p, images=np.zeros((2, 4, 4, 1), np.uint8))
  with pytest.raises(DataError, match="no 'arr_0'"):
    evaluate.load_samples(str(p))
  np.savez(p, arr_0=np.zeros((2, 4, 4, 1), np.float32))
  with pytest.raises(DataError, match="must be uint8 NHWC"):
    evaluate.load_samples(str(p))
  with pytest.raises(FileNotFoundError, match="jaxgen sample"):
    evaluate.load_samples(str(tmp_path / "none.npz"))


@pytest.fixture(scope="module")
def evaluator(fake_fmnist_dir, tmp_path_factory):
  """The evaluator, its classifier trained here; ``.progress_text``: what the
  classifier's progress bar wrote to stderr meanwhile."""
  data_dir = str(tmp_path_factory.mktemp("tfds_eval"))
  spec = datasets.get_dataset(ml_collections.ConfigDict(dict(
      name="fashion_mnist", source_dir=fake_fmnist_dir, data_dir=data_dir)))
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    ev = evaluate.Evaluator(spec, str(tmp_path_factory.mktemp("clf")), log=lambda *_: None)
  ev.progress_text = err.getvalue()
  return ev


def test_classifier_training_shows_progress(evaluator):
  # 512 synthetic train images: 4 steps of 128 per epoch, 3 epochs.
  text = evaluator.progress_text
  assert "classifier" in text and "12/12" in text
  assert "step/s" in text or "s/step" in text  # tqdm's rate, whichever way round
  assert "epoch 3/3, loss " in text


def test_evaluator_on_real_and_corrupted_images(evaluator):
  ref = evaluator.reference(128)
  assert ref["accuracy"] > 0.9  # the synthetic classes are easy
  x, y = datasets.load_arrays(evaluator.spec, "test")
  wrong = evaluator.figures(x, (y + 1) % 10)
  assert wrong["accuracy"] < 0.2
  noise = np.random.default_rng(0).integers(0, 255, x.shape).astype(np.uint8)
  assert evaluator.figures(noise, y)["fd"] > 10 * ref["fd"]
  # Null labels (== num_classes) are not counted in accuracy.
  assert "accuracy" not in evaluator.figures(x, np.full(len(x), 10))


def test_classifier_is_cached(evaluator, tmp_path):
  base = evaluator.classifier.info
  again = classifier.load_or_train(evaluator.spec, evaluator._ref_dir, log=lambda *_: None)
  assert again.info == base
  x, _ = datasets.load_arrays(evaluator.spec, "test", limit=8)
  np.testing.assert_allclose(again.features_and_logits(x)[0],
                             evaluator.classifier.features_and_logits(x)[0], rtol=1e-6)
