"""The GAN paradigm: losses equal their formulas, R1 equals finite differences,
DiffAugment equals NumPy references, a D update leaves G exactly as it was (and the
other way round), the sharded step on a 2x4 mesh equals one device, stop/resume ==
uninterrupted, and a trained run samples through `jaxgen sample`'s code path."""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import generate
from jaxgen.config import ConfigError
from jaxgen.losses import adversarial, augment
from jaxgen.models import gan as gan_models
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.train import loop


def tiny_gan_config(source_dir, data_dir, **train):
  """8x8 images, one block per network of width 8 (about 4k parameters)."""
  import common  # configs/common.py
  c = common.gan_config()
  c.data.source_dir = source_dir
  c.data.data_dir = data_dir
  c.data.pp = "resize(8)|scale(-1, 1)"
  c.model.update(dict(variant=None, latent_dim=8, embed_dim=4, g_channels=(8,),
                      d_channels=(8,)))
  c.paradigm.r1_gamma = 1.0
  c.paradigm.r1_every = 2
  c.paradigm.diffaug = "color,translation,cutout"
  c.optim.lr = 1e-3
  # Conv biases right before a GroupNorm have exactly zero gradient, which comes out as
  # float noise; Adam with eps=1e-8 would turn it into lr-sized steps of random sign and
  # the sharded == one-device comparison would compare noise.
  c.optim.eps = 1e-3
  c.optim.ema_decay = 0.9
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.sample.batch_size = 8
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture
def gan_config(fake_fmnist_dir, data_dir):
  return lambda **train: tiny_gan_config(fake_fmnist_dir, data_dir, **train)


@pytest.fixture(scope="module")
def exp1(fake_fmnist_dir, data_dir):
  """One single-device experiment shared by the tests that only need the paradigm."""
  return loop.build(tiny_gan_config(fake_fmnist_dir, data_dir), jax.devices()[:1])


# -- losses -----------------------------------------------------------------------
def test_gan_losses_equal_their_formulas():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(0, 2, (2, 7)).astype(np.float32)
  softplus = lambda v: np.log1p(np.exp(v))
  np.testing.assert_allclose(
      adversarial.discriminator_loss("hinge", real, fake),
      np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean(), rtol=1e-6)
  np.testing.assert_allclose(
      adversarial.discriminator_loss("non_saturating", real, fake),
      -np.log(1 / (1 + np.exp(-real))).mean() - np.log(1 - 1 / (1 + np.exp(-fake))).mean(),
      rtol=1e-5)
  np.testing.assert_allclose(adversarial.generator_loss("hinge", fake), -fake.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(adversarial.generator_loss("non_saturating", fake),
                             softplus(-fake).mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="wasserstein"):
    adversarial.generator_loss("wasserstein", fake)


def test_r1_penalty_equals_finite_differences():
  """R1 = mean_i ||dD(x_i)/dx_i||^2 against central differences, in float64 (the
  projection discriminator is piecewise linear in x, so they are exact up to kinks)."""
  with jax.enable_x64(True):
    disc = gan_models.Discriminator(num_classes=3, d_channels=(4,), dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1), jnp.float64)
    y = jnp.array([0, 2])
    shapes = nn.meta.unbox(jax.eval_shape(disc.init, jax.random.PRNGKey(1), x, y))
    rng = np.random.default_rng(1)  # NumPy weights: nothing to compile for the init
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape), shapes)
    apply = jax.jit(disc.apply)
    got = jax.jit(adversarial.r1_penalty, static_argnums=0)(lambda v: apply(params, v, y), x)
    h, n = 1e-6, x[0].size
    eye = np.eye(n).reshape((n,) + x.shape[1:])
    grads = []
    for i in range(2):  # all n perturbations of example i as one batch
      plus = apply(params, x[i] + h * eye, jnp.full((n,), y[i]))
      minus = apply(params, x[i] - h * eye, jnp.full((n,), y[i]))
      grads.append((np.asarray(plus) - np.asarray(minus)) / (2 * h))
    expected = np.mean([np.sum(g ** 2) for g in grads])
    assert expected > 0
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_lazy_r1_adds_gamma_half_times_interval_r1_gradient(exp1):
  par, state = exp1.paradigm, exp1.init_state()
  p = exp1.config.paradigm
  batch = next(loop.make_data_iterator(exp1))
  x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  key = jax.random.PRNGKey(3)
  d, g = state.params["discriminator"], state.params["generator"]

  @jax.jit
  def grads(on):
    x_real = par.d_inputs(g, x, y, key)[0]  # the (augmented) reals D saw
    r1_ref = jax.value_and_grad(lambda q: adversarial.r1_penalty(
        lambda v: par.discriminate(q, v, y), x_real))(d)
    return par.d_grads(d, g, x, y, key, on), r1_ref

  ((g_on, m_on), (r1, r1_grads)), ((g_off, m_off), _) = grads(True), grads(False)
  w = p.r1_gamma / 2 * p.r1_every
  expected = jax.tree.map(lambda a, r: a + w * r, g_off, r1_grads)
  chex.assert_trees_all_close(g_on, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m_on["r1"], p.r1_every * r1, rtol=1e-6)
  assert float(r1) > 0 and float(m_off["r1"]) == 0.0
  np.testing.assert_allclose(m_on["d_loss"], m_off["d_loss"])


