"""The tokenizer paradigm: VQGAN's adaptive weight equals its gradient-norm formula,
the two-optimizer step is the same sharded over 8 devices as on one, stop/resume ==
uninterrupted (with the quantizer's statistics), and a trained run serves the
Tokenizer interface, `jaxgen tokenize` and the reconstruction figures."""

import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import tiny_tokenizer_config
from jaxgen.data import datasets, pipeline
from jaxgen.eval import reconstruction
from jaxgen.losses import adversarial
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base
from jaxgen.tokenizers import precompute
from jaxgen.train import loop


@pytest.fixture
def tok_config(fake_fmnist_dir, data_dir):
  def make(bottleneck="vq", gan=True, **train):
    return tiny_tokenizer_config(fake_fmnist_dir, data_dir, bottleneck, gan, **train)
  return make


def _steps(config, devices, n):
  """``(initial params, final state, metrics of each step)`` of ``n`` steps."""
  exp = loop.build(config, devices)
  state = exp.init_state()
  init = jax.device_get(state.params)  # before the step donates the state
  step_fn, _ = loop.make_train_step(exp)
  it = loop.make_data_iterator(exp)
  metrics = []
  for _ in range(n):
    state, m = step_fn(state, mesh_lib.global_batch(next(it), exp.mesh))
    metrics.append(jax.device_get(m))
  return init, state, metrics


def test_adaptive_weight_equals_gradient_norm_ratio(tok_config, one_device):
  exp = loop.build(tok_config("vq"), one_device)
  par, state = exp.paradigm, exp.init_state()
  x = jnp.asarray(next(loop.make_data_iterator(exp))["image"])
  ae_p, d_p = state.params["autoencoder"], state.params["discriminator"]
  path = par.ae_last_layer(ae_p)

  @jax.jit  # one program, not hundreds of op-by-op compiles
  def weight_and_reference(ae_p, d_p, x):
    variables = {"params": ae_p, **state.model_state}
    z, _ = par.ae.apply(variables, par.ae.apply(variables, x, method="encode_features"),
                        False, None, method="bottleneck_forward")
    x_rec = par.ae.apply(variables, z, method="decode")
    lam = par._adaptive_weight(ae_p, z, x, x_rec, d_p)

    # Reference: full backward passes through the whole autoencoder, then the last
    # layer's gradients picked out of the complete gradient trees.
    def recon(p):
      return par.ae.apply({"params": p, **state.model_state}, x)[0]

    g_rec = jax.grad(lambda p: par.reconstruction_loss(x, recon(p))[0])(ae_p)
    g_gan = jax.grad(lambda p: adversarial.hinge_g_loss(par.disc_logits(d_p, recon(p))))(ae_p)
    return lam, _get(g_rec, path), _get(g_gan, path)

  lam, g_rec, g_gan = jax.device_get(weight_and_reference(ae_p, d_p, x))
  expected = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)
  np.testing.assert_allclose(float(lam), min(expected, 1e4), rtol=1e-4)
  assert path[0] == "decoder" and path[-1] == "kernel"
  # The paradigm's plain loss (no step) runs on the same batch: finite, with metrics.
  loss, metrics = jax.jit(par.loss)(state.params, {"image": x}, jax.random.PRNGKey(0),
                                    model_state=state.model_state)
  assert np.isfinite(float(loss)) and "psnr" in metrics and "g_loss" in metrics


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


@pytest.mark.slow  # the default tier's budget: two optimizers on a 2x4 mesh: test_gan.py (default)
def test_two_optimizer_step_on_2x4_mesh_equals_one_device(tok_config):
  c1, c8 = tok_config("vq"), tok_config("vq")
  for c in (c1, c8):
    # Parameters whose exact gradient is 0 (biases in front of a GroupNorm) get float
    # noise as gradient, which Adam with eps=1e-8 blows up to lr-sized steps of random
    # sign; a larger eps compares the real updates.
    c.optim.eps = 1e-3
    c.paradigm.disc_start = 1
  c8.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4, tensor=1))
  init, s1, m1 = _steps(c1, jax.devices()[:1], 2)
  _, s8, m8 = _steps(c8, jax.devices(), 2)
  # disc_start=1: the GAN terms are off in the first step, on in the second.
  assert m1[0]["d_loss"] == 0.0 and m1[1]["d_loss"] > 0.0
  for a, b in zip(m1, m8):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    np.testing.assert_allclose(a["d_loss"], b["d_loss"], rtol=1e-4)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-4, atol=5e-6)
  jax.tree.map(close, jax.device_get(s1.params), jax.device_get(s8.params))
  jax.tree.map(close, jax.device_get(s1.model_state), jax.device_get(s8.model_state))
  # Both networks moved, and the discriminator was trained by its own optimizer.
  for net in ("autoencoder", "discriminator"):
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                         init[net], jax.device_get(s1.params[net])))
    assert max(moved) > 0, net


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted(tok_config, tmp_path, one_device):
  config = tok_config("vq", num_steps=4, ckpt_every=100)
  full = loop.train(config, str(tmp_path / "full"), one_device, progress=False)
  wd = str(tmp_path / "resumed")
  loop.train(config, wd, one_device, stop_after=2, progress=False)
  resumed = loop.train(config, wd, one_device, progress=False)
  get = lambda s: jax.device_get((s.params, s.opt_state, s.model_state, s.step))
  jax.tree.map(np.testing.assert_array_equal, get(full), get(resumed))


