"""ADM-evaluator figures (`jaxgen.eval.adm`): each against an independent computation.

* The evaluator's TensorFlow ops (its input resize, its float16 / float32 distance
  graph) against outputs of TensorFlow itself (``tests/data/make_adm_reference.py``).
* FID / sFID against the evaluator's formula with ``scipy.linalg.sqrtm``; the
  Inception Score against its split loop in NumPy and closed forms; precision /
  recall against a brute-force NumPy k-NN.
* Features: the captured ``mixed_6/conv`` equals the NumPy reference conv of
  ``Mixed_6d.branch1x1`` on the network's own Mixed_6c output; extraction sharded over
  2x4 devices equals one device, whatever the batch boundaries of the stream.
* Batch files read in batches equal ``np.load``; damaged or foreign ones are refused in
  one line; the CLI writes the figures' JSON.
"""

import json
import os
import zipfile

import jax
import numpy as np
import pytest
from scipy import linalg

from jaxgen import cli
from jaxgen.errors import DataError
from jaxgen.eval import adm
from jaxgen.eval import inception as inc
from jaxgen.sharding import mesh as mesh_lib
from test_inception import _random_state_dict, np_conv_bn

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.fixture(scope="module")
def tf_ref():
  with np.load(os.path.join(DATA, "adm_tf_reference.npz")) as f:
    return dict(f)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  state = _random_state_dict(seed=3)
  path = str(tmp_path_factory.mktemp("adm") / "inception.npz")
  np.savez(path, **state)
  return state, path, inc.state_dict_to_variables(state)


# ------------------------------------------------------- the evaluator's TF ops


@pytest.mark.parametrize("case", ["up", "down", "imagenet"])
def test_resize_matches_tensorflow_resize_bilinear(tf_ref, case):
  x, want = tf_ref[f"resize_{case}_in"], tf_ref[f"resize_{case}_out"]
  size = 299 if case == "imagenet" else None
  if size:
    got = np.asarray(adm.preprocess_tf(x, size))[:, ::13]
  else:  # non-square targets: the two separable passes of preprocess_tf
    mh = adm.tf_resize_matrix(x.shape[1], want.shape[1])
    mw = adm.tf_resize_matrix(x.shape[2], want.shape[2])
    got = np.einsum("pw,nowc->nopc", mw, np.einsum("oh,nhwc->nowc", mh, x / 1.0))
    got = (got - 128) / 128
  # half-pixel centres (TF2 / PyTorch) would be off by whole grey levels
  np.testing.assert_allclose(got * 128 + 128, want, atol=1e-3)


def test_distances_match_tensorflow_graph(tf_ref):
  u, v = tf_ref["dist_u"].astype(np.float32), tf_ref["dist_v"].astype(np.float32)
  d16 = np.asarray(adm.squared_distances(u, v, "float16"))
  want16 = tf_ref["dist16"]
  # TF's float16 kernels round inside their reductions in their own order (CPU and
  # GPU differ): the emulation gives 65% of TF CPU's entries exactly, the rest within
  # two float16 ulps (<= 0.12% here).
  larger = np.maximum(np.abs(d16), np.abs(want16)).astype(np.float16)
  ulp = np.spacing(larger).astype(np.float32)
  assert np.all(np.abs(d16 - want16) <= 2 * ulp), np.abs(d16 - want16).max()
  assert (d16 == want16).mean() > 0.6
  assert np.all(np.diag(d16[:3, :3]) == 0)
  # the rounding survives compilation (a float16 cast round trip may not, on GPUs)
  hlo = jax.jit(adm._sq_distances16).lower(u, v).compile().as_text()
  assert "reduce-precision" in hlo
  d32 = np.asarray(adm.squared_distances(u, v, "float32"))
  np.testing.assert_allclose(d32, tf_ref["dist32"], rtol=1e-5, atol=1e-3)


# ------------------------------------------------------- figures


