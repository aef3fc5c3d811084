"""Video tokenizer networks: the causal 3D conv encoder/decoder (exact causality, shapes
and dtypes for several frame counts, frame-count errors), 2D -> 3D inflation (a
one-frame video and a still video through the 3D nets equal the image path), and
lookup-free quantization (indices, codes, both entropy forms, usage, straight-through
gradient) against NumPy references.

Cost: tiny sizes (8 channels, 8x8 frames); each network is jitted once per input shape
and shared across tests; shapes at named sizes are checked abstractly (jax.eval_shape).
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.tokenizers import inflation, nets
from jaxgen.tokenizers import quantizers as q

# f = 2 in space, ft = 2 in time; per-frame attention in the mid block.
TINY = dict(arch="causal3d", channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attn_resolutions=(), mid_attn=True, temporal_downsample=(True,),
            z_channels=4)
T, H, Z = 5, 8, 4  # frames, frame size, latent channels
LATENT_T = 3


def _abstract(module, x):
  return jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), x)))


def _np_params(module, x, seed=0):
  """Random parameters from the abstract init, filled in NumPy (no init to compile);
  norm scales random too, so nothing is trivially per-frame."""
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 4
    return rng.normal(0.0, fan_in ** -0.5, leaf.shape).astype(leaf.dtype)

  return jax.tree.map(fill, _abstract(module, x))


def _video(seed, shape):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _nets(temporal_padding="replicate"):
  return nets.build_nets(TINY, 1, temporal_padding=temporal_padding)


@functools.lru_cache(maxsize=None)
def _jitted(module):
  return jax.jit(module.apply)


# ------------------------------------------------------------------ shapes and errors


def test_shapes_and_dtypes_for_several_frame_counts():
  enc, dec = _nets()
  p_enc = _abstract(enc, jnp.zeros((1, 1, H, H, 1)))
  p_dec = _abstract(dec, jnp.zeros((1, 1, H // 2, H // 2, Z)))
  bf16_enc, bf16_dec = nets.build_nets(TINY, 1, dtype=jnp.bfloat16)
  for frames, latent_frames, dtype in ((1, 1, jnp.float32), (3, 2, jnp.bfloat16),
                                       (9, 5, jnp.float32)):
    e, d = (enc, dec) if dtype == jnp.float32 else (bf16_enc, bf16_dec)
    x = jnp.zeros((2, frames, H, H, 1), dtype)
    z = jax.eval_shape(e.apply, p_enc, x)
    chex.assert_shape(z, (2, latent_frames, H // 2, H // 2, Z))
    assert nets.check_num_frames(frames, 2) == latent_frames
    y = jax.eval_shape(d.apply, p_dec, jnp.zeros(z.shape, dtype))
    chex.assert_shape(y, x.shape)
    assert z.dtype == y.dtype == jnp.float32


@pytest.mark.parametrize("name,frames,size,channels", [
    ("mfmnist_causal_tiny", 9, 32, 1), ("magvit2_causal", 17, 128, 3)])
def test_named_sizes_abstract(name, frames, size, channels):
  kw = nets.autoencoder_variant(name)
  enc, dec = nets.build_nets(name, channels)
  f, ft = nets.downsampling_factor(name), nets.temporal_downsampling_factor(name)
  assert enc.temporal_factor == dec.temporal_factor == ft
  x = jnp.zeros((1, frames, size, size, channels))
  z_shape = (1, 1 + (frames - 1) // ft, size // f, size // f)
  p_enc = _abstract(enc, x)
  z = jax.eval_shape(enc.apply, p_enc, x)
  chex.assert_shape(z, z_shape + (kw["z_channels"] * (2 if kw.get("double_z") else 1),))
  z_in = jnp.zeros(z_shape + (kw["z_channels"],))
  p_dec = _abstract(dec, z_in)
  chex.assert_shape(jax.eval_shape(dec.apply, p_dec, z_in), x.shape)
  if name == "magvit2_causal":
    # Encoder + decoder (no quantizer / 1x1 projections), pinned against regressions
    # (not MAGVIT-v2's own count: see nets.VARIANTS).
    assert sum(a.size for a in jax.tree.leaves((p_enc, p_dec))) == 277_848_469


def test_temporal_factors():
  assert [nets.temporal_downsampling_factor(n) for n in (
      "mfmnist_causal_tiny", "mfmnist_causal_tiny_ft1", "magvit2_causal", "kl_f8")] == [
          2, 1, 4, 1]
  assert [nets.check_num_frames(t, 1) for t in (1, 8)] == [1, 8]
  enc, _ = nets.build_nets("mfmnist_causal_kl_tiny", 1)  # a causal KL-VAE: moments out
  assert enc.double_z and enc.temporal_factor == 2


def test_invalid_frame_counts_and_inputs_raise():
  enc, dec = _nets()
  p = _abstract(enc, jnp.zeros((1, 1, H, H, 1)))
  for frames in (2, 4, 8):
    with pytest.raises(ValueError, match=r"1 \+ 2 k \(1, 3, 5, 7"):
      jax.eval_shape(enc.apply, p, jnp.zeros((1, frames, H, H, 1)))
  with pytest.raises(ValueError, match="videos"):
    jax.eval_shape(enc.apply, p, jnp.zeros((1, H, H, 1)))
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(enc.apply, p, jnp.zeros((1, 1, 7, 7, 1)))
  with pytest.raises(ValueError, match="one entry per downsampling"):
    _abstract(nets.build_nets(TINY, 1, temporal_downsample=(True, True))[0],
              jnp.zeros((1, 1, H, H, 1)))
  with pytest.raises(ValueError, match="temporal_padding"):
    _abstract(nets.build_nets(TINY, 1, temporal_padding="reflect")[1],
              jnp.zeros((1, 1, 4, 4, Z)))
  with pytest.raises(ValueError, match="temporal_downsample"):
    nets.build_nets("fmnist_tiny", 1, temporal_downsample=(True, True))


# ------------------------------------------------------------------ causality


def test_encoder_is_causal_and_keeps_still_videos_still():
  enc, _ = _nets("replicate")
  x = _video(0, (1, T, H, H, 1))
  params = _np_params(enc, x)
  apply = _jitted(enc)
  z = np.asarray(apply(params, x))
  x_changed = x.copy()
  x_changed[:, 3:] = _video(1, x_changed[:, 3:].shape)  # frames > 2 only
  z_changed = np.asarray(apply(params, x_changed))
  # latent frame j reads frames <= 2 j: j = 0, 1 are bit-for-bit the same
  np.testing.assert_array_equal(z_changed[:, :2], z[:, :2])
  assert np.abs(z_changed[:, 2] - z[:, 2]).max() > 1e-3
  # Replicate padding: a still video gives still latents, whatever the weights.
  z_still = np.asarray(apply(params, np.repeat(x[:, :1], T, axis=1)))
  np.testing.assert_allclose(z_still, np.repeat(z[:, :1], LATENT_T, axis=1), atol=1e-5)


def test_decoder_is_causal():
  _, dec = _nets()
  z = _video(2, (1, LATENT_T, H // 2, H // 2, Z))
  params = _np_params(dec, z, seed=1)
  apply = _jitted(dec)
  y = np.asarray(apply(params, z))
  z_changed = z.copy()
  z_changed[:, 2:] += 1.0  # latent frames > 1 only
  y_changed = np.asarray(apply(params, z_changed))
  # output frame t reads latent frames <= ceil(t / 2): frames 0..2 unchanged
  np.testing.assert_array_equal(y_changed[:, :3], y[:, :3])
  assert np.abs(y_changed[:, 3:] - y[:, 3:]).max() > 1e-3


@pytest.mark.parametrize("mode", nets.TEMPORAL_PADDINGS)
def test_causal_conv_pads_time_before_only(mode):
  conv = nets.ConvND(2, 3, strides=(2, 2, 2), padding=(0, 1), causal=mode)
  x = _video(9, (1, 5, 4, 4, 1))
  p = _np_params(conv, x)
  y = conv.apply(p, x)
  chex.assert_shape(y, (1, 3, 2, 2, 2))
  first = x[:, :1] if mode == "replicate" else np.zeros_like(x[:, :1])
  padded = np.concatenate([first, first, x], axis=1)
  ref = nn.Conv(2, (3, 3, 3), strides=2, padding=((0, 0), (0, 1), (0, 1))).apply(
      {"params": p["params"]["Conv_0"]}, padded)
  np.testing.assert_allclose(y, ref, atol=1e-6)


# ------------------------------------------------------------------ 2D -> 3D inflation


@functools.lru_cache(maxsize=None)
def _image_nets():
  return nets.build_nets(inflation.image_fields(TINY), 1)


def test_inflated_encoder_equals_the_image_path():
  enc3, enc2 = _nets()[0], _image_nets()[0]
  img = _video(3, (2, H, H, 1))
  p_enc2 = _np_params(enc2, img, seed=2)
  z_img = np.asarray(jax.jit(enc2.apply)(p_enc2, img))
  p_enc3 = inflation.inflate_params(p_enc2, _abstract(enc3, img[:, None]))
  # A one-frame video is the image.
  np.testing.assert_allclose(_jitted(enc3)(p_enc3, img[:, None])[:, 0], z_img, atol=1e-5)
  # A still video: every latent frame is the image's latent.
  still = np.repeat(img[:1, None], T, axis=1)
  np.testing.assert_allclose(_jitted(enc3)(p_enc3, still),
                             np.repeat(z_img[:1, None], LATENT_T, axis=1), atol=1e-5)


def test_inflated_decoder_equals_the_image_path():
  dec3, dec2 = _nets()[1], _image_nets()[1]
  z_img = _video(4, (2, H // 2, H // 2, Z))
  p_dec2 = _np_params(dec2, z_img, seed=3)
  y_img = np.asarray(jax.jit(dec2.apply)(p_dec2, z_img))
  p_dec3 = inflation.inflate_params(p_dec2, _abstract(dec3, z_img[:, None]))
  kernel = p_dec3["params"]["up_1_upsample"]["conv"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 3, 16, 32) and not np.any(kernel[:2])  # depth-to-time
  np.testing.assert_allclose(_jitted(dec3)(p_dec3, z_img[:, None])[:, 0], y_img, atol=1e-5)
  # Still latents: every decoded frame (both of each depth-to-time pair) is the image.
  z_still = np.repeat(z_img[:1, None], LATENT_T, axis=1)
  np.testing.assert_allclose(_jitted(dec3)(p_dec3, z_still),
                             np.repeat(y_img[:1, None], T, axis=1), atol=1e-5)


def test_inflation_errors():
  assert inflation.image_fields("mfmnist_causal_tiny")["arch"] == "conv"
  with pytest.raises(ValueError, match="causal3d"):
    inflation.image_fields("fmnist_tiny")
  with pytest.raises(ValueError, match="only in 2D"):
    inflation.inflate_params({"a": np.zeros(2)}, {"b": np.zeros(2)})
  with pytest.raises(ValueError, match="cannot inflate a/k"):
    inflation.inflate_params({"a": {"k": np.zeros((3, 3, 2, 5))}},
                             {"a": {"k": np.zeros((3, 3, 3, 2, 4))}})


# ------------------------------------------------------------------ lookup-free quantizer

BITS, LFQ_SHAPE = 4, (2, 3, 5, 4)  # 16 codes


def _np_codes(d, scale=1.0):
  k = np.arange(2 ** d)
  return np.where((k[:, None] >> np.arange(d)) & 1, scale, -scale).astype(np.float64)


def _np_entropies(z_nd, scale, temperature):
  """MAGVIT-v2's entropies over the full 2^d table, in float64."""
  codes = _np_codes(z_nd.shape[-1], scale)
  logits = -((z_nd[:, None, :] - codes[None]) ** 2).sum(-1) / temperature
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(-1, keepdims=True)
  h = lambda p: -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)
  return h(p).mean(), h(p.mean(0))