# -- DiffAugment ------------------------------------------------------------------
def test_diffaugment_ops_equal_numpy_references():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 8, 8, 2)).astype(np.float32)
  shifts = np.array([[1, -2], [0, 0], [-1, 1]])
  got = np.asarray(augment.translate(jnp.asarray(x), jnp.asarray(shifts), max_shift=2))
  ref = np.zeros_like(x)
  for b, (dy, dx) in enumerate(shifts):
    for i in range(8):
      for j in range(8):
        if 0 <= i - dy < 8 and 0 <= j - dx < 8:
          ref[b, i, j] = x[b, i - dy, j - dx]
  np.testing.assert_array_equal(got, ref)

  centers = np.array([[0, 0], [4, 5], [7, 3]])
  got = np.asarray(augment.cutout(jnp.asarray(x), jnp.asarray(centers), size=4))
  ref = x.copy()
  for b, (cy, cx) in enumerate(centers):
    ref[b, max(cy - 2, 0):cy + 2, max(cx - 2, 0):cx + 2] = 0
  np.testing.assert_array_equal(got, ref)

  u = np.array([0.1, 0.5, 0.9], np.float32)
  ub = u[:, None, None, None]
  np.testing.assert_allclose(augment.brightness(x, u), x + ub - 0.5, rtol=1e-6, atol=1e-6)
  m = x.mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(augment.contrast(x, u), (x - m) * (ub + 0.5) + m, rtol=1e-5,
                             atol=1e-6)
  mc = x.mean(axis=-1, keepdims=True)
  np.testing.assert_allclose(augment.saturation(x, u), (x - mc) * 2 * ub + mc, rtol=1e-5,
                             atol=1e-6)

  # Differentiable: d sum(w * translate(x)) / dx is w shifted back.
  w = rng.normal(size=x.shape).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(w * augment.translate(v, jnp.asarray(shifts), 2)))(
      jnp.asarray(x))
  back = np.asarray(augment.translate(jnp.asarray(w), jnp.asarray(-shifts), 2))
  np.testing.assert_allclose(grad, back, rtol=1e-6)

  # The random forms run inside the step tests (the tiny config uses all three).
  np.testing.assert_array_equal(augment.diff_augment(jax.random.PRNGKey(0), x, ()), x)
  assert augment.parse_policy(" color,cutout ") == ("color", "cutout")
  with pytest.raises(ValueError, match="flip"):
    augment.parse_policy("translation,flip")


# -- the step ---------------------------------------------------------------------
def test_d_update_leaves_generator_untouched_and_g_update_discriminator(exp1):
  par, state, tx = exp1.paradigm, exp1.init_state(), exp1.tx
  batch = next(loop.make_data_iterator(exp1))
  x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  d_up = jax.jit(lambda p, o, k: par.d_update(p, o, tx, x, y, k)[:2])
  g_up = jax.jit(lambda p, o, k: par.g_update(p, o, tx, y, k)[:2])
  get = lambda tree, net: jax.device_get(tree[net])
  get_opt = lambda o, net: jax.device_get(o.inner_states[net])
  params, opt = state.params, state.opt_state
  for i in range(2):  # the first update runs at lr 0 (schedule starts at 0)
    new_params, new_opt = d_up(params, opt, jax.random.PRNGKey(i))
    chex.assert_trees_all_equal(get(new_params, "generator"), get(params, "generator"))
    chex.assert_trees_all_equal(get_opt(new_opt, "generator"), get_opt(opt, "generator"))
    params, opt = new_params, new_opt
  moved_d = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                         get(params, "discriminator"),
                                         get(state.params, "discriminator")))
  assert max(moved_d) > 0
  d_before, opt_d_before = get(params, "discriminator"), get_opt(opt, "discriminator")
  g_before = get(params, "generator")
  for i in range(2):
    params, opt = g_up(params, opt, jax.random.PRNGKey(10 + i))
    chex.assert_trees_all_equal(get(params, "discriminator"), d_before)
    chex.assert_trees_all_equal(get_opt(opt, "discriminator"), opt_d_before)
  moved_g = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                         get(params, "generator"), g_before))
  assert max(moved_g) > 0


