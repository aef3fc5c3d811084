"""Raster-order autoregressive generation: the causal mask (a later token never changes
an earlier logit), KV-cache decoding == full recomputation (teacher-forced logits, and
sampled codes for every sampling option), chunked cache writes, top-k / top-p against
NumPy, the loss is next-token cross-entropy, a sharded step on 8 fake devices == 1
device, mismatched tokenizers/codes are refused, and a sequence longer than the KV
cache is an error at trace time."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import check_sharded_step_equals_one_device, tiny_token_config
from jaxgen.config import ConfigError
from jaxgen.models.ar_transformer import ARTransformer
from jaxgen.nn import layers
from jaxgen.samplers import autoregressive as ar_decoding
from jaxgen.samplers import filters
from jaxgen.samplers import loop as sampler_loop
from jaxgen.train import loop

V, N = 32, 16  # vocabulary and sequence of the bare-model tests


def _model(num_class_tokens=1, tie_output=False):
  return ARTransformer(num_tokens=N, codebook_size=V, num_classes=10, hidden_size=32,
                       depth=2, num_heads=2, mlp_dim=64, num_class_tokens=num_class_tokens,
                       dropout=0.0, tie_output=tie_output)


@pytest.fixture(scope="module", params=[(1, False), (3, True)],
                ids=["prefix1", "prefix3_tied"])
def model_and_params(request):
  m = _model(*request.param)
  codes = jax.random.randint(jax.random.PRNGKey(0), (3, N), 0, V)
  labels = jnp.array([1, 7, 10], jnp.int32)  # 10 = the null class
  params = jax.jit(m.init)(jax.random.PRNGKey(1), codes, labels)["params"]
  return m, params, codes, labels


_FORWARD = {}


def _forward(m, params, labels):
  """The model's full forward as one jitted program, shared by the tests of a fixture
  (eager calls would dispatch and compile op by op)."""
  key = (id(m), id(params))
  if key not in _FORWARD:
    _FORWARD[key] = jax.jit(lambda c, y: m.apply({"params": params}, c, y))
  return lambda c: _FORWARD[key](c, labels)


def test_changing_a_later_token_never_changes_earlier_logits(model_and_params):
  m, params, codes, labels = model_and_params
  fwd = _forward(m, params, labels)
  base = np.asarray(fwd(codes))
  chex.assert_shape(base, (3, N, V))
  for j in (0, 5, N - 2, N - 1):
    changed = codes.at[:, j].set((codes[:, j] + 1 + jnp.arange(3)) % V)
    out = np.asarray(fwd(changed))
    # Logits i predict code i from codes < i: entries 0..j must not move at all.
    np.testing.assert_array_equal(out[:, :j + 1], base[:, :j + 1])
    if j < N - 1:
      assert np.abs(out[:, j + 1:] - base[:, j + 1:]).max() > 1e-4


def test_kv_cache_decoding_equals_full_recomputation(model_and_params):
  m, params, codes, labels = model_and_params
  full = _forward(m, params, labels)(codes)
  k = m.num_class_tokens

  @jax.jit
  def cached(codes):
    cache = m.init_cache(3)
    if k > 1:
      _, cache = m.apply({"params": params}, jnp.zeros((3, k - 1), jnp.int32), labels,
                         cache, method="decode")

    def body(cache, i):
      prev = jnp.take(codes, jnp.maximum(i - 1, 0), axis=1)
      logits, cache = m.apply({"params": params}, prev, labels, cache, method="decode_step")
      return cache, logits

    cache, logits = jax.lax.scan(body, cache, jnp.arange(N))
    return jnp.swapaxes(logits, 0, 1), cache

  logits, cache = cached(codes)
  np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-5)
  assert all(int(c["index"]) == m.seq_len for c in cache)


def test_cache_written_in_chunks_equals_full_recomputation(model_and_params):
  """Several positions per call (as VAR writes a scale at a time)."""
  m, params, codes, labels = model_and_params
  k = m.num_class_tokens
  full = np.asarray(_forward(m, params, labels)(codes))
  inputs = jnp.concatenate([jnp.zeros((3, k), jnp.int32), codes[:, :-1]], axis=1)

  @jax.jit
  def chunked(inputs):
    cache, outs, at = m.init_cache(3), [], 0
    for size in (2, 5, 1, m.seq_len - 8):
      logits, cache = m.apply({"params": params}, inputs[:, at:at + size], labels, cache,
                              method="decode")
      outs.append(logits)
      at += size
    return jnp.concatenate(outs, axis=1)

  np.testing.assert_allclose(chunked(inputs)[:, k - 1:], full, rtol=1e-5, atol=1e-5)


def test_a_sequence_longer_than_the_kv_cache_is_a_trace_time_error():
  m = _model()
  codes = jnp.zeros((2, N), jnp.int32)
  labels = jnp.zeros((2,), jnp.int32)
  params = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), codes, labels))["params"]
  # Model level: more new positions than the cache holds, traced under jit.
  small = m.init_cache(2, max_len=4)
  with pytest.raises(ValueError, match="5 new positions do not fit a KV cache of 4"):
    jax.eval_shape(lambda p, c: m.apply({"params": p}, jnp.zeros((2, 5), jnp.int32),
                                        labels, c, method="decode"), params, small)
  with pytest.raises(ValueError, match="longer than the model's"):
    m.init_cache(2, max_len=m.seq_len + 1)
  # A concrete index past the room left.
  with pytest.raises(ValueError, match="at index 3 overflows the KV cache of 4"):
    layers.check_cache_room(jnp.int32(3), 2, 4)
  # Sampler level: N one-token steps after the prefix need seq_len positions.
  decode_fn = lambda t, y, c: m.apply({"params": params}, t, y, c, method="decode_step")
  with pytest.raises(ValueError, match=f"needs a KV cache of {N} positions; this one has "
                     f"{N - 1}"):
    jax.eval_shape(lambda c: ar_decoding.decode_cached(
        decode_fn, c, labels, jax.random.PRNGKey(0), num_tokens=N, start=0, null=10),
        m.init_cache(2, max_len=N - 1))


def test_an_overflowing_write_at_run_time_poisons_the_output():
  attn = layers.Attention(num_heads=2)
  x = jnp.ones((1, 2, 8))
  params = attn.init(jax.random.PRNGKey(0), x)["params"]
  cache = layers.init_kv_cache(1, 4, 2, 4)
  run = jax.jit(lambda c: attn.apply({"params": params}, x, None, c))
  out, _ = run(dict(cache, index=jnp.int32(2)))  # traced index: fits exactly
  assert np.isfinite(np.asarray(out)).all()
  out, _ = run(dict(cache, index=jnp.int32(3)))  # would end at 5 > 4
  assert np.isnan(np.asarray(out)).all()


# -- filters --------------------------------------------------------------------------

def np_top_p(logits, p):
  out = np.empty_like(logits)
  for idx in np.ndindex(logits.shape[:-1]):
    row = logits[idx].astype(np.float64)
    order = np.argsort(-row, kind="stable")
    probs = np.exp(row[order] - row.max())
    probs /= probs.sum()
    before = np.cumsum(probs) - probs
    cutoff = row[order][before < p].min()
    out[idx] = np.where(row >= cutoff, logits[idx], -np.inf)
  return out


def test_top_k_matches_numpy():
  logits = np.random.default_rng(0).normal(size=(3, 5, 11)).astype(np.float32)
  for k in (1, 4, 10):
    kth = np.sort(logits, axis=-1)[..., -k][..., None]
    np.testing.assert_array_equal(filters.top_k_logits(jnp.asarray(logits), k),
                                  np.where(logits >= kth, logits, -np.inf))
  for k in (0, 11, 50):
    np.testing.assert_array_equal(filters.top_k_logits(jnp.asarray(logits), k), logits)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.75, 0.9, 0.999])
def test_top_p_matches_numpy(p):
  logits = (np.random.default_rng(1).normal(size=(4, 6, 50)) * 2).astype(np.float32)
  out = np.asarray(filters.top_p_logits(jnp.asarray(logits), p))
  np.testing.assert_array_equal(out, np_top_p(logits, p))
  kept = np.isfinite(out)
  assert kept.sum(-1).min() >= 1  # the most likely code always survives
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  assert (np.where(kept, probs, 0).sum(-1) >= p - 1e-6).all()  # mass reaches p
  np.testing.assert_array_equal(filters.top_p_logits(jnp.asarray(logits), 1.0), logits)


def test_sampling_draws_only_from_the_filtered_set():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(2000, 20)) * 2, jnp.float32)
  codes = np.asarray(ar_decoding.sample_logits(jax.random.PRNGKey(0), logits, 0.7, 5, 0.6))
  allowed = np.isfinite(np_top_p(np.asarray(filters.top_k_logits(logits / 0.7, 5)), 0.6))
  assert allowed[np.arange(2000), codes].all()
  greedy = ar_decoding.sample_logits(jax.random.PRNGKey(0), logits, 0.0)
  np.testing.assert_array_equal(greedy, np.asarray(logits).argmax(-1))


# -- the paradigm on a tiny tokenizer's codes ------------------------------------------

@pytest.fixture(scope="module")
def built(vq_run):
  _, codes = vq_run
  exp = loop.build(tiny_token_config("autoregressive", codes), jax.devices()[:1])
  state = exp.init_state()
  # Sharper than init so that samples depend on context and temperature matters.
  return exp, jax.tree.map(lambda p: p * 3.0, state.params)


SETTINGS = {
    "plain": dict(temperature=1.0),
    "filters_cfg": dict(temperature=0.8, top_k=8, top_p=0.9, cfg_scale=2.5),
    "greedy_cfg": dict(temperature=0.0, cfg_scale=1.5),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_cached_sampling_equals_uncached_recomputation(built, setting):
  exp, params = built
  p = exp.paradigm
  labels = jnp.array([0, 3, 9, 10, 5, 1], jnp.int32)  # 10 = unconditional
  kw = SETTINGS[setting]
  cached = jax.jit(lambda r: p.sample_tokens(params, r, labels, **kw))
  uncached = jax.jit(lambda r: p.sample_tokens_uncached(params, r, labels, **kw))
  a = np.asarray(cached(jax.random.PRNGKey(4)))
  b = np.asarray(uncached(jax.random.PRNGKey(4)))
  chex.assert_shape(a, (6, 64))
  assert a.min() >= 0 and a.max() < 32
  np.testing.assert_array_equal(a, b)
  if kw["temperature"] > 0:  # the rng matters
    assert not np.array_equal(a, np.asarray(cached(jax.random.PRNGKey(5))))


def _prefix_equals_cached(exp, params):
  p = exp.paradigm
  labels = jnp.array([0, 10], jnp.int32)
  kw = SETTINGS["filters_cfg"]
  a = jax.jit(lambda r: p.sample_tokens(params, r, labels, **kw))(jax.random.PRNGKey(4))
  b = jax.jit(lambda r: p.sample_tokens_prefix(params, r, labels, **kw))(
      jax.random.PRNGKey(4))
  np.testing.assert_array_equal(a, b)


def test_prefix_recomputation_baseline_draws_the_cached_codes():
  """The honest baseline (`sample_tokens_prefix`: each step runs only the prefix and
  the codes so far, no cache, no padding) draws what the KV-cached decoder draws, with
  filters and CFG (a 3x3 grid: the baseline unrolls a program per step)."""
  c = tiny_token_config("autoregressive", "", grid=(3, 3), codebook_size=16)
  c.data.code_shape = (3, 3)
  exp = loop.build(c, jax.devices()[:1], load_data=False)
  _prefix_equals_cached(exp, jax.tree.map(lambda a: a + 0.05, exp.init_state().params))


@pytest.mark.slow
def test_prefix_recomputation_baseline_on_the_8x8_grid(built):
  _prefix_equals_cached(*built)


def test_scan_decoding_equals_python_loop(built):
  exp, params = built
  p = exp.paradigm
  labels = jnp.array([2, 4], jnp.int32)
  cache, start = p.init_cache(params, labels, 2.0)
  decode_fn = lambda t, y, c: p.model.apply({"params": params}, t, y, c,
                                            method="decode_step")
  step = ar_decoding.cached_step(decode_fn, labels, null=p.num_classes, cfg_scale=2.0,
                                 temperature=1.0, top_k=4)
  init = ar_decoding.DecodeState(jnp.zeros((2, 64), jnp.int32), cache, jax.random.PRNGKey(3))
  assert start == 0
  scanned = jax.jit(lambda s: sampler_loop.run_loop(step, s, 64))(init)
  python = sampler_loop.run_loop_python(jax.jit(step), init, 64)
  np.testing.assert_array_equal(scanned.tokens, python.tokens)


def test_loss_is_next_token_cross_entropy_and_images_decode(built):
  exp, params = built
  p = exp.paradigm
  codes = jnp.asarray(np.random.default_rng(0).integers(0, 32, (4, 64)), jnp.int32)
  batch = {"codes": codes.reshape(4, 8, 8), "label": jnp.arange(4, dtype=jnp.int32)}
  loss, metrics = jax.jit(lambda b, r: p.loss(params, b, r, train=False))(
      batch, jax.random.PRNGKey(0))
  logits = np.asarray(jax.jit(p.logits)(params, codes, batch["label"]), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = -np.take_along_axis(logp, np.asarray(codes)[..., None], -1).mean()
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], (logits.argmax(-1) == codes).mean())
  images = jax.jit(lambda r: p.sample(params, r, jnp.arange(4, dtype=jnp.int32)))(
      jax.random.PRNGKey(2))
  chex.assert_shape(images, (4, 32, 32, 1))
  assert float(jnp.abs(images).max()) <= 1.0


@pytest.mark.slow  # the default tier's budget: the token step on 8 devices: test_maskgit.py (default)
def test_sharded_step_on_8_devices_equals_one_device(vq_run):
  _, codes = vq_run
  check_sharded_step_equals_one_device(lambda: tiny_token_config("autoregressive", codes))


def test_mismatched_tokenizer_or_codes_are_refused(vq_run, fake_fmnist_dir, data_dir):
  from jaxgen import config as config_lib
  wd, codes = vq_run
  config_lib.validate(tiny_token_config("autoregressive", codes))  # the matching one
  bad = tiny_token_config("autoregressive", codes)
  bad.model.codebook_size = 64
  with pytest.raises(ConfigError, match=r"32 codes.*codebook_size=64"):
    config_lib.validate(bad)
  bad = tiny_token_config("autoregressive", codes)
  bad.model.grid_size = (16, 16)
  with pytest.raises(ConfigError, match=r"\(8, 8\) grid.*\(16, 16\)"):
    config_lib.validate(bad)
  on_images = tiny_token_config("autoregressive", "")
  on_images.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist", data_dir=data_dir, source_dir=fake_fmnist_dir,
      pp="pad(32)|scale(-1, 1)", train_split="train", eval_split="test"))
  on_images.tokenizer.workdir = wd
  on_images.model.grid_size = (4, 4)
  with pytest.raises(ConfigError, match=rf"tokenizer {wd}.*\(8, 8\) grid.*\(4, 4\)"):
    loop.build(on_images, jax.devices()[:1])


def test_sampling_fields_are_checked(vq_run):
  from jaxgen import config as config_lib
  _, codes = vq_run
  for field, value, msg in (("top_p", 0.0, "top_p"), ("top_k", -1, "top_k"),
                            ("temperature", -1.0, "temperature")):
    c = tiny_token_config("autoregressive", codes)
    c.sample[field] = value
    with pytest.raises(ConfigError, match=msg):
      config_lib.validate(c)
  c = tiny_token_config("autoregressive", codes)
  c.sample.steps = 8
  with pytest.raises(ConfigError, match="config.sample.steps: the 'autoregressive' "
                     "paradigm has no sampling option 'steps'; its options are "):
    config_lib.validate(c)
