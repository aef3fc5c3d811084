"""Text-to-image for the token paradigms (MaskGIT, MAGE, raster AR, VAR) through the one
conditioning interface: text prefix tokens (MaskGIT / MAGE / AR) or cross-attention
(VAR), padding never attended, CFG against the null text, KV-cached decoding with a text
prefix equal to full recomputation, the captioned-images data path (codes encoded in
the step), and the config checks. Tiny models; a 1-layer random text encoder
("tiny_random") stands in for MiniLM."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import (L, check_sharded_step_equals_one_device, run_steps, text_token_config,
                     users_emitters)

from jaxgen import config as config_lib
from jaxgen.paradigms import maskgit as maskgit_lib

PARADIGMS = ("maskgit", "mage", "autoregressive", "var")
PROMPTS = ["a small dark sandal", "a large light coat"]


@pytest.fixture(scope="module")
def make(vq_run, msvq_run, fake_fmnist_dir, data_dir, caption_dirs):
  def config(paradigm):
    if paradigm == "var":
      return text_token_config("var", msvq_run[0], fake_fmnist_dir, data_dir, *caption_dirs,
                               grid=(1, 2, 3, 4, 6, 8))
    return text_token_config(paradigm, vq_run[0], fake_fmnist_dir, data_dir, *caption_dirs)
  return config


@pytest.fixture(scope="module")
def built(make):
  """One experiment per paradigm (built once), with shifted params so that the
  zero-initialised branches (cross-attention outputs, adaLN gates) are switched on."""
  from jaxgen.train import loop
  cache = {}

  def get(paradigm):
    if paradigm not in cache:
      exp = loop.build(make(paradigm), jax.devices()[:1])
      params = jax.tree.map(lambda a: a + 0.02, exp.init_state().params)
      cache[paradigm] = (exp.paradigm, params)
    return cache[paradigm]
  return get


def _inputs(p, batch: int, seed: int = 0):
  """Random model inputs of the paradigm: code grids, or VAR's teacher-forcing maps."""
  x = p._dummy_inputs(batch)[0]
  key = jax.random.PRNGKey(seed)
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jax.random.randint(key, x.shape, 0, p.codebook_size)
  return jax.random.normal(key, x.shape)


def _logits(p, params, x, cond):
  return _jitted_logits(p)(params, x, cond)


_JITTED = {}


def _jitted_logits(p):
  """The paradigm's logits as one jitted program (not op-by-op): one per paradigm."""
  if p not in _JITTED:
    def logits(params, x, cond):
      out = p.logits(params, x, cond)
      return out[0] if isinstance(out, tuple) else out
    _JITTED[p] = jax.jit(logits)
  return _JITTED[p]


@pytest.mark.parametrize("paradigm", [
    # the default tier's budget: MAGE's and VAR's text paths are also checked by
    # test_masked_decoding_guides_against_the_null_text[mage] and
    # test_cached_text_decoding_equals_full_recomputation[var] (default)
    pytest.param(p, marks=pytest.mark.slow) if p in ("mage", "var") else p
    for p in PARADIGMS])
def test_prompt_changes_logits_and_padding_does_not(built, paradigm):
  p, params = built(paradigm)
  assert p.conditioner.kind == "text" and p.conditioner.text_length == L
  cond = p.conditioner.sampling_input(PROMPTS)
  x = _inputs(p, 2)
  out = _logits(p, params, x, cond)
  other = p.conditioner.sampling_input(PROMPTS[::-1])
  assert float(jnp.abs(out - _logits(p, params, x, other)).max()) > 1e-3
  pad = ~cond["text_mask"][..., None]
  assert bool(pad.any())  # the prompts are shorter than L: some tokens are padding
  junk = jax.random.normal(jax.random.PRNGKey(1), cond["text_tokens"].shape)
  padded = dict(cond, text_tokens=jnp.where(pad, 10 * junk, cond["text_tokens"]))
  np.testing.assert_allclose(out, _logits(p, params, x, padded), atol=1e-4)
  with pytest.raises(ValueError, match="text-conditional"):
    _logits(p, params, x, jnp.zeros((2,), jnp.int32))  # labels where text is expected
  if paradigm == "mage":  # the representation uses the null text
    feats = jax.jit(p.features)(params, x)
    assert feats.shape == (2, p.model.hidden_size) and bool(jnp.isfinite(feats).all())