def _steps(exp, state, n):
  step_fn, _ = loop.make_train_step(exp)
  it = loop.make_data_iterator(exp)
  metrics = []
  for _ in range(n):
    state, m = step_fn(state, mesh_lib.global_batch(next(it), exp.mesh))
    metrics.append(jax.device_get(m))
  return state, metrics


def test_sharded_step_on_2x4_mesh_equals_one_device(gan_config, exp1):
  c8 = gan_config()
  c8.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4, tensor=1))
  exp8 = loop.build(c8, jax.devices())
  s1, m1 = _steps(exp1, exp1.init_state(), 3)
  # The same initial state placed on the 2x4 mesh (exp8.init_state() would create it
  # there directly, at the cost of compiling the initialisers again).
  init8 = jax.device_put(jax.device_get(exp1.init_state()), exp8.state_shardings)
  s8, m8 = _steps(exp8, init8, 3)
  # r1_every=2: R1 on steps 0 and 2, not on step 1.
  assert m1[0]["r1"] > 0 and m1[1]["r1"] == 0 and m1[2]["r1"] > 0
  for a, b in zip(m1, m8):
    for k in ("loss", "d_loss", "d_real", "d_fake", "r1"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-4, atol=5e-6)
  jax.tree.map(close, jax.device_get(s1.params), jax.device_get(s8.params))
  jax.tree.map(close, jax.device_get(s1.ema_params), jax.device_get(s8.ema_params))
  # EMA averages the generator only; the discriminator entry mirrors the live one.
  chex.assert_trees_all_equal(jax.device_get(s1.ema_params["discriminator"]),
                              jax.device_get(s1.params["discriminator"]))
  assert not np.array_equal(jax.device_get(s1.ema_params["generator"]["conv_out"]),
                            jax.device_get(s1.params["generator"]["conv_out"]))


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted_and_samples(gan_config, tmp_path, one_device):
  config = gan_config(num_steps=4, ckpt_every=100)
  full = loop.train(config, str(tmp_path / "full"), one_device, progress=False)
  wd = str(tmp_path / "resumed")
  loop.train(config, wd, one_device, stop_after=2, progress=False)
  resumed = loop.train(config, wd, one_device, progress=False)
  get = lambda s: jax.device_get((s.params, s.ema_params, s.opt_state, s.step))
  jax.tree.map(np.testing.assert_array_equal, get(full), get(resumed))
  # `jaxgen sample`'s path: EMA weights, 20 images (2 per class), .npz + PNG.
  exp, state, step = generate.load_run(wd, devices=one_device)
  assert step == 4
  images, labels = generate.generate(exp, state.ema_params, num=20, seed=0, batch_size=8,
                                     progress=False)
  chex.assert_shape(images, (20, 8, 8, 1))
  assert images.dtype == np.uint8 and list(labels[:10]) == list(range(10))
  png = generate.save_samples(str(tmp_path / "s.npz"), images, labels)
  assert os.path.isfile(png)


# -- sampling and config ----------------------------------------------------------
def test_sample_shapes_null_label_and_rejected_options(exp1):
  par, state = exp1.paradigm, exp1.init_state()
  labels = jnp.array([0, 9, 10, 10])  # 10 = the null label: a random class
  sample = jax.jit(lambda p, r: par.sample(p, r, labels))  # one program, not op by op
  x = sample(state.ema_params, jax.random.PRNGKey(0))
  chex.assert_shape(x, (4, 8, 8, 1))
  assert float(jnp.abs(x).max()) <= 1.0
  same = sample(state.ema_params, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(x, same)
  with pytest.raises(ValueError, match="cfg_scale"):
    par.sample(state.ema_params, jax.random.PRNGKey(0), labels, cfg_scale=2.0)
  assert par.model_summary()["module"] is par.model.generator


@pytest.mark.parametrize("field,value,match", [
    ("paradigm.loss", "wgan", "paradigm.loss"),
    ("paradigm.diffaug", "translation,flip", "paradigm.diffaug"),
    ("paradigm.d_steps", 0, "paradigm.d_steps"),
    ("paradigm.r1_gamma", -1.0, "paradigm.r1_gamma"),
    ("model.name", "unet", "not a GAN pair"),
    ("model.g_channels", (8, 8), "g_channels"),
])
def test_bad_configs_fail_with_the_field_named(gan_config, field, value, match):
  c = gan_config()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ConfigError, match=match):
    loop.build(c, jax.devices()[:1])