@pytest.mark.parametrize("bottleneck", [
    pytest.param("vq", marks=pytest.mark.uses_shared_fixtures),
    pytest.param("msvq", marks=pytest.mark.uses_shared_fixtures),
    # Slow (22 s: it trains a KL-VAE with a discriminator). The default tier loads,
    # tokenizes and checks KL latents in tests/test_latent.py (kl_run: the pre-computed
    # latents give the same loss as latents encoded in the step).
    pytest.param("kl", marks=pytest.mark.slow)])
def test_trained_run_serves_tokenizer_interface_and_tokenize(tok_config, tmp_path, one_device,
                                                             request, bottleneck):
  """VQ and multi-scale VQ: the session's tiny tokenizer runs (``vq_run``, ``msvq_run``
  in conftest: trained by the loop, then ``tokenize_dataset`` over both splits), which
  every token paradigm's tests also use; the KL-VAE trains its own here, with a
  discriminator (the Stable Diffusion VAE's recipe), so that a run holding one loads too."""
  if bottleneck == "kl":
    config = tok_config("kl", gan=True, num_steps=2)
    wd, codes_dir = str(tmp_path / "kl"), str(tmp_path / "kl_tokens")
    loop.train(config, wd, one_device, progress=False)
  else:
    wd, codes_dir = request.getfixturevalue(f"{bottleneck}_run")
  tok = tok_base.Tokenizer.from_workdir(wd)
  config = tok.config
  x = np.random.default_rng(0).uniform(-1, 1, (50, 32, 32, 1)).astype(np.float32)
  codes = tok.encode(x)
  scales = (1, 2, 3, 4, 6, 8)  # conftest.msvq_run's schedule (f4: 8x8 at the finest)
  if bottleneck == "vq":
    chex.assert_shape(codes, (50, 8, 8))
    chex.assert_type(codes, jnp.int32)
    assert tok.grid_shape == (8, 8) and tok.vocab_size == 32
    chex.assert_shape(tok.codes_to_embeddings(codes), (50, 8, 8, 8))
  elif bottleneck == "msvq":
    assert [c.shape for c in codes] == [(50, s, s) for s in scales]
    assert tok.grid_shape == [(s, s) for s in scales]
  else:
    chex.assert_shape(codes, (50, 16, 16, 4))
    assert tok.vocab_size is None and tok.latent_shape == (16, 16, 4)
  rec = tok.decode(codes)
  chex.assert_shape(rec, x.shape)
  assert float(jnp.abs(rec).max()) <= 1.0

  spec = datasets.get_dataset(config.data)
  if bottleneck == "kl":
    written = precompute.tokenize_dataset(tok, spec, pp=config.data.pp, out_dir=codes_dir,
                                          splits=["test"], batch_size=50, progress=False)
    assert written == {"test": spec.splits["test"]}
  tokens = datasets.get_dataset(ml_collections.ConfigDict(dict(name="tokens",
                                                                data_dir=codes_dir)))
  assert tokens.splits["test"] == spec.splits["test"]
  key = "image" if bottleneck == "kl" else "codes"
  batch = next(iter(pipeline.train_dataset(tokens, split="test", pp="", batch_size=4,
                                           seed=0)))
  assert batch[key].shape[0] == 4 and batch["label"].shape == (4,)
  # The stored codes are exactly what encode gives for those images.
  images, _ = datasets.load_arrays(spec, "test", limit=50)
  stored = np.load(os.path.join(codes_dir, "test_codes.npy"))
  assert len(stored) == spec.splits["test"]
  stored = stored[:50]
  pp_images = np.stack([np.pad(im, ((2, 2), (2, 2), (0, 0))) for im in images])
  fresh = precompute.flatten_codes(tok.encode(pp_images.astype(np.float32) / 127.5 - 1.0),
                                   tok.kind)
  if bottleneck == "kl":
    np.testing.assert_allclose(stored, fresh, rtol=1e-4, atol=1e-5)
  else:
    np.testing.assert_array_equal(stored, fresh)
  if bottleneck == "msvq":
    back = precompute.unflatten_msvq(stored, scales)
    assert [b.shape for b in back] == [(50, s, s) for s in scales]
  if bottleneck == "vq":  # the reconstruction figures of `jaxgen eval`
    figs = reconstruction.evaluate_tokenizer(tok, spec, split="test", pp=config.data.pp,
                                             num=100, batch_size=50,
                                             classifier_dir=str(tmp_path / "classifiers"),
                                             progress=False)
    assert figs["num"] == 100 and np.isfinite(figs["rfd"]) and 0 < figs["psnr"] < 60
    assert 0 < figs["codebook_usage"] <= 1 and 1 <= figs["perplexity"] <= 32


