"""Quantizers: straight-through gradients, exact look-ups, l2/factorised codes, EMA and
dead-code restart, VAR's multi-scale recursion, all checked against NumPy references."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.tokenizers import quantizers as q

KEY = jax.random.key(0)
# One codebook size, code width and input shape for most tests: JAX compiles each
# eager op once per shape, so shared shapes keep this file fast.
K, D, Z_SHAPE = 16, 4, (2, 4, 5, 4)


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _init(module, x, **kw):
  return nn.unbox(module.init(KEY, x, **kw))


# --------------------------------------------------------------------- VectorQuantizer


@pytest.mark.parametrize("use_ema", [False, True])
def test_straight_through_gradient_is_identity(use_ema):
  vq = q.VectorQuantizer(K, D, use_ema=use_ema)
  z, w = _normal(1, Z_SHAPE), _normal(2, Z_SHAPE)
  variables = _init(vq, z)
  grad = jax.grad(lambda z: jnp.sum(w * vq.apply(variables, z)[0]))(z)
  chex.assert_trees_all_close(grad, w)


def test_quantizing_a_codebook_entry_returns_it_and_its_index():
  vq = q.VectorQuantizer(K, D)
  variables = _init(vq, jnp.zeros(Z_SHAPE))
  codebook = variables["params"]["codebook"]
  idx = jax.random.randint(jax.random.key(3), Z_SHAPE[:-1], 0, K)
  z_q, aux = vq.apply(variables, codebook[idx])
  np.testing.assert_array_equal(aux["indices"], idx)
  np.testing.assert_array_equal(z_q, codebook[idx])
  assert aux["indices"].dtype == jnp.int32
  assert float(aux["commitment_loss"]) == 0.0 and float(aux["codebook_loss"]) == 0.0


def test_l2_lookup_is_numpy_argmax_of_cosine_similarity():
  vq = q.VectorQuantizer(K, D, l2_normalize=True)
  z = _normal(4, Z_SHAPE) * 3.0
  variables = _init(vq, z)
  codebook = np.asarray(variables["params"]["codebook"])
  z_q, aux = vq.apply(variables, z)
  ref = np.argmax(_unit(np.asarray(z, np.float64)) @ _unit(codebook.astype(np.float64)).T,
                  axis=-1)
  np.testing.assert_array_equal(aux["indices"], ref)
  np.testing.assert_allclose(z_q, _unit(codebook)[ref], atol=1e-6)
  codes = vq.apply(variables, aux["indices"], method=vq.lookup_codes)
  np.testing.assert_allclose(np.linalg.norm(codes, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("in_dim", [None, 16])
def test_factorized_codes_look_up_in_code_dim(in_dim):
  vq = q.VectorQuantizer(K, D, factorized=True, l2_normalize=True, in_dim=in_dim)
  z = _normal(5, Z_SHAPE[:-1] + (16,))
  variables = _init(vq, z)
  p = variables["params"]
  chex.assert_shape([p["codebook"], p["proj_in"]["kernel"], p["proj_out"]["kernel"]],
                    [(K, D), (16, D), (D, 16)])
  z_q, aux = vq.apply(variables, z)
  chex.assert_shape([z_q, aux["indices"]], [z.shape, z.shape[:-1]])
  # The look-up happens on the 8-dim projection of z, not on z.
  z_e = np.asarray(z) @ np.asarray(p["proj_in"]["kernel"]) + np.asarray(p["proj_in"]["bias"])
  ref = np.argmax(_unit(z_e) @ _unit(np.asarray(p["codebook"])).T, axis=-1)
  np.testing.assert_array_equal(aux["indices"], ref)
  codes = vq.apply(variables, aux["indices"], method=vq.lookup_codes)
  chex.assert_shape(codes, z.shape[:-1] + (D,))
  up = vq.apply(variables, aux["indices"], method=vq.embed)
  np.testing.assert_allclose(
      up, np.asarray(codes) @ np.asarray(p["proj_out"]["kernel"]) + p["proj_out"]["bias"],
      atol=1e-5)
  np.testing.assert_allclose(z_q, up, atol=1e-5)


def test_ema_update_matches_numpy_one_step():
  decay, eps, k, d = 0.9, 1e-5, K, D
  vq = q.VectorQuantizer(k, d, use_ema=True, ema_decay=decay, ema_epsilon=eps)
  z = _normal(6, Z_SHAPE)
  variables = _init(vq, z)
  assert "params" not in variables  # the EMA codebook is state, not a parameter
  stats = jax.tree.map(np.asarray, variables["vq_stats"])
  (_, aux), new = vq.apply(variables, z, train=True, mutable=["vq_stats"])
  new = jax.tree.map(np.asarray, nn.unbox(new)["vq_stats"])

  z_nd = np.asarray(z, np.float64).reshape(-1, d)
  emb0 = stats["embedding"].astype(np.float64)
  idx = np.argmin(((z_nd[:, None] - emb0[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(np.asarray(aux["indices"]).reshape(-1), idx)
  counts = np.bincount(idx, minlength=k).astype(np.float64)
  sums = np.zeros((k, d))
  np.add.at(sums, idx, z_nd)
  cluster = decay * stats["cluster_size"] + (1 - decay) * counts
  embed_sum = decay * stats["embed_sum"] + (1 - decay) * sums
  n = cluster.sum()
  embedding = embed_sum / ((cluster + eps) / (n + k * eps) * n)[:, None]
  np.testing.assert_allclose(new["cluster_size"], cluster, rtol=1e-5)
  np.testing.assert_allclose(new["embed_sum"], embed_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["embedding"], embedding, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["usage"], (1 - 0.99) * counts * k / counts.sum(), rtol=1e-5)
  assert float(aux["codebook_loss"]) == 0.0


def test_stats_untouched_unless_training_with_mutable_collection():
  vq = q.VectorQuantizer(K, D, use_ema=True)
  z = _normal(7, Z_SHAPE)
  variables = _init(vq, z)
  _, same = vq.apply(variables, z, train=False, mutable=["vq_stats"])
  chex.assert_trees_all_equal(same, {"vq_stats": variables["vq_stats"]})
  z_q, _ = vq.apply(variables, z, train=True)  # immutable: runs, updates nothing
  chex.assert_shape(z_q, z.shape)
  # No gradient reaches the EMA codebook.
  loss = lambda v: vq.apply(v, z, train=False)[1]["loss"]
  grads = jax.grad(loss)(variables)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("use_ema", [False, True])
def test_dead_code_restart_replaces_only_dead_codes_with_batch_vectors(use_ema):
  k, d = K, D
  kw = dict(codebook_size=k, code_dim=d, use_ema=use_ema, ema_decay=0.9)
  vq, vq_plain = q.VectorQuantizer(restart_dead=True, **kw), q.VectorQuantizer(**kw)
  # Every batch vector sits next to one of codes 0..2: the other 13 codes are dead.
  variables = _init(vq, jnp.zeros(Z_SHAPE))
  live = lambda v: np.asarray(vq.apply(v, jnp.arange(k), method=vq.lookup_codes))
  c0 = live(variables)
  z = jnp.asarray(c0[np.arange(40) % 3]) + 1e-3 * _normal(8, (40, d))
  (_, aux), stats = vq.apply(variables, z, train=True, mutable=["vq_stats"],
                             rngs={"vq_restart": jax.random.key(9)})
  after = live(variables | nn.unbox(stats))
  used = np.bincount(np.asarray(aux["indices"]), minlength=k) > 0
  np.testing.assert_array_equal(used, np.arange(k) < 3)
  # Used codes: exactly what the same step gives without restarts.
  plain_vars = {c: {n: v for n, v in col.items() if n not in ("steps", "codebook_offset")}
                for c, col in variables.items()}
  (_, _), plain = vq_plain.apply(plain_vars, z, train=True, mutable=["vq_stats"])
  expected_used = np.asarray(vq_plain.apply(plain_vars | nn.unbox(plain), jnp.arange(k),
                                            method=vq_plain.lookup_codes))
  np.testing.assert_allclose(after[used], expected_used[used], atol=1e-6)
  # Dead codes: each is now one of the batch vectors.
  dist = np.abs(after[~used][:, None, :] - np.asarray(z)[None]).max(-1)
  assert np.all(dist.min(axis=1) < 1e-6), dist.min(axis=1)
  # And they are now found: a batch vector that became a code quantizes to itself.
  z_q, _ = vq.apply(variables | nn.unbox(stats), jnp.asarray(after[~used]))
  np.testing.assert_allclose(z_q, after[~used], atol=1e-6)


def test_perplexity_and_usage_match_numpy():
  counts = np.array([5.0, 0.0, 3.0, 1.0, 1.0])
  p = counts / counts.sum()
  ref = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
  np.testing.assert_allclose(q.perplexity(jnp.asarray(counts)), ref, rtol=1e-6)
  np.testing.assert_allclose(q.perplexity(jnp.ones(7)), 7.0, rtol=1e-6)

  vq = q.VectorQuantizer(K, D)
  z = _normal(10, Z_SHAPE)
  variables = _init(vq, z)
  _, aux = vq.apply(variables, z)
  c = np.bincount(np.asarray(aux["indices"]).reshape(-1), minlength=K)
  pc = c[c > 0] / c.sum()
  np.testing.assert_allclose(aux["perplexity"], np.exp(-np.sum(pc * np.log(pc))), rtol=1e-5)
  np.testing.assert_allclose(aux["usage"], np.mean(c > 0), rtol=1e-6)
  assert float(aux["usage_window"]) == 0.0  # usage EMA starts at zero
  (_, aux), stats = vq.apply(variables, z, train=True, mutable=["vq_stats"])
  np.testing.assert_allclose(aux["usage_window"], np.mean(c > 0), rtol=1e-6)


def test_video_input_under_jit_traces_once():
  vq = q.VectorQuantizer(K, D, factorized=True, l2_normalize=True, use_ema=True,
                         restart_dead=True)
  x = _normal(11, (2, 3, 4, 4, 16))  # N, T, H, W, C
  variables = _init(vq, x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(variables, x):
    (z_q, aux), stats = vq.apply(variables, x, train=True, mutable=["vq_stats"])
    return z_q, aux, variables | stats

  for _ in range(2):
    z_q, aux, variables = step(variables, x)
  chex.assert_shape([z_q, aux["indices"]], [x.shape, x.shape[:-1]])
  assert aux["indices"].dtype == jnp.int32
  chex.assert_tree_all_finite((z_q, aux["loss"], aux["perplexity"]))


# --------------------------------------------------------- multi-scale (VAR), NumPy refs


def np_area(x, s):
  """Adaptive average pooling (PyTorch's area interpolation), one window at a time."""
  n, h, w, c = x.shape
  out = np.zeros((n, s, s, c))
  for i in range(s):
    for j in range(s):
      r0, r1 = (i * h) // s, -(-((i + 1) * h) // s)
      c0, c1 = (j * w) // s, -(-((j + 1) * w) // s)
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


def np_bicubic(x, size, a=-0.75):
  """PyTorch bicubic (align_corners=False), pixel by pixel with clamped taps."""
  def weight(t):
    t = abs(t)
    if t <= 1:
      return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a if t < 2 else 0.0

  n, h, w, c = x.shape
  out = np.zeros((n, size, size, c))
  for i in range(size):
    for j in range(size):
      si, sj = (i + 0.5) * h / size - 0.5, (j + 0.5) * w / size - 0.5
      fi, fj = int(np.floor(si)), int(np.floor(sj))
      for di in range(-1, 3):
        for dj in range(-1, 3):
          wgt = weight(si - (fi + di)) * weight(sj - (fj + dj))
          out[:, i, j] += wgt * x[:, min(max(fi + di, 0), h - 1), min(max(fj + dj, 0), w - 1)]
  return out


def np_conv3x3(x, kernel, bias):
  n, h, w, _ = x.shape
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],)) + bias
  for di in range(3):
    for dj in range(3):
      out += pad[:, di:di + h, dj:dj + w] @ kernel[di, dj]
  return out


