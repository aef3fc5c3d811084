"""VAR (next-scale prediction): the block-causal mask, KV-cache decoding == full
recomputation, VAR's guidance rule, the paper's parameter counts, sharding, and the
checks that refuse a tokenizer whose scales, vocabulary or code width differ."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import check_sharded_step_equals_one_device, tiny_token_config, users_emitters
from jaxgen.config import ConfigError
from jaxgen.models import var as var_model
from jaxgen.samplers import var as var_sampler
from jaxgen.train import loop

SCALES = (1, 2, 3, 4)
L = sum(s * s for s in SCALES)   # 30
V, CD = 16, 4


def _sharpen(params, seed=0):
  """Random O(1) weights instead of VAR's near-identity init (gates of 1e-5), so that
  attention mixes the scales and every block matters."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      jax.random.normal(k, x.shape) / np.sqrt(x.shape[0]) if x.ndim == 2 else x
      for k, x in zip(keys, leaves)])


def _model(**kw):
  return var_model.VARTransformer(scales=SCALES, codebook_size=V, code_dim=CD,
                                  num_classes=10, hidden_size=32, depth=2, num_heads=2, **kw)


@pytest.fixture(scope="module")
def model_and_params():
  m = _model()
  inputs = jax.random.normal(jax.random.PRNGKey(0), (3, L - 1, CD))
  labels = jnp.array([1, 7, 10], jnp.int32)  # 10 = the null class
  params = _sharpen(jax.jit(m.init)(jax.random.PRNGKey(1), inputs, labels)["params"])
  return m, params, inputs, labels


def test_block_mask_matches_a_numpy_reference():
  got = np.asarray(var_model.block_causal_mask(SCALES))[0, 0]
  lvl = [k for k, s in enumerate(SCALES) for _ in range(s * s)]
  ref = np.array([[lvl[j] <= lvl[i] for j in range(L)] for i in range(L)])
  np.testing.assert_array_equal(got, ref)


def test_changing_a_finer_scale_never_changes_coarser_logits(model_and_params):
  m, params, inputs, labels = model_and_params
  fwd = jax.jit(lambda x: m.apply({"params": params}, x, labels))
  base = np.asarray(fwd(inputs))
  chex.assert_shape(base, (3, L, V))
  offsets = var_model.scale_offsets(SCALES)
  for k in range(1, len(SCALES)):  # perturb the inputs of scale k (positions of block k)
    lo, hi = offsets[k] - 1, offsets[k + 1] - 1   # inputs exclude the start token
    changed = np.asarray(fwd(inputs.at[:, lo:hi].add(1.0)))
    np.testing.assert_array_equal(changed[:, :offsets[k]], base[:, :offsets[k]])
    # ... while its own and every finer scale's logits do change (attention mixes them).
    for j in range(k, len(SCALES)):
      assert np.abs(changed[:, offsets[j]:offsets[j + 1]]
                    - base[:, offsets[j]:offsets[j + 1]]).max() > 1e-3, (k, j)


def test_kv_cache_decoding_equals_full_recomputation(model_and_params):
  m, params, inputs, labels = model_and_params
  full = np.asarray(m.apply({"params": params}, inputs, labels))
  cache = m.init_cache(3)
  offsets = var_model.scale_offsets(SCALES)
  decode = jax.jit(lambda x, c, k: m.apply({"params": params}, x, labels, c, k,
                                           method="decode"), static_argnums=2)
  for k in range(len(SCALES)):
    x = (jnp.zeros((3, 1, CD)) if k == 0 else inputs[:, offsets[k] - 1:offsets[k + 1] - 1])
    logits, cache = decode(x, cache, k)
    np.testing.assert_allclose(logits, full[:, offsets[k]:offsets[k + 1]], rtol=1e-4,
                               atol=1e-4)
  assert int(cache[0]["index"]) == L


def test_a_pyramid_longer_than_the_kv_cache_is_a_trace_time_error(model_and_params):
  m, params, _, labels = model_and_params
  decode = lambda x, y, c, k: m.apply({"params": params}, x, y, c, k, method="decode")
  nxt = lambda k, f, idx: (f, jnp.zeros((3, SCALES[min(k + 1, 3)] ** 2, CD)))
  with pytest.raises(ValueError, match=r"need a KV cache of 30 positions; this one has 20"):
    var_sampler.decode_cached(decode, m.init_cache(3, max_len=20), nxt, labels,
                              jax.random.PRNGKey(0), scales=SCALES, feature_shape=(4, 4, CD),
                              null=10)
  with pytest.raises(ValueError, match=r"longer than VAR's 30"):
    m.init_cache(3, max_len=31)
  # Writing a scale past the end of a short cache fails at trace time too.
  with pytest.raises(ValueError, match=r"overflows the KV cache"):
    m.apply({"params": params}, jnp.zeros((3, 16, CD)), labels, m.init_cache(3, max_len=20),
            3, method="decode")