# One configuration for every module test (one init and one step to compile): a soft
# temperature so the entropies are not ~0, and the entropy weight annealed 0.3 -> 0.1
# over 2 updates.
LFQ = dict(entropy_temperature=0.5, entropy_anneal_steps=2, entropy_anneal_factor=3.0)


@functools.lru_cache(maxsize=None)
def _lfq():
  lfq = q.LookupFreeQuantizer(2 ** BITS, **LFQ)
  variables = jax.jit(lfq.init)(jax.random.key(0), jnp.zeros(LFQ_SHAPE))  # eager: slow
  step = jax.jit(lambda v, z: lfq.apply(v, z, train=True, mutable=["vq_stats"]))
  return lfq, nn.meta.unbox(variables), step


def test_lfq_codes_indices_and_losses_match_numpy():
  lfq, variables, step = _lfq()
  z = _video(4, LFQ_SHAPE) * 2
  (z_q, aux), stats = step(variables, z)
  bits = z > 0
  idx = (bits * 2 ** np.arange(BITS)).sum(-1)
  np.testing.assert_array_equal(aux["indices"], idx)
  assert aux["indices"].dtype == jnp.int32
  np.testing.assert_array_equal(z_q, np.where(bits, 1.0, -1.0))
  np.testing.assert_array_equal(lfq.apply(variables, aux["indices"], method=lfq.embed), z_q)
  ps, cb = _np_entropies(z.reshape(-1, BITS).astype(np.float64), 1.0, 0.5)
  np.testing.assert_allclose([aux["per_sample_entropy"], aux["codebook_entropy"]],
                             [ps, cb], rtol=1e-5)
  commit = np.mean((z - np.where(bits, 1.0, -1.0)) ** 2)
  np.testing.assert_allclose(aux["commitment_loss"], commit, rtol=1e-6)
  np.testing.assert_allclose(aux["loss"], 0.25 * commit + 0.3 * (ps - cb), rtol=1e-5)
  assert float(aux["codebook_loss"]) == 0.0
  # Usage and perplexity of the hard codes; the usage EMA and step counter update.
  counts = np.bincount(idx.reshape(-1), minlength=16)
  p = counts[counts > 0] / counts.sum()
  np.testing.assert_allclose(aux["usage"], np.mean(counts > 0), rtol=1e-6)
  np.testing.assert_allclose(aux["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)
  new = stats["vq_stats"]
  np.testing.assert_allclose(nn.meta.unbox(new["usage"]),
                             0.01 * counts * 16 / counts.sum(), rtol=1e-5)
  assert int(new["steps"]) == 1
  np.testing.assert_allclose(aux["usage_window"], np.mean(counts > 0))


def test_lfq_factorized_entropy_equals_full_where_exact():
  full, fact = jax.jit(q.lfq_entropies_full), jax.jit(q.lfq_entropies_factorized)
  z = _video(5, (16, BITS)) * 0.3
  one = np.repeat(z[:1], 16, axis=0)  # one sample: its average is still a product
  grid = _np_codes(BITS) * 0.05  # all codes once: independent uniform bits
  for scale, temperature in ((1.0, 0.01), (2.0, 1.0)):
    f, g = full(z, scale, temperature), fact(z, scale, temperature)
    np.testing.assert_allclose(g[0], f[0], rtol=1e-4, atol=1e-6)  # per sample: exact
    assert float(g[1]) >= float(f[1]) - 1e-5  # codebook: an upper bound
    np.testing.assert_allclose(fact(one, scale, temperature), full(one, scale, temperature),
                               rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(f, _np_entropies(z.astype(np.float64), 2.0, 1.0), rtol=1e-5)
  np.testing.assert_allclose([fact(grid, 1.0, 1.0)[1], full(grid, 1.0, 1.0)[1]],
                             [BITS * np.log(2)] * 2, rtol=1e-5)


def test_lfq_straight_through_gradient_and_norm():
  w = jnp.asarray(_video(6, LFQ_SHAPE))
  z = jnp.asarray(_video(7, LFQ_SHAPE))
  lfq, variables, _ = _lfq()
  lfq_n = q.LookupFreeQuantizer(2 ** BITS, norm="rms", scale=0.5)
  rms = lambda z: 0.5 * z / jnp.sqrt(jnp.mean(z * z, -1, keepdims=True) + 1e-6)

  @jax.jit
  def grads(z):
    st = lambda m: jax.grad(lambda z: jnp.sum(w * m.apply(variables, z)[0]))(z)
    entropy = jax.grad(lambda z: lfq.apply(variables, z)[1]["entropy_loss"])(z * 0.01)
    return st(lfq), st(lfq_n), jax.vjp(rms, z)[1](w)[0], entropy, lfq_n.apply(
        variables, z)[0]

  g, g_n, g_rms, g_entropy, z_q = grads(z)
  chex.assert_trees_all_close(g, w)
  # rms norm: values are the codes of the normalised z; the gradient goes through it.
  np.testing.assert_array_equal(z_q, np.where(z > 0, 0.5, -0.5))
  chex.assert_trees_all_close(g_n, g_rms, atol=1e-5)
  # The entropy loss reaches z (the quantized output alone gives no such signal).
  assert float(jnp.abs(g_entropy).max()) > 0


def test_lfq_entropy_weight_annealing():
  np.testing.assert_allclose(
      jax.jit(jax.vmap(lambda s: q.annealed_weight(s, 0.1, 100, 3.0)))(
          jnp.array([0, 50, 100, 500])), [0.3, 0.2, 0.1, 0.1], rtol=1e-6)
  assert float(q.annealed_weight(7, 0.1, 0, 3.0)) == pytest.approx(0.1)
  _, variables, step = _lfq()
  z = jnp.asarray(_video(8, LFQ_SHAPE))
  weights = []
  for _ in range(3):
    (_, aux), stats = step(variables, z)
    variables = variables | nn.meta.unbox(stats)
    weights.append(float(aux["entropy_weight"]))
  np.testing.assert_allclose(weights, [0.3, 0.2, 0.1], rtol=1e-6)
  assert int(variables["vq_stats"]["steps"]) == 3


def test_lfq_errors():
  z = jnp.zeros(LFQ_SHAPE)
  for kw, match in ((dict(codebook_size=1000), "power of two"),
                    (dict(codebook_size=16, code_dim=8), "code_dim"),
                    (dict(codebook_size=16, entropy_form="exact"), "entropy_form"),
                    (dict(codebook_size=16, norm="layer"), "norm"),
                    (dict(codebook_size=32), r"inputs \(..., 5\)")):
    with pytest.raises(ValueError, match=match):
      q.LookupFreeQuantizer(**kw).init(jax.random.key(0), z)


def test_lfq_entropy_gradients_finite_when_probabilities_underflow():
  """MAGVIT-v2's temperature 0.01 with 2^10 codes: most q(c | z) are exactly 0."""
  z = jnp.asarray(_video(9, (32, 10)))
  loss = lambda z: jnp.subtract(*q.lfq_entropies_full(z, 1.0, 0.01))
  grads = jax.jit(jax.grad(loss))(z)
  assert np.isfinite(np.asarray(grads)).all()
