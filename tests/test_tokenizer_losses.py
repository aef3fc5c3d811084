"""Tokenizer losses against NumPy: LPIPS (tiny random VGG saved and loaded back through
our .npz names and through the PyTorch-name converter), PerceptualLoss on other feature
nets, GAN losses, R1, VQGAN's adaptive weight, the KL-VAE posterior."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.eval.classifier import FeatureCNN
from jaxgen.losses import adversarial, kl, perceptual

WIDTHS = (2, 3, 4, 4, 5)  # a tiny VGG16 (real widths: 64, 128, 256, 512, 512)


def _tiny_lpips_params(seed=0, widths=WIDTHS):
  rng = np.random.default_rng(seed)
  params = {"vgg": {}}
  c_in, names = 3, iter(perceptual.CONV_NAMES)
  for k, (w, n) in enumerate(zip(widths, (2, 2, 3, 3, 3))):
    for _ in range(n):
      params["vgg"][next(names)] = {
          "kernel": rng.normal(0, math.sqrt(2 / (9 * c_in)),
                               (3, 3, c_in, w)).astype(np.float32),
          "bias": rng.normal(0, 0.1, (w,)).astype(np.float32)}
      c_in = w
    params[f"lin{k}"] = rng.uniform(-0.2, 1.0, (w,)).astype(np.float32)  # some < 0
  return params


def _images(seed, shape=(2, 32, 32, 3)):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ------------------------------------------------------------------ NumPy reference


def _np_conv3(x, k, b):
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], k[i, j])
            for i in range(3) for j in range(3))
  return out + b


def _np_pool(x):
  n, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  return x[:, :2 * h2, :2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def _np_vgg(params, x):
  taps, names = [], iter(perceptual.CONV_NAMES)
  for block, n in enumerate((2, 2, 3, 3, 3)):
    if block:
      x = _np_pool(x)
    for _ in range(n):
      p = params["vgg"][next(names)]
      x = np.maximum(_np_conv3(x, p["kernel"].astype(np.float64), p["bias"]), 0)
    taps.append(x)
  return taps


def _np_lpips(params, x, y):
  shift, scale = np.array([-.030, -.088, -.188]), np.array([.458, .448, .450])
  if x.shape[-1] == 1:
    x, y = np.repeat(x, 3, -1), np.repeat(y, 3, -1)
  fx = _np_vgg(params, (x.astype(np.float64) - shift) / scale)
  fy = _np_vgg(params, (y.astype(np.float64) - shift) / scale)
  total = 0.0
  for k, (a, b) in enumerate(zip(fx, fy)):
    a = a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
    b = b / (np.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
    d = ((a - b) ** 2) @ np.maximum(params[f"lin{k}"], 0)
    total = total + d.mean(axis=(1, 2))
  return total


def _to_torch(params, conv_prefix="features", lin=True):
  """Our params -> PyTorch state-dict names and layouts (plus keys to be ignored)."""
  state = {"classifier.0.weight": np.zeros((4, 4), np.float32),
           "scaling_layer.shift": np.zeros((1, 3, 1, 1), np.float32)}
  for idx, name in zip(perceptual.TORCH_CONV_INDEX, perceptual.CONV_NAMES):
    p = params["vgg"][name]
    prefix = conv_prefix(idx) if callable(conv_prefix) else f"{conv_prefix}.{idx}"
    state[f"{prefix}.weight"] = p["kernel"].transpose(3, 2, 0, 1)
    state[f"{prefix}.bias"] = p["bias"]
  if lin:
    for k in range(5):
      state[f"lin{k}.model.1.weight"] = params[f"lin{k}"].reshape(1, -1, 1, 1)
  return state


def _slice_prefix(idx):  # lpips / taming: net.slice{s}.{idx}
  s = 1 + sum(idx >= b for b in (4, 9, 16, 23))
  return f"net.slice{s}.{idx}"


# ------------------------------------------------------------------ LPIPS


def test_lpips_matches_numpy_after_npz_roundtrip(tmp_path):
  params = _tiny_lpips_params()
  path = str(tmp_path / "lpips.npz")
  perceptual.save_lpips_params(path, params)
  loaded = perceptual.load_lpips_params(path)
  chex.assert_trees_all_equal(loaded, params)
  assert perceptual.lpips_widths(loaded) == WIDTHS
  fn = jax.jit(perceptual.lpips_loss(loaded))
  x, y = _images(1), _images(2)
  d = np.asarray(fn(x, y))
  chex.assert_shape(d, (2,))
  np.testing.assert_allclose(d, _np_lpips(params, x, y), rtol=1e-4)
  np.testing.assert_allclose(fn(y, x), d, rtol=1e-6)  # symmetric
  np.testing.assert_allclose(jax.jit(perceptual.lpips_distance)(loaded, x, y), d, rtol=1e-6)
  np.testing.assert_allclose(fn(x, x), 0.0, atol=1e-10)
  assert np.all(d > 0)


def test_lpips_grey_images_are_tiled_and_gradients_finite():
  params = _tiny_lpips_params(3)
  fn = jax.jit(perceptual.lpips_loss(params))
  x, y = _images(4, (2, 32, 32, 1)), _images(5, (2, 32, 32, 1))
  np.testing.assert_allclose(fn(x, y), fn(np.repeat(x, 3, -1), np.repeat(y, 3, -1)),
                             rtol=1e-6)
  np.testing.assert_allclose(fn(x, y), _np_lpips(params, x, y), rtol=1e-4)
  grad = jax.jit(jax.grad(lambda a, b: fn(a, b).sum()))
  g = grad(x, y)
  chex.assert_tree_all_finite(g)
  assert np.abs(g).max() > 0
  g0 = grad(x, x)  # at x == y (and at all-zero feature vectors) still finite
  chex.assert_tree_all_finite(g0)
  np.testing.assert_allclose(g0, 0.0, atol=1e-6)


def test_torch_names_convert_to_our_params(tmp_path):
  params = _tiny_lpips_params(6)
  chex.assert_trees_all_equal(perceptual.lpips_params_from_torch(_to_torch(params)), params)
  # lpips's own vgg.pth holds the lin weights only; VGG16 comes from a second file.
  np.savez(tmp_path / "lin.npz", **{k: v for k, v in _to_torch(params).items()
                                    if k.startswith("lin")})
  np.savez(tmp_path / "vgg.npz", **_to_torch(params, lin=False))
  loaded = perceptual.load_lpips_params(str(tmp_path / "lin.npz"),
                                        str(tmp_path / "vgg.npz"))
  chex.assert_trees_all_equal(loaded, params)
  np.savez(tmp_path / "taming.npz", **_to_torch(params, conv_prefix=_slice_prefix))
  chex.assert_trees_all_equal(perceptual.load_lpips_params(str(tmp_path / "taming.npz")),
                              params)
  x, y = _images(7), _images(8)
  np.testing.assert_allclose(perceptual.lpips_loss(loaded)(x, y), _np_lpips(params, x, y),
                             rtol=1e-4)


def test_converter_on_full_size_vgg16_shapes():
  shapes, c_in = {}, 3
  conv_widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
  for idx, w in zip(perceptual.TORCH_CONV_INDEX, conv_widths):
    shapes[f"features.{idx}.weight"], shapes[f"features.{idx}.bias"] = (w, c_in, 3, 3), (w,)
    c_in = w
  for k, w in enumerate(perceptual.VGG16_WIDTHS):
    shapes[f"lin{k}.model.1.weight"] = (1, w, 1, 1)
  state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  params = perceptual.lpips_params_from_torch(state)
  expected = jax.eval_shape(perceptual.LPIPS().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)))["params"]
  chex.assert_trees_all_equal_shapes(params, expected)
  assert sum(v.size for v in jax.tree.leaves(params)) == 14_714_688 + 1472  # VGG16 convs


def test_loader_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    perceptual.load_lpips_params(str(tmp_path / "nope.npz"))
  flat = perceptual.flatten_lpips_params(_tiny_lpips_params())
  np.savez(tmp_path / "missing.npz", **{k: v for k, v in flat.items() if k != "lin3"})
  with pytest.raises(ValueError, match="lin3"):
    perceptual.load_lpips_params(str(tmp_path / "missing.npz"))
  flat["lin2"] = np.ones((7,), np.float32)
  np.savez(tmp_path / "shape.npz", **flat)
  with pytest.raises(ValueError, match="lin2"):
    perceptual.load_lpips_params(str(tmp_path / "shape.npz"))


# ------------------------------------------------------------------ PerceptualLoss


def test_perceptual_loss_with_any_feature_fn_matches_numpy():
  feature_fn = lambda im: [im, 2.0 * im[:, ::2, ::2], im.mean(axis=(1, 2))]  # last: (N, C)
  x, y = _images(9, (3, 8, 8, 4)), _images(10, (3, 8, 8, 4))
  w = [np.array([1.0, 0.5, -1.0, 2.0], np.float32)] * 3

  def np_ref(weights):
    total = 0.0
    for a, b in zip(feature_fn(x.astype(np.float64)), feature_fn(y.astype(np.float64))):
      a = a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
      b = b / (np.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
      d = (a - b) ** 2
      d = d.sum(-1) if weights is None else d @ np.maximum(weights[0], 0)
      total = total + d.reshape(len(d), -1).mean(1)
    return total

  for weights in (None, w):
    loss = perceptual.PerceptualLoss(feature_fn, weights)
    np.testing.assert_allclose(loss(x, y), np_ref(weights), rtol=1e-5)
    np.testing.assert_allclose(loss(x, y), loss(y, x), rtol=1e-6)
    np.testing.assert_allclose(loss(x, x), 0.0, atol=1e-10)


def test_classifier_feature_fn():
  module = FeatureCNN(10)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                        abstract["params"])
  fn = perceptual.classifier_feature_fn(params, 10)
  u8 = np.random.default_rng(11).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
  x, y = u8 / np.float32(127.5) - 1, _images(12, (2, 28, 28, 1))
  feats = jax.jit(fn)(x)
  assert [f.shape for f in feats] == [(2, 28, 28, 32), (2, 14, 14, 64), (2, 7, 7, 128),
                                      (2, 256)]
  # The last map is the classifier's own feature vector of the same images as uint8.
  _, ref = jax.jit(module.apply)({"params": params}, u8)
  np.testing.assert_allclose(feats[-1], ref, rtol=1e-4, atol=1e-5)
  # The same maps from the parameters as an argument (two programs: fp rounding apart).
  chex.assert_trees_all_close(jax.jit(perceptual.classifier_features)(params, x), feats,
                              rtol=1e-5, atol=1e-5)
  loss = perceptual.PerceptualLoss(fn)
  np.testing.assert_allclose(jax.jit(loss)(x, x), 0.0, atol=1e-10)
  g = jax.jit(jax.grad(lambda a: loss(a, y).sum()))(x)
  chex.assert_tree_all_finite(g)
  assert np.abs(g).max() > 0


# ------------------------------------------------------------------ adversarial


def _softplus(v):
  return np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0)


def test_gan_losses_match_numpy():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(0, 2, (4, 3, 3, 1)), rng.normal(0, 2, (4, 3, 3, 1))
  np.testing.assert_allclose(adversarial.hinge_d_loss(real, fake), 0.5 * (
      np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()), rtol=1e-6)
  np.testing.assert_allclose(adversarial.hinge_g_loss(fake), -fake.mean(), rtol=1e-6)
  sig = lambda v: 1 / (1 + np.exp(-v))
  np.testing.assert_allclose(adversarial.nonsaturating_d_loss(real, fake), 0.5 * (
      -np.log(sig(real)).mean() - np.log(1 - sig(fake)).mean()), rtol=1e-5)
  np.testing.assert_allclose(adversarial.nonsaturating_g_loss(fake),
                             -np.log(sig(fake)).mean(), rtol=1e-5)
  np.testing.assert_allclose(adversarial.nonsaturating_g_loss(fake),
                             _softplus(-fake).mean(), rtol=1e-6)


def test_r1_penalty():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
  a = rng.normal(size=(4, 4, 2)).astype(np.float32)
  d_fn = lambda im: jnp.sum(a * im ** 2, axis=(1, 2, 3))  # grad = 2 a x
  expected = np.mean(np.sum((2 * a * x) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(adversarial.r1_penalty(d_fn, x), expected, rtol=1e-5)
  pen, logits = adversarial.r1_penalty(d_fn, x, return_logits=True)
  np.testing.assert_allclose(logits, d_fn(x), rtol=1e-6)
  # Per-patch logits maps are summed per example.
  d_map = lambda im: jnp.tanh(im * a)  # (N, 4, 4, 2) "logits"
  per_example = jax.vmap(jax.grad(lambda xi: d_map(xi[None]).sum()))(x)
  np.testing.assert_allclose(adversarial.r1_penalty(d_map, x),
                             np.mean(np.sum(np.square(per_example), axis=(1, 2, 3))),
                             rtol=1e-5)


def test_adaptive_gan_weight_and_adopt_weight():
  np.testing.assert_allclose(adversarial.adaptive_gan_weight(3.0, 2.0), 3.0 / (2.0 + 1e-4))
  assert float(adversarial.adaptive_gan_weight(1.0, 0.0)) == 1e4  # clipped at max
  assert float(adversarial.adaptive_gan_weight(5.0, 1.0, max_weight=2.0)) == 2.0
  assert float(adversarial.adaptive_gan_weight(0.0, 1.0)) == 0.0
  g = jax.grad(lambda r, q: adversarial.adaptive_gan_weight(r, q), argnums=(0, 1))(3.0, 2.0)
  assert g == (0.0, 0.0)  # no gradient flows through the weight
  assert float(adversarial.adopt_weight(0.8, 10, 100)) == 0.0
  assert float(adversarial.adopt_weight(0.8, 100, 100)) == pytest.approx(0.8)
  assert float(adversarial.adopt_weight(0.8, 5, 10, value=0.3)) == pytest.approx(0.3)
  jitted = jax.jit(lambda s: adversarial.adopt_weight(1.0, s, 3))
  assert [float(jitted(s)) for s in range(5)] == [0, 0, 0, 1, 1]


# ------------------------------------------------------------------ KL


def test_diagonal_gaussian_against_closed_form():
  rng = np.random.default_rng(2)
  moments = rng.normal(size=(3, 4, 4, 6)).astype(np.float32)
  moments[0, 0, 0, 3:] = [50.0, -100.0, 0.0]  # clamped to 20 and -30
  post = kl.DiagonalGaussian.from_moments(jnp.asarray(moments))
  mean, logvar = moments[..., :3], np.clip(moments[..., 3:], -30, 20)
  np.testing.assert_array_equal(post.mode(), mean)
  np.testing.assert_array_equal(post.logvar, logvar)
  var = np.exp(logvar.astype(np.float64))
  np.testing.assert_allclose(
      post.kl(), 0.5 * np.sum(mean ** 2 + var - 1 - logvar, axis=(1, 2, 3)), rtol=1e-5)
  other = kl.DiagonalGaussian.from_moments(jnp.asarray(rng.normal(size=(3, 4, 4, 6))))
  om, olv = np.asarray(other.mean, np.float64), np.asarray(other.logvar, np.float64)
  ref = 0.5 * np.sum((mean - om) ** 2 / np.exp(olv) + var / np.exp(olv) - 1 - logvar + olv,
                     axis=(1, 2, 3))
  np.testing.assert_allclose(post.kl(other), ref, rtol=1e-4)
  np.testing.assert_allclose(post.kl(post), 0.0, atol=1e-5)
  x = rng.normal(size=mean.shape)
  nll = 0.5 * np.sum(np.log(2 * np.pi) + logvar + (x - mean) ** 2 / var, axis=(1, 2, 3))
  np.testing.assert_allclose(post.nll(x), nll, rtol=1e-4)


def test_diagonal_gaussian_sampling_and_jit():
  moments = jnp.concatenate([jnp.full((1, 2, 2, 1), 1.5), jnp.full((1, 2, 2, 1), 0.5)], -1)
  post = kl.DiagonalGaussian.from_moments(moments)
  draws = jax.vmap(post.sample)(jax.random.split(jax.random.PRNGKey(0), 20000))
  assert abs(float(draws.mean()) - 1.5) < 0.02
  assert abs(float(draws.std()) - math.exp(0.25)) < 0.02
  out = jax.jit(lambda p, r: (p.sample(r), p.kl()))(post, jax.random.PRNGKey(1))
  chex.assert_shape(out[0], (1, 2, 2, 1))
  det = kl.DiagonalGaussian.from_moments(moments, deterministic=True)
  np.testing.assert_array_equal(det.sample(jax.random.PRNGKey(0)), det.mean)
  np.testing.assert_array_equal(det.kl(), 0.0)
  with pytest.raises(ValueError, match="even"):
    kl.DiagonalGaussian.from_moments(jnp.zeros((1, 2, 2, 3)))