def test_guidance_grows_linearly_as_in_var():
  """VAR: t = cfg * k / (S - 1), logits = (1 + t) cond - t uncond; ours with
  cfg_scale = 1 + cfg is the same combination."""
  rng = np.random.default_rng(0)
  cond, uncond = rng.normal(size=(2, 5, 7))
  for cfg in (0.5, 1.5, 4.0):
    for k in range(10):
      t = cfg * k / 9
      ref = (1 + t) * cond - t * uncond
      w = var_sampler.guidance_scale(k, 10, 1.0 + cfg, "linear")
      np.testing.assert_allclose(uncond + w * (cond - uncond), ref, rtol=1e-12)
  assert var_sampler.guidance_scale(3, 10, 2.0, "constant") == 2.0
  with pytest.raises(ValueError, match="constant, linear"):
    var_sampler.guidance_scale(0, 10, 2.0, "cosine")


@pytest.mark.parametrize("name,paper", [("d16", 3.1e8), ("d20", 6.0e8), ("d24", 1.0e9),
                                        ("d30", 2.0e9)])
def test_named_depths_match_the_papers_parameter_counts(name, paper):
  """VAR Table 1: 310M / 600M / 1.0B / 2.0B for ImageNet 256 (10 scales 1..16, 4096 codes
  of 32 channels). The closed form is the official model's layout: per block adaLN
  (D x 6C + 6C), qkv (3C^2) + q/v biases (2C) + per-head scale (H), proj (C^2 + C), MLP
  (8C^2 + 5C); plus word embedding, class table (1001 rows), start and absolute
  positions, level embedding, the head's adaLN (2C^2 + 2C) and head (C V + V)."""
  depth, c, h, _ = var_model.SIZES[name]
  scales = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  m = var_model.VARTransformer(scales=scales, codebook_size=4096, code_dim=32,
                               num_classes=1000, hidden_size=c, depth=depth, num_heads=h)
  n = 680
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, n - 1, 32)),
                          jnp.zeros((1,), jnp.int32))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  closed = (depth * (18 * c * c + 14 * c + h) + 32 * c + c + 1001 * c + c + n * c + 10 * c
            + 2 * c * c + 2 * c + 4096 * c + 4096)
  assert count == closed
  assert float(f"{count:.2g}") == paper, count


# -- the paradigm on a tiny trained multi-scale tokenizer ----------------------------------
@pytest.fixture(scope="module")
def built(msvq_run):
  _, codes = msvq_run
  exp = loop.build(tiny_token_config("var", codes), jax.devices()[:1])
  state = exp.init_state()
  return exp, _sharpen(state.params)


SETTINGS = {
    "plain": dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0),
    "filters_cfg": dict(temperature=0.8, top_k=8, top_p=0.9, cfg_scale=2.5),
    "greedy_cfg_constant": dict(temperature=0.0, cfg_scale=1.5, cfg_schedule="constant"),
}


# The default tier checks the hardest setting (guidance, top-k, top-p, temperature and
# the prefix baseline); the others go to the slow tier (each compiles three samplers).
@pytest.mark.parametrize("setting", [
    pytest.param(s, marks=() if s == "filters_cfg" else pytest.mark.slow) for s in SETTINGS])
def test_cached_sampling_equals_uncached_recomputation(built, setting):
  # cached == full padded recomputation (== prefix-only recomputation)
  exp, params = built
  p = exp.paradigm
  labels = jnp.array([0, 3, 9, 10, 5, 1], jnp.int32)  # 10 = unconditional
  kw = SETTINGS[setting]
  opts = users_emitters()  # bit for bit as users compile it (see helpers)
  cached = jax.jit(lambda r: p.sample_tokens(params, r, labels, **kw), compiler_options=opts)
  uncached = jax.jit(lambda r: p.sample_tokens_uncached(params, r, labels, **kw),
                     compiler_options=opts)
  a = np.asarray(cached(jax.random.PRNGKey(4)))
  b = np.asarray(uncached(jax.random.PRNGKey(4)))
  chex.assert_shape(a, (6, 1 + 4 + 9 + 16 + 36 + 64))
  assert a.min() >= 0 and a.max() < 32
  np.testing.assert_array_equal(a, b)
  if setting == "filters_cfg":  # the benchmark's baseline: the decoded prefix only
    prefix = jax.jit(lambda r: p.sample_tokens_prefix(params, r, labels, **kw),
                     compiler_options=opts)
    np.testing.assert_array_equal(a, np.asarray(prefix(jax.random.PRNGKey(4))))
  if kw["temperature"] > 0:  # the rng matters
    assert not np.array_equal(a, np.asarray(cached(jax.random.PRNGKey(5))))