def _evaluator_fid(mu1, s1, mu2, s2):
  """guided-diffusion's FIDStatistics.frechet_distance (scipy sqrtm of the product)."""
  covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
  covmean = covmean.real
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def _evaluator_is(logits, split):
  """The evaluator's softmax and split loop in float32 NumPy."""
  x = logits.astype(np.float32)
  p = np.exp(x - x.max(1, keepdims=True))
  p = p / p.sum(1, keepdims=True)
  scores = []
  for i in range(0, len(p), split):
    part = p[i:i + split]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


def test_inception_score_matches_evaluator_loop_and_closed_forms():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (23, 40))
  assert adm.inception_score(logits, split_size=10) == pytest.approx(
      _evaluator_is(logits, 10), rel=1e-5)
  assert adm.inception_score(np.zeros((8, 5))) == pytest.approx(1.0)  # p(y|x) = p(y)
  one_hot = 50.0 * np.eye(7)[np.arange(14) % 7]  # confident, classes balanced
  assert adm.inception_score(one_hot) == pytest.approx(7.0, rel=1e-6)


def test_is_weight_is_the_fc_kernel_without_bias(weights):
  state, _, variables = weights
  pool = np.random.default_rng(1).uniform(0, 1, (3, 2048))
  want = pool @ state["fc.weight"].T.astype(np.float64)  # no fc.bias
  np.testing.assert_allclose(pool @ adm.is_weight_of(variables), want, rtol=1e-10)


def test_fid_and_sfid_match_evaluator_formula_and_precomputed_stats():
  rng = np.random.default_rng(2)
  ref_pool, smp_pool = rng.normal(0, 1, (90, 24)), rng.normal(0.1, 1.1, (70, 24))
  ref_sp, smp_sp = rng.normal(0, 1, (90, 20)), rng.normal(0, 0.9, (70, 20))
  w = rng.normal(0, 1, (24, 10))
  stats = lambda a: (a.mean(0), np.cov(a, rowvar=False))  # noqa: E731
  figs = adm.figures(ref_pool, ref_sp, smp_pool, smp_sp, w, distances="float32")
  assert set(figs) == {"inception_score", "fid", "sfid", "precision", "recall"}
  assert figs["fid"] == pytest.approx(_evaluator_fid(*stats(smp_pool), *stats(ref_pool)),
                                      rel=1e-6)
  assert figs["sfid"] == pytest.approx(_evaluator_fid(*stats(smp_sp), *stats(ref_sp)),
                                       rel=1e-6)
  assert figs["inception_score"] == pytest.approx(_evaluator_is(smp_pool @ w, 5000),
                                                  rel=1e-5)
  pre = {"mu": ref_pool.mean(0), "sigma": np.cov(ref_pool, rowvar=False),
         "mu_s": ref_sp.mean(0), "sigma_s": np.cov(ref_sp, rowvar=False)}
  from_stats = adm.figures(None, None, smp_pool, smp_sp, w, ref_stats=pre)
  assert from_stats["fid"] == pytest.approx(figs["fid"], rel=1e-9)
  assert from_stats["sfid"] == pytest.approx(figs["sfid"], rel=1e-9)
  assert "precision" not in from_stats  # no reference images: no manifold


def _brute_force_pr(ref, smp, k):
  """Precision / recall from full float64 distance matrices and sorting."""
  d = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
  r_ref = np.sort(d(ref, ref), axis=1)[:, k]
  r_smp = np.sort(d(smp, smp), axis=1)[:, k]
  cross = d(ref, smp)
  precision = (cross <= r_ref[:, None]).any(0).mean()
  recall = (cross <= r_smp[None, :]).any(1).mean()
  return precision, recall, r_ref


