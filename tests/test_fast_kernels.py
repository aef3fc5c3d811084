"""The CPU-speed formulations of `jaxgen.nn.layers` give the reference results.

Each faster formulation (benchmarks/compare_torch_dit.py measures why) against the
plain one it replaces: the written-out softmax derivative against ``jax.nn.softmax``;
the Dense that multiplies (B * L, D) matrices against ``nn.Dense`` on (B, L, D); the
bf16 product accumulated in float32 against float32 arithmetic on the same bf16
values; the float32 adaLN modulation against the formula. And, in float32, the whole
DiT training step: three steps of a small DiT with every new formulation give the loss
trajectory of three steps with the reference ones. Autocast (``config.train.autocast``):
bf16 products with float32 everywhere else (checked on the jaxpr of the DiT's training
gradient), following the float32 trajectory within bf16 precision.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import dit
from jaxgen.nn import layers

from helpers import jaxpr_eqns


def test_softmax_values_and_gradient_equal_jax_nn_softmax():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 3, (2, 3, 5, 7)), jnp.float32)
  x = x.at[0, 0, 0, :4].set(jnp.finfo(jnp.float32).min)  # masked entries, as attention
  w = jnp.asarray(rng.normal(0, 1, x.shape), jnp.float32)
  np.testing.assert_allclose(layers.softmax(x), jax.nn.softmax(x, -1), rtol=1e-6, atol=1e-7)
  grad = lambda f: jax.grad(lambda x: jnp.sum(w * f(x) ** 2))(x)  # noqa: E731
  np.testing.assert_allclose(grad(layers.softmax), grad(lambda x: jax.nn.softmax(x, -1)),
                             rtol=1e-5, atol=1e-6)


def test_dense_on_flattened_rows_equals_nn_dense():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 8))
  ours = layers.Dense(6, dtype=jnp.float32)
  params = nn.meta.unbox(ours.init(jax.random.PRNGKey(1), x))
  ref = nn.Dense(6)
  ref_params = {"params": params["params"]["Dense_0"]}
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(ref_params, x), rtol=1e-6,
                             atol=1e-6)
  loss = lambda f, p: jnp.sum(jnp.sin(f(p, x)))  # noqa: E731
  g_ours = jax.grad(lambda p: loss(ours.apply, p))(params)["params"]["Dense_0"]
  g_ref = jax.grad(lambda p: loss(ref.apply, p))(ref_params)["params"]
  for k in ("kernel", "bias"):
    np.testing.assert_allclose(g_ours[k], g_ref[k], rtol=1e-5, atol=1e-5)


def test_bf16_matmul_accumulates_in_float32_forward_and_backward():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(0, 1, (64, 96)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(0, 1, (96, 32)), jnp.bfloat16)
  g = jnp.asarray(rng.normal(0, 1, (64, 32)), jnp.float32)
  f32 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  y, vjp = jax.vjp(layers.matmul_f32_accumulate, x, w)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, f32(x) @ f32(w), rtol=1e-5, atol=1e-4)
  dx, dw = vjp(g)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  g16 = f32(g.astype(jnp.bfloat16))  # the gradient enters the products in bf16
  # one rounding to bf16 of the exact products (bf16 has 8 bits: rel. error <= 2^-8)
  np.testing.assert_allclose(f32(dx), g16 @ f32(w).T, rtol=2 ** -8, atol=1e-2)
  np.testing.assert_allclose(f32(dw), f32(x).T @ g16, rtol=2 ** -8, atol=1e-2)
  # and the Dense in bf16 uses it: float32 product + bias, one rounding
  dense = layers.Dense(32, dtype=jnp.bfloat16)
  p = nn.meta.unbox(dense.init(jax.random.PRNGKey(0), x))
  k = p["params"]["Dense_0"]["kernel"].astype(jnp.bfloat16)
  b = p["params"]["Dense_0"]["bias"].astype(jnp.bfloat16)
  out = dense.apply(p, x)
  assert out.dtype == jnp.bfloat16
  want = (f32(x) @ f32(k) + f32(b)).astype(np.float32)
  np.testing.assert_allclose(f32(out), f32(jnp.asarray(want).astype(jnp.bfloat16)),
                             rtol=2 ** -7, atol=1e-2)


def test_bf16_batched_einsum_accumulates_in_float32_forward_and_backward():
  """Attention's two products (`einsum_f32_accumulate`) against float64 arithmetic on
  the same bf16 values; the gradients from the bf16-rounded incoming gradient."""
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(0, 1, (2, 3, 5, 8)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(0, 1, (2, 3, 7, 8)), jnp.bfloat16)
  g = jnp.asarray(rng.normal(0, 1, (2, 3, 5, 7)), jnp.float32)
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  spec = "bhqd,bhkd->bhqk"
  y, vjp = jax.vjp(lambda a, b: layers.einsum_f32_accumulate(spec, a, b), q, k)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, np.einsum(spec, f64(q), f64(k)), rtol=1e-5, atol=1e-4)
  dq, dk = vjp(g)
  assert dq.dtype == dk.dtype == jnp.bfloat16
  g16 = f64(g.astype(jnp.bfloat16))
  np.testing.assert_allclose(f64(dq), np.einsum("bhqk,bhkd->bhqd", g16, f64(k)),
                             rtol=2 ** -8, atol=1e-2)
  np.testing.assert_allclose(f64(dk), np.einsum("bhqd,bhqk->bhkd", f64(q), g16),
                             rtol=2 ** -8, atol=1e-2)
  with pytest.raises(ValueError, match="not a \\(batched\\) matrix product"):
    layers.einsum_f32_accumulate("ij,jk->k", q[0, 0], k[0, 0].T)


_MOVES = {"convert_element_type", "reshape", "transpose", "broadcast_in_dim", "squeeze",
          "slice", "concatenate", "copy", "copy_p", "expand_dims", "dynamic_slice",
          "dynamic_update_slice", "gather", "select_n", "pad"}


def test_autocast_dit_multiplies_in_bf16_and_computes_the_rest_in_float32():
  """Under ``layers.autocast(bf16)`` (a float32 DiT): every product of the training
  gradient takes bf16 operands and gives float32; no arithmetic op outputs bf16 (only
  converts and data movement do); and three training steps follow the float32
  trajectory within bf16 precision."""
  model = dit.DiT(input_size=8, in_channels=4, patch_size=2, hidden_size=16, depth=1,
                  num_heads=2, num_classes=10, learn_sigma=True)
  x = jnp.ones((2, 8, 8, 4))
  t, y = jnp.asarray([1, 500]), jnp.asarray([0, 10])
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y))["params"]

  def grad(p):
    with layers.autocast(jnp.bfloat16):
      return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t, y) ** 2))(p)

  eqns = list(jaxpr_eqns(jax.make_jaxpr(grad)(params).jaxpr))
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  # 11 products forward (timestep MLP 2, adaLN 2, qkv, QK^T, PV, proj, MLP 2, final
  # linear), about two a product backward: every one bf16 x bf16 -> float32
  assert len(dots) >= 30
  for e in dots:
    assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
    assert e.outvars[0].aval.dtype == jnp.float32, e
  arith_bf16 = [e.primitive.name for e in eqns if e.primitive.name not in _MOVES | {
      "dot_general"} and any(getattr(v.aval, "dtype", None) == jnp.bfloat16
                             for v in e.outvars)]
  assert not arith_bf16, arith_bf16
  # without autocast the same trace has no bf16 at all
  assert not any(getattr(v.aval, "dtype", None) == jnp.bfloat16
                 for e in jaxpr_eqns(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(model.apply(
                     {"params": p}, x, t, y))))(params).jaxpr) for v in e.outvars)

  ref, _ = _float32_trajectory()
  with layers.autocast(jnp.bfloat16):
    cast, _ = _dit_trajectory()
  assert np.all(np.diff(cast) < 0)
  np.testing.assert_allclose(cast, ref, rtol=2e-2)
  assert not np.array_equal(cast, ref)   # the products did run in bf16


def test_float32_norm_modulate_and_gate_equal_the_formula():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(0, 1, (2, 5, 8)), jnp.float32)
  shift, scale, gate = (jnp.asarray(rng.normal(0, 1, (2, 8)), jnp.float32) for _ in range(3))
  norm = lambda v: (v - v.mean(-1, keepdims=True)) / jnp.sqrt(v.var(-1, keepdims=True) + 1e-6)  # noqa: E731,E501
  got = layers.norm_modulate(norm, x, shift, scale, jnp.float32)
  np.testing.assert_array_equal(got, layers.modulate(norm(x), shift, scale))
  np.testing.assert_array_equal(layers.gated(gate, x, jnp.float32), gate[:, None] * x)
  low = layers.norm_modulate(norm, x.astype(jnp.bfloat16), shift, scale, jnp.bfloat16)
  assert low.dtype == jnp.bfloat16


class _ReferenceDense(nn.Module):
  """The Dense before the speed work: nn.Dense on any rank, lax.dot_general."""
  features: int
  axes: tuple = ("embed", "mlp")
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = layers.xavier
  bias_init: nn.initializers.Initializer = layers.zeros
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype,
                    kernel_init=nn.with_logical_partitioning(self.kernel_init, self.axes),
                    bias_init=nn.with_logical_partitioning(self.bias_init, self.axes[-1:]))(x)


def _dit_trajectory(steps=3):
  model = dit.DiT(input_size=8, in_channels=4, patch_size=2, hidden_size=16, depth=1,
                  num_heads=2, num_classes=10, learn_sigma=True)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(0, 1, (4, 8, 8, 4)), jnp.float32)
  t = jnp.asarray([1, 250, 500, 999], jnp.int32)
  y = jnp.asarray([0, 3, 9, 10], jnp.int32)
  # jitted (op by op, the init alone took seconds to compile); adaLN-Zero starts at a
  # zero output: move off it so every layer matters
  params = jax.jit(lambda: jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
      nn.meta.unbox(model.init(jax.random.PRNGKey(0), x, t, y))["params"]))()

  def loss(p):
    out = model.apply({"params": p}, x, t, y)
    return jnp.mean((out[..., :4] - x) ** 2) + 0.1 * jnp.mean(out[..., 4:] ** 2)

  step = jax.jit(lambda p: jax.value_and_grad(loss)(p))
  losses = []
  for _ in range(steps):
    value, grads = step(params)
    losses.append(float(value))
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  return np.asarray(losses), params


@functools.lru_cache(maxsize=None)
def _float32_trajectory():
  """`_dit_trajectory` with jaxgen's formulations in float32 (computed once a module)."""
  return _dit_trajectory()