@pytest.mark.parametrize("paradigm", ["maskgit", "mage"])
def test_masked_decoding_guides_against_the_null_text(built, paradigm):
  p, params = built(paradigm)
  cond = p.conditioner.sampling_input(PROMPTS)
  tokens = _inputs(p, 2)
  model = lambda t, y: _logits(p, params, t, y)
  guided = lambda scale: maskgit_lib.guided_logits(
      model, cond, p.conditioner.null_input(), p.sample_options(cfg_scale=scale,
                                                        cfg_schedule="constant"))
  cond_l, null_l = model(tokens, cond), model(tokens, p.conditioner.sampling_input(["", ""]))
  np.testing.assert_allclose(guided(3.0)(tokens, 0), null_l + 3.0 * (cond_l - null_l),
                             atol=1e-4)
  np.testing.assert_allclose(guided(1.0)(tokens, 0), cond_l, atol=1e-6)
  codes = jax.jit(lambda r: p.sample_tokens(params, r, cond, steps=3))(jax.random.PRNGKey(0))
  assert codes.shape == (2, p.num_tokens) and int(codes.max()) < p.codebook_size


@pytest.mark.parametrize("paradigm", ["autoregressive", "var"])
def test_cached_text_decoding_equals_full_recomputation(built, paradigm):
  """The KV cache holds the text prefix (AR: padding masked in every later step) or the
  cross-attention reads it at every scale (VAR); guidance pairs it with the null text."""
  p, params = built(paradigm)
  cond = p.conditioner.sampling_input(PROMPTS)
  key = jax.random.PRNGKey(2)
  kw = dict(cfg_scale=2.5, top_k=8)  # the class tests cover the unguided settings
  opts = users_emitters()  # bit for bit as users compile it (see helpers)
  cached = jax.jit(lambda r: p.sample_tokens(params, r, cond, **kw), compiler_options=opts)(key)
  full = jax.jit(lambda r: p.sample_tokens_uncached(params, r, cond, **kw),
                 compiler_options=opts)(key)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
  assert cached.shape == (2, p.num_tokens)


def test_class_labels_of_a_text_run_are_their_short_captions(built):
  p, _ = built("maskgit")
  names = p.dataset.class_names
  from jaxgen.data import captions
  want = p.conditioner.encode([captions.short_caption(3, names), ""])
  got = p.conditioner.sampling_input(jnp.asarray([3, p.num_classes]))  # the null label -> ""
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k], np.float32),
                               np.asarray(want[k], np.float32), atol=2e-3)


@pytest.mark.parametrize("paradigm", [
    "maskgit",  # a prefix model; VAR's cross-attention forward is checked by default in
    # test_cached_text_decoding_equals_full_recomputation[var], its training here is slow
    pytest.param("var", marks=pytest.mark.slow),
    pytest.param("mage", marks=pytest.mark.slow),  # MaskGIT's data path and loss shape
    pytest.param("autoregressive", marks=pytest.mark.slow)])
def test_text_runs_train_on_captioned_images(make, paradigm):
  """Two steps through the real pipeline (captioned images, cached text embeddings,
  codes encoded in the step); the loss is finite and the parameters move."""
  exp, state, losses = run_steps(make(paradigm), jax.devices()[:1], 2)
  assert np.all(np.isfinite(losses))
  assert "text_tokens" in exp.paradigm.example_batch(2)
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       jax.device_get(exp.init_state().params), jax.device_get(state.params))
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow  # the same step as test_autoregressive's and test_t2i's sharded tests
def test_sharded_text_step_on_8_devices_equals_one_device(make):
  check_sharded_step_equals_one_device(lambda: make("autoregressive"))


def test_text_configs_are_checked(make, vq_run):
  c = make("maskgit")
  c.data = ml_collections.ConfigDict(dict(name="tokens", data_dir=vq_run[1], pp="",
                                          train_split="train", eval_split="test",
                                          embeddings_dir="x"))
  with pytest.raises(config_lib.ConfigError, match="code files carry no captions"):
    config_lib.validate(c)
  from helpers import ROOT
  gan = config_lib.load_config_file(f"{ROOT}/configs/fmnist_gan.py")
  gan.text, gan.data = c.text, make("maskgit").data
  with pytest.raises(config_lib.ConfigError, match="'gan' paradigm is class-conditional"):
    config_lib.validate(gan)
