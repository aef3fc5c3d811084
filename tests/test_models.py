"""Architectures: shapes/dtypes, adaLN-Zero identity at init, the papers' parameter
counts and forward FLOPs at named sizes (from jax.eval_shape, nothing allocated)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.models import dit, unet

# Peebles & Xie 2023, Table 1/4 (256x256 images = 32x32x4 latents, 1000 classes,
# learn_sigma): parameters (M) and forward Gflops.
DIT_PARAMS_M = {"S/2": 32.96, "XL/2": 675.13}
DIT_GFLOPS = {"S/8": 0.36, "S/4": 1.41, "S/2": 6.06, "B/8": 1.42, "B/4": 5.56,
              "B/2": 23.01, "L/8": 5.01, "L/4": 19.70, "L/2": 80.71, "XL/8": 7.39,
              "XL/4": 29.05, "XL/2": 118.64}


def _abstract(module, *inputs):
  return jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), *inputs)))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _paper_dit(variant):
  return dit.DiT(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True,
                 **dit.dit_variant(variant))


def _inputs(batch, size, channels):
  return (jnp.zeros((batch, size, size, channels)), jnp.zeros((batch,)),
          jnp.zeros((batch,), jnp.int32))


@pytest.mark.parametrize("variant", sorted(DIT_PARAMS_M))
def test_dit_parameter_count_matches_paper(variant):
  m = _paper_dit(variant)
  n = _count(_abstract(m, *_inputs(1, 32, 4))["params"]) + m.fixed_parameter_count()
  assert round(n / 1e6, 2) == DIT_PARAMS_M[variant]


@pytest.mark.parametrize("variant", ["S/2", "B/4", "L/8", "XL/2"])
def test_dit_forward_gflops_within_5_percent_of_paper(variant):
  m = _paper_dit(variant)
  x = _inputs(1, 32, 4)
  params = _abstract(m, *x)
  cost = jax.jit(lambda p, *a: m.apply(p, *a)).lower(params, *x).cost_analysis()
  gmacs = float(cost["flops"]) / 2e9  # the paper counts multiply-adds
  assert abs(gmacs / DIT_GFLOPS[variant] - 1) < 0.05, (gmacs, DIT_GFLOPS[variant])


def test_ddpm_cifar10_unet_has_paper_parameter_count():
  m = unet.build_unet(ml_collections.ConfigDict(dict(variant="ddpm_cifar10")),
                      image_shape=(32, 32, 3), num_classes=0)
  n = _count(_abstract(m, *_inputs(1, 32, 3))["params"])
  # Ho et al. 2020: 35.7M (our null-class row adds 512 parameters).
  assert round((n - 512) / 1e6, 1) == 35.7


def _tiny_dit(**kw):
  return dit.DiT(input_size=16, in_channels=3, patch_size=4, hidden_size=32, depth=2,
                 num_heads=4, num_classes=5, **kw)


@pytest.mark.parametrize("scan", [False, True])
def test_dit_shapes_and_dtypes(scan):
  m = _tiny_dit(scan_blocks=scan)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 3))
  t = jnp.array([0.0, 500.0, 999.0])
  y = jnp.array([0, 4, 5])  # 5 = null class
  params = jax.jit(m.init)(jax.random.PRNGKey(1), x, t, y)
  out = jax.jit(m.apply)(params, x, t, y)
  chex.assert_shape(out, (3, 16, 16, 3))
  chex.assert_type(out, jnp.float32)
  # Zero-initialised final layer: the untrained network predicts zeros.
  np.testing.assert_allclose(out, 0.0)


def test_dit_learn_sigma_doubles_output_channels():
  m = _tiny_dit(learn_sigma=True)
  x = _inputs(2, 16, 3)
  out = jax.eval_shape(m.apply, jax.eval_shape(m.init, jax.random.PRNGKey(0), *x), *x)
  chex.assert_shape(out, (2, 16, 16, 6))


def test_adaln_zero_block_is_identity_at_init():
  block = dit.DiTBlock(hidden_size=32, num_heads=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 32))
  params = block.init(jax.random.PRNGKey(2), x, c)
  np.testing.assert_array_equal(block.apply(params, x, c), x)


def test_adaln_block_depends_on_condition_after_perturbation():
  """The identity at init is due to the zero gates, not a disconnected branch."""
  block = dit.DiTBlock(hidden_size=32, num_heads=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 32))
  params = nn.meta.unbox(block.init(jax.random.PRNGKey(2), x, c))
  params = jax.tree.map(lambda p: p + 0.01, params)
  assert not np.allclose(block.apply(params, x, c), x)


def test_unet_shapes_dtypes_and_condition_dependence():
  m = unet.UNet(input_size=16, in_channels=1, out_channels=1, channels=8,
                channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                head_channels=8, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  t = jnp.array([10.0, 900.0])
  params = nn.meta.unbox(jax.jit(m.init)(jax.random.PRNGKey(1), x, t, jnp.array([0, 1])))
  apply = jax.jit(m.apply)  # one program for the three calls
  out = apply(params, x, t, jnp.array([0, 1]))
  chex.assert_shape(out, (2, 16, 16, 1))
  chex.assert_type(out, jnp.float32)
  params = jax.tree.map(lambda p: p + 0.05, params)  # leave the zero-init output
  a = apply(params, x, t, jnp.array([0, 1]))
  b = apply(params, x, t, jnp.array([2, 2]))
  assert not np.allclose(a, b), "class embedding has no effect"


def test_dit_rejects_indivisible_input():
  m = _tiny_dit()
  with pytest.raises(ValueError, match="not divisible by patch size"):
    m.init(jax.random.PRNGKey(0), *_inputs(1, 18, 3))


def test_sincos_2d_matches_numpy_formula():
  from jaxgen.nn import layers
  emb = layers.sincos_2d(8, 2, 3)
  chex.assert_shape(emb, (6, 8))
  # Token (row=1, col=2): first half embeds the column, second half the row.
  omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
  expect = np.concatenate([np.sin(2 * omega), np.cos(2 * omega),
                           np.sin(1 * omega), np.cos(1 * omega)])
  np.testing.assert_allclose(emb[1 * 3 + 2], expect, rtol=1e-6)


def test_attention_core_matches_numpy_and_jax_reference():
  from jaxgen.nn import layers
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, 5, 3, 4)).astype(np.float32) for _ in range(3))
  mask = np.tril(np.ones((5, 5), bool))[None, None]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
  logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("bhqk,bkhd->bqhd", p, v)
  ours = layers.attention_core(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  fused = layers.attention_core(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask,
                                impl="dot_product_attention")
  np.testing.assert_allclose(fused, ref, rtol=1e-5, atol=1e-6)