def _ssim_reference(x, y, border):
  """SSIM by its definition (Wang et al. 2004), independent of `ssim_uint8`: Gaussian-
  weighted local statistics (sigma 1.5, 11 taps) of every 11x11 window of the image
  padded with its mirror image (scipy.ndimage's "reflect"), per channel; the map
  averaged without ``border`` pixels at each edge (5: only windows inside the image)."""
  g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
  w2 = np.outer(g, g) / g.sum() ** 2
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  pad = ((0, 0), (5, 5), (5, 5), (0, 0))
  xw, yw = (np.lib.stride_tricks.sliding_window_view(
      np.pad(a.astype(np.float64), pad, mode="symmetric"), (11, 11), axis=(1, 2))
            for a in (x, y))  # (N, H, W, C, 11, 11)

  def mean(a):
    return np.einsum("nhwcij,ij->nhwc", a, w2)

  mx, my = mean(xw), mean(yw)
  vx, vy, cov = mean(xw * xw) - mx ** 2, mean(yw * yw) - my ** 2, mean(xw * yw) - mx * my
  s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  h, w = x.shape[1:3]
  return s[:, border:h - border, border:w - border].reshape(len(s), -1).mean(1)


def _ssim_test_pair():
  """Two 20x20 RGB images and noisy copies (SSIM well below 1, edges unlike centres)."""
  rng = np.random.default_rng(0)
  x = np.zeros((2, 20, 20, 3), np.uint8)
  x[:, 4:16, 4:16] = rng.integers(60, 200, (2, 12, 12, 3))
  x[1, :, :3] = 255
  y = np.clip(x + rng.normal(0, 25, x.shape), 0, 255).astype(np.uint8)
  return x, y


def test_psnr_and_ssim_against_direct_formulas():
  x, y = _ssim_test_pair()
  mse = ((x.astype(float) - y) ** 2).reshape(2, -1).mean(1)
  np.testing.assert_allclose(reconstruction.psnr_uint8(x, y), 10 * np.log10(255 ** 2 / mse))
  np.testing.assert_allclose(reconstruction.ssim_uint8(x, x), 1.0, rtol=1e-12)
  ours = reconstruction.ssim_uint8(x, y)  # the standard: a 5-pixel border left out
  np.testing.assert_allclose(ours, _ssim_reference(x, y, border=5), rtol=0, atol=1e-6)
  whole = reconstruction.ssim_uint8(x, y, border=0)  # jaxgen's SSIM before the crop
  np.testing.assert_allclose(whole, _ssim_reference(x, y, border=0), rtol=0, atol=1e-6)
  assert np.all(np.abs(ours - whole) > 0.01) and np.all(ours < 0.9)
  with pytest.raises(ValueError, match="border=0"):
    reconstruction.ssim_uint8(x[:, :10, :10], y[:, :10, :10])


def test_ssim_matches_scikit_image():
  """Where scikit-image is installed (not a dependency), its SSIM with the settings
  papers report equals ours."""
  metrics = pytest.importorskip("skimage.metrics")
  x, y = _ssim_test_pair()
  theirs = [metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255,
                                          channel_axis=-1) for a, b in zip(x, y)]
  np.testing.assert_allclose(reconstruction.ssim_uint8(x, y), theirs, rtol=0, atol=1e-6)


def test_code_usage_and_latent_scale():
  codes = np.array([[0, 1, 1, 3]])
  u = reconstruction.code_usage(codes, 8)
  assert u["codebook_usage"] == 3 / 8
  p = np.array([1, 2, 1]) / 4
  np.testing.assert_allclose(u["perplexity"], np.exp(-(p * np.log(p)).sum()))
  z = [np.random.default_rng(0).normal(0, 3.0, (100, 4)), np.zeros((0, 4))]
  np.testing.assert_allclose(tok_base.compute_latent_scale(z), 1 / z[0].std())