def test_loss_is_cross_entropy_over_the_pyramid_and_samples_decode(built):
  exp, params = built
  p = exp.paradigm
  codes = jnp.asarray(np.random.default_rng(0).integers(0, 32, (4, 130)), jnp.int32)
  batch = {"codes": codes, "label": jnp.arange(4, dtype=jnp.int32)}
  loss, metrics = jax.jit(lambda b: p.loss(params, b, jax.random.PRNGKey(0), train=False))(
      batch)
  # Teacher forcing: the tokenizer's cumulative maps after each scale, resized to the next.
  tok = p.tokenizer
  maps = tok.teacher_forcing_fn(tok.variables, p.split_scales(codes))
  chex.assert_shape(maps, [(4, s, s, 8) for s in (2, 3, 4, 6, 8)])
  f_hats = jax.jit(lambda c: tok.ae.apply(
      tok.variables, c, method=lambda ae, c: ae.quantizer.indices_to_cumulative(c)))(
          p.split_scales(codes)[:5])
  np.testing.assert_allclose(maps[2], f_hats[2].reshape(4, 4, 2, 4, 2, 8).mean((2, 4)),
                             rtol=1e-5, atol=1e-6)  # 8x8 -> 4x4 area resize = 2x2 means
  inputs = jnp.concatenate([m.reshape(4, -1, 8) for m in maps], axis=1)
  logits = np.asarray(jax.jit(p.logits)(params, inputs, batch["label"]), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = -np.take_along_axis(logp, np.asarray(codes)[..., None], -1).mean()
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], (logits.argmax(-1) == codes).mean())
  # Samples: the image is the decoder of the final f_hat, i.e. of the sampled codes.
  labels = jnp.arange(4, dtype=jnp.int32)
  pyramid, f_hat = jax.jit(lambda r: p.sample_pyramid(params, r, labels))(jax.random.PRNGKey(2))
  images = tok.decode_features_fn(tok.variables, f_hat)
  chex.assert_shape(images, (4, 32, 32, 1))
  tokens = jnp.concatenate([c.reshape(4, -1) for c in pyramid], axis=1)
  np.testing.assert_allclose(images, p.decode_images(tokens), atol=1e-5)


def test_training_reduces_the_loss_on_a_fixed_batch(msvq_run):
  from jaxgen.sharding import mesh as mesh_lib
  _, codes = msvq_run
  c = tiny_token_config("var", codes)
  c.optim.lr = 3e-3
  c.paradigm.label_dropout = 0.0
  exp = loop.build(c, jax.devices()[:1])
  state = exp.init_state()
  step_fn, _ = loop.make_train_step(exp)
  batch = mesh_lib.global_batch(next(loop.make_data_iterator(exp)), exp.mesh)
  losses = []
  for _ in range(15):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:5]) - 0.1, losses


@pytest.mark.slow  # the default tier's budget: the token step on 8 devices: test_maskgit.py (default)
def test_sharded_step_on_8_devices_equals_one_device(msvq_run):
  _, codes = msvq_run
  check_sharded_step_equals_one_device(lambda: tiny_token_config("var", codes))


def test_mismatched_tokenizer_or_codes_are_refused(msvq_run, vq_run):
  from jaxgen import config as config_lib
  wd, codes = msvq_run
  config_lib.validate(tiny_token_config("var", codes))  # the matching one
  bad = tiny_token_config("var", codes, grid=(1, 2, 4, 8))
  with pytest.raises(ConfigError, match=r"\(\(1, 1\), \(2, 2\), \(3, 3\), \(4, 4\), \(6, 6\), "
                     r"\(8, 8\)\) grid of 32 codes.*scales=\(1, 2, 4, 8\)"):
    config_lib.validate(bad)
  bad = tiny_token_config("var", codes)
  bad.model.codebook_size = 64
  with pytest.raises(ConfigError, match=r"32 codes.*codebook_size=64"):
    config_lib.validate(bad)
  bad = tiny_token_config("var", codes)
  bad.model.code_dim = 16
  with pytest.raises(ConfigError, match=rf"{wd} has 8-channel codes.*code_dim=16"):
    loop.build(bad, jax.devices()[:1])
  with pytest.raises(ConfigError, match=r"holds 'vq' codes; the 'var' paradigm needs a "
                     "multi-scale"):
    config_lib.validate(tiny_token_config("var", vq_run[1]))
  with pytest.raises(ConfigError, match=r"holds 'msvq' codes; the 'autoregressive' "
                     "paradigm needs a "
                     "single-scale"):
    config_lib.validate(tiny_token_config("autoregressive", codes))
  c = tiny_token_config("var", codes)
  c.sample.steps = 6
  with pytest.raises(ConfigError, match="the 'var' paradigm has no sampling option "
                     "'steps'"):
    config_lib.validate(c)