MS_SCALES, MS_RATIO, MS_SHAPE = (1, 3, 5, 8), 0.5, (2, 8, 8, D)


@pytest.fixture(scope="module")
def ms():
  """A small multi-scale quantizer (4 scales, 4 phis), features, variables and tokens."""
  msq = q.MultiScaleResidualQuantizer(K, D, scales=MS_SCALES, num_phi=4, phi_ratio=MS_RATIO)
  f = _normal(12, MS_SHAPE)
  variables = _init(msq, f)
  return msq, f, variables, msq.apply(variables, f, method="features_to_indices")


def test_multiscale_reconstruction_equals_its_recursion_in_numpy(ms):
  msq, f, variables, indices = ms
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  # VAR's ticks for 4 phis over 4 scales: scale k uses phi k.
  assert [q.phi_index(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]
  cumulative = msq.apply(variables, indices, method="indices_to_cumulative")
  f_hat = msq.apply(variables, indices, method="indices_to_features")

  codebook = p["codebook"]
  rest, acc = np.asarray(f, np.float64), 0.0
  for i, s in enumerate(MS_SCALES):
    r = np_area(rest, s)
    dist = ((r[..., None, :] - codebook) ** 2).sum(-1)
    idx = np.asarray(indices[i])
    chex.assert_shape(idx, (2, s, s))
    assert idx.dtype == np.int32
    # JAX's code is a nearest one (exact ties aside), then the recursion follows it.
    picked = np.take_along_axis(dist, idx[..., None], -1)[..., 0]
    assert np.all(picked <= dist.min(-1) + 1e-5)
    h = np_bicubic(codebook[idx], MS_SHAPE[1])
    conv = p[f"phi_{i}"]["conv"]["Conv_0"]
    h = (1 - MS_RATIO) * h + MS_RATIO * np_conv3x3(h, conv["kernel"], conv["bias"])
    acc = acc + h
    rest = rest - h
    np.testing.assert_allclose(cumulative[i], acc, atol=1e-4)
  np.testing.assert_allclose(f_hat, acc, atol=1e-4)
  out, aux = msq.apply(variables, f)
  np.testing.assert_allclose(out, acc, atol=1e-4)
  for a, b in zip(aux["indices"], indices):
    np.testing.assert_array_equal(a, b)


def test_multiscale_one_scale_without_phi_is_plain_vq():
  msq = q.MultiScaleResidualQuantizer(K, D, scales=(MS_SHAPE[1],), num_phi=0, beta=0.3)
  vq = q.VectorQuantizer(K, D, beta=0.3)
  f = _normal(13, MS_SHAPE)
  ms_vars = _init(msq, f)
  vq_vars = _init(vq, f)
  vq_vars["params"]["codebook"] = ms_vars["params"]["codebook"]
  out_ms, aux_ms = msq.apply(ms_vars, f)
  out_vq, aux_vq = vq.apply(vq_vars, f)
  np.testing.assert_array_equal(aux_ms["indices"][0], aux_vq["indices"])
  np.testing.assert_allclose(out_ms, out_vq, atol=1e-6)
  for name in ("codebook_loss", "commitment_loss", "loss", "perplexity", "usage"):
    np.testing.assert_allclose(aux_ms[name], aux_vq[name], rtol=1e-5, err_msg=name)


def test_teacher_forcing_inputs_and_autoregressive_steps(ms):
  msq, _, variables, indices = ms
  n, size, _, c = MS_SHAPE
  cumulative = msq.apply(variables, indices, method="indices_to_cumulative")
  inputs = msq.apply(variables, indices, method="teacher_forcing_inputs")
  assert len(inputs) == len(MS_SCALES) - 1
  chex.assert_shape(inputs, [(n, s, s, c) for s in MS_SCALES[1:]])
  for k, x in enumerate(inputs):
    np.testing.assert_allclose(x, np_area(np.asarray(cumulative[k], np.float64),
                                          MS_SCALES[k + 1]), atol=1e-5)
  # Sampling one scale at a time rebuilds the same inputs and reconstruction.
  f_hat = jnp.zeros(MS_SHAPE)
  for k, idx in enumerate(indices):
    f_hat, nxt = msq.apply(variables, k, f_hat, idx, method="next_autoregressive_input")
    np.testing.assert_allclose(f_hat, cumulative[k], atol=1e-5)
    np.testing.assert_allclose(nxt, inputs[k] if k < len(inputs) else f_hat, atol=1e-5)


def test_multiscale_gradients_and_metrics(ms):
  msq, f, variables, _ = ms
  w = _normal(16, MS_SHAPE)
  grad_f = jax.grad(lambda f: jnp.sum(w * msq.apply(variables, f)[0]))(f)
  chex.assert_trees_all_close(grad_f, w)  # straight-through
  grads = jax.grad(lambda p: msq.apply(variables | {"params": p}, f)[1]["loss"])(
      variables["params"])
  chex.assert_tree_all_finite(grads)
  for g in [grads["codebook"]] + [grads[f"phi_{i}"]["conv"]["Conv_0"]["kernel"]
                                  for i in range(4)]:
    assert float(jnp.abs(g).max()) > 0
  (_, aux), stats = msq.apply(variables, f, train=True, mutable=["vq_stats"])
  counts = sum(np.bincount(np.asarray(i).reshape(-1), minlength=K) for i in aux["indices"])
  np.testing.assert_allclose(stats["vq_stats"]["usage"], 0.01 * counts * K / counts.sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(aux["usage"], np.mean(counts > 0), rtol=1e-6)
  with pytest.raises(ValueError, match="N, H, W, C"):
    msq.apply(variables, jnp.zeros((2, 6, 6, D)))
  # All num_phi convs get parameters even when a short schedule uses only some.
  short = q.MultiScaleResidualQuantizer(K, D, scales=(1, 2, 4), num_phi=4)
  shapes = jax.eval_shape(short.init, KEY, jnp.zeros((1, 4, 4, D)))
  assert sorted(n for n in shapes["params"] if n.startswith("phi")) == [
      f"phi_{i}" for i in range(4)]
  assert len({q.phi_index(i, 3, 4) for i in range(3)}) == 3


def test_resize_matrices():
  for n_in, n_out in ((8, 3), (16, 13), (5, 5)):
    np.testing.assert_allclose(q.resize_matrix(n_in, n_out, "area").sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(q.resize_matrix(7, 7, "bicubic"), np.eye(7))
  x = np.random.default_rng(0).normal(size=(1, 3, 3, 2))
  np.testing.assert_allclose(q.resize_2d(jnp.asarray(x, jnp.float32), (7, 7), "bicubic"),
                             np_bicubic(x, 7), atol=1e-5)


def test_multiscale_dead_code_restart_moves_only_dead_codes_to_batch_features():
  k, c = 16, 4
  msq = q.MultiScaleResidualQuantizer(codebook_size=k, code_dim=c, scales=(1, 2, 4),
                                      num_phi=0, restart_dead=True)
  f = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, c)).astype(np.float32))
  variables = msq.init(jax.random.key(0), f)
  (_, aux), stats = msq.apply(variables, f, train=True, mutable=["vq_stats"],
                              rngs={"vq_restart": jax.random.key(3)})
  before = np.asarray(nn.unbox(variables["params"])["codebook"])
  after = before + np.asarray(nn.unbox(stats)["vq_stats"]["codebook_offset"])
  used = np.zeros(k, bool)
  for idx in aux["indices"]:
    used[np.unique(np.asarray(idx))] = True
  # Used codes are untouched; each dead one is now a feature vector of the batch.
  np.testing.assert_array_equal(after[used], before[used])
  feats = np.asarray(f).reshape(-1, c)
  dist = np.abs(after[~used][:, None, :] - feats[None]).max(-1).min(axis=1)
  assert (~used).any() and np.all(dist < 1e-6)
  # Without train (or without a mutable collection) nothing moves.
  _, none = msq.apply(variables, f, train=False, mutable=["vq_stats"])
  np.testing.assert_array_equal(nn.unbox(none)["vq_stats"]["codebook_offset"], 0.0)