@pytest.mark.parametrize("block", [9, 10000])
def test_precision_recall_match_brute_force_knn(block):
  rng = np.random.default_rng(4)
  ref = rng.normal(0, 1, (45, 16)).astype(np.float32)
  smp = np.concatenate([rng.normal(0, 1, (20, 16)), rng.normal(2.5, 0.5, (16, 16))])
  smp = smp.astype(np.float32)
  prec, rec, r_ref = _brute_force_pr(ref.astype(np.float64), smp.astype(np.float64), 3)
  assert 0 < prec < 1 and 0 < rec < 1
  np.testing.assert_allclose(adm.manifold_radii(ref, 3, block, "float32"), r_ref,
                             rtol=1e-5)
  got = adm.precision_recall(ref, smp, 3, block, "float32")
  assert got == (pytest.approx(prec, abs=1e-12), pytest.approx(rec, abs=1e-12))
  assert adm.precision_recall(ref, ref, 3, block, "float16") == (1.0, 1.0)
  far = ref + 100.0
  assert adm.precision_recall(ref, far, 3, block, "float32") == (0.0, 0.0)


# ------------------------------------------------------- features


@pytest.fixture(scope="module")
def images():
  x = np.random.default_rng(5).integers(0, 256, (8, 24, 24, 3), np.uint8)
  x[7] = x[7, ..., :1]  # the last one grey (R = G = B)
  return x


@pytest.fixture(scope="module")
def one_device(weights, images):
  """pool_3 of the network on one device, and its Mixed_6c output (N, 17, 17, 768)."""
  def mixed_6c_and_pool3(m, x):
    h = m.stem(x)
    for b in (m.Mixed_5b, m.Mixed_5c, m.Mixed_5d, m.Mixed_6a, m.Mixed_6b, m.Mixed_6c):
      h = b(h)
    return h, m.pool3(x)

  fn = jax.jit(lambda v, x: inc.FIDInceptionV3().apply(v, adm.preprocess_tf(x),
                                                       method=mixed_6c_and_pool3),
               device=jax.devices()[0])
  h, pool = fn(weights[2], images)
  return np.asarray(pool), np.asarray(h)


@pytest.fixture(scope="module")
def sharded(weights, images):
  """Features extracted over a 2x4 mesh, 1 image per device: batches of 5, 2 and 1
  re-chunked into one step of 8, the last batch grey (N, H, W, 1), which must be
  repeated to RGB."""
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, jax.devices()[:8])
  ex = adm.FeatureExtractor(weights[2], mesh, batch_per_device=1, progress=False)
  return ex.extract([images[:5], images[5:7], images[7:, ..., :1]])


def test_spatial_features_are_mixed_6d_branch1x1(weights, one_device, sharded):
  h = one_device[1]
  want = np_conv_bn(weights[0], "Mixed_6d.branch1x1", h.astype(np.float64))
  assert want.shape == (8, 17, 17, 192)
  want = want[..., :adm.SPATIAL_CHANNELS].reshape(8, -1)  # HWC order, 7 channels
  pool, spatial = sharded
  assert spatial.shape == (8, adm.SPATIAL_DIM) and pool.shape == (8, inc.FEATURE_DIM)
  np.testing.assert_allclose(spatial, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_features_sharded_2x4_equal_one_device(one_device, sharded):
  want = one_device[0]
  np.testing.assert_allclose(sharded[0], want, rtol=1e-5, atol=1e-5 * want.max())


# ------------------------------------------------------- batch files and the CLI


@pytest.mark.parametrize("compressed", [False, True])
def test_batch_file_is_streamed_in_batches(tmp_path, compressed):
  x = np.random.default_rng(6).integers(0, 256, (11, 5, 4, 3), np.uint8)
  path = str(tmp_path / "b.npz")
  (np.savez_compressed if compressed else np.savez)(path, arr_0=x, labels=np.arange(11))
  images, stats = adm.open_batch(path, "sample")
  assert stats == {} and images.shape == x.shape
  parts = list(images.batches(4))
  assert [len(p) for p in parts] == [4, 4, 3]
  np.testing.assert_array_equal(np.concatenate(parts), x)


def test_bad_batch_files_are_refused_in_one_line(tmp_path):
  x = np.zeros((6, 8, 8, 3), np.uint8)
  good = str(tmp_path / "good.npz")
  np.savez(good, arr_0=x)
  with open(good, "rb") as f:
    data = f.read()
  cases = {}
  cases["truncated"] = str(tmp_path / "trunc.npz")
  with zipfile.ZipFile(cases["truncated"], "w") as zf:  # arr_0.npy cut short
    zf.writestr("arr_0.npy", data[data.index(b"\x93NUMPY"):][:200])
  cases["float"] = str(tmp_path / "float.npz")
  np.savez(cases["float"], arr_0=x.astype(np.float32))
  cases["no_arr_0"] = str(tmp_path / "none.npz")
  np.savez(cases["no_arr_0"], images=x)
  cases["not_npz"] = str(tmp_path / "text.npz")
  with open(cases["not_npz"], "w") as f:
    f.write("hello")
  cases["too_few"] = str(tmp_path / "three.npz")  # k = 3 needs a 4th neighbour
  np.savez(cases["too_few"], arr_0=x[:3])
  cases["bad_stats"] = str(tmp_path / "stats.npz")
  np.savez(cases["bad_stats"], arr_0=x, mu=np.zeros(10), sigma=np.eye(10),
           mu_s=np.zeros(3), sigma_s=np.eye(3))
  for name, path in cases.items():
    with pytest.raises(DataError) as e:
      images, _ = adm.open_batch(path, "reference")
      list(images.batches(4))
    assert "\n" not in str(e.value) and path in str(e.value), name
  stats_only = str(tmp_path / "stats_only.npz")
  np.savez(stats_only, mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32),
           mu_s=np.zeros(2023), sigma_s=np.eye(2023, dtype=np.float32))
  images, stats = adm.open_batch(stats_only, "reference")
  assert images is None and set(stats) == {"mu", "sigma", "mu_s", "sigma_s"}