def test_dit_loss_trajectory_equals_reference_formulations(monkeypatch):
  fast, fast_params = _float32_trajectory()
  monkeypatch.setattr(layers, "Dense", _ReferenceDense)
  monkeypatch.setattr(layers, "softmax", lambda x: jax.nn.softmax(x, axis=-1))
  ref, ref_params = _dit_trajectory()
  assert np.all(np.diff(ref) < 0)  # the steps train
  np.testing.assert_allclose(fast, ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(fast_params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 8), (2, 3, 8)])
def test_dense_keeps_shapes(shape):
  x = jnp.ones(shape)
  out, _ = layers.Dense(5).init_with_output(jax.random.PRNGKey(0), x)
  assert out.shape == shape[:-1] + (5,)


_NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("hw,k,stride,padding", [
    (4, 4, 1, ((1, 1), (1, 1))),   # the PatchGAN's stride-1 conv on its 4x4 map
    (4, 4, 1, "VALID"),            # a final 4x4 conv to 1x1
    (4, 4, 2, "SAME"),             # even kernel, SAME: asymmetric padding
    (5, 3, 2, ((2, 0), (1, 3))),   # explicit asymmetric padding, stride 2
])
def test_im2col_conv_values_and_gradients_equal_lax_conv(hw, k, stride, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(0, 1, (3, hw, hw + 1, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 0.3, (k, k, 5, 7)), jnp.float32)
  g = jnp.asarray(rng.normal(0, 1, jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=_NHWC).shape), jnp.float32)
  ref = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (stride, stride), padding, dimension_numbers=_NHWC)
  ours = lambda x, w: layers.im2col_conv2d(x, w, (stride, stride), padding)  # noqa: E731
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(g * f(x, w)), (0, 1))(x, w)  # noqa: E731
  for a, b in zip(grads(ours), grads(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_small_maps_take_im2col_in_convs_and_give_the_same_discriminator():
  """`layers.conv_general_dilated` (every jaxgen conv) routes the PatchGAN's two convs on
  maps no larger than their kernel through im2col on CPU, the rest through XLA's conv;
  logits and parameter gradients equal those of plain convolutions."""
  from jaxgen.tokenizers import nets  # pylint: disable=g-import-not-at-top
  disc = nets.PatchGANDiscriminator(channels=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 1))
  params = disc.init(jax.random.PRNGKey(1), x)

  def run(enabled):
    with layers.small_map_im2col(enabled):
      f = lambda p: jnp.sum(jnp.sin(disc.apply(p, x)))  # noqa: E731
      convs = str(jax.make_jaxpr(f)(params)).count("conv_general_dilated")
      return convs, disc.apply(params, x), jax.jit(jax.grad(f))(params)

  (convs, logits, grads), (convs_ref, logits_ref, grads_ref) = run(True), run(False)
  assert (convs, convs_ref) == (3, 5)   # conv_3 (4x4 map) and conv_out (3x3) as matmuls
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         grads, grads_ref)
  # A map too small for any output (8x8 inputs: 1x1 at the stride-1 conv, padded to 3x3
  # for a 4x4 kernel) stays XLA's: the same empty logits, not an error.
  x8 = jnp.ones((1, 8, 8, 1))
  empty = disc.apply(params, x8)
  with layers.small_map_im2col(False):
    assert empty.shape == disc.apply(params, x8).shape == (1, 0, 0, 1)