@pytest.mark.parametrize("ref_images", [
    False, pytest.param(True, marks=pytest.mark.slow)])  # default: statistics only
def test_cli_suite_adm_writes_the_figures(weights, images, tmp_path, capsys, ref_images):
  # images of the fixture's size, 1 per device on the 8 test devices, one step a file;
  # the reference holds precomputed statistics (as the published batches do), and in
  # the slow variant its images too (precision / recall)
  rng = np.random.default_rng(7)
  ref, smp = str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz")
  stats = dict(mu=np.zeros(2048, np.float32), sigma=np.eye(2048, dtype=np.float32),
               mu_s=np.zeros(2023, np.float32), sigma_s=np.eye(2023, dtype=np.float32))
  if ref_images:
    stats["arr_0"] = rng.integers(0, 256, (5,) + images.shape[1:], np.uint8)
  np.savez(ref, **stats)
  np.savez(smp, arr_0=rng.integers(0, 256, (4,) + images.shape[1:], np.uint8),
           labels=np.arange(4))
  assert cli.main(["eval", "--suite", "adm", "--ref", ref, "--samples", smp,
                   "--inception-weights", weights[1], "--batch-per-device", "1"]) == 0
  with open(str(tmp_path / "samples.adm.json")) as f:
    figs = json.load(f)["adm"]
  assert figs["num_samples"] == 4 and figs["num_reference"] == (5 if ref_images else 0)
  assert figs["reference_statistics"] == "precomputed" and figs["preprocess"] == "tf"
  keys = ("inception_score", "fid", "sfid") + (("precision", "recall") if ref_images else ())
  for key in keys:
    assert np.isfinite(figs[key]), key
  assert ref_images or "precision" not in figs
  assert figs["inception_score"] >= 1.0 and figs["fid"] > 0
  out = capsys.readouterr().out
  assert "one split" in out and (ref_images or "precision and recall skipped" in out)
  # a missing argument, or a run's flag, is one line naming it
  assert cli.main(["eval", "--suite", "adm", "--samples", smp,
                   "--inception-weights", weights[1]]) == 2
  assert cli.main(["eval", "--suite", "adm", "--ref", ref, "--samples", smp,
                   "--inception-weights", weights[1], "--workdir", "runs/x"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "--ref" in err[0] and "--workdir" in err[1]
