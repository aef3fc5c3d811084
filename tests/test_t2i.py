"""Text-to-image: the shared conditioning interface (caption dropout, null text, CFG),
DiT's cross-attention and joint (MMDiT) text options, the caption-embedding cache, a
sharded step, and `jaxgen sample --prompt`. A 1-layer random text encoder
("tiny_random") stands in for MiniLM; the data is the synthetic Fashion-MNIST."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import L, check_sharded_step_equals_one_device, t2i_config

from jaxgen import conditioning, registry
from jaxgen.data import caption_embeddings, datasets
from jaxgen.data.idx import DataError


@pytest.fixture
def make_t2i(fake_fmnist_dir, data_dir, caption_dirs):
  def make(**kw):
    return t2i_config(fake_fmnist_dir, data_dir, *caption_dirs, **kw)
  return make


def _build(config):
  from jaxgen.train import loop
  return loop.build(config, jax.devices()[:1])


def test_caption_and_label_dropout_rates():
  n, p = 4000, 0.3
  tol = 4 * np.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations
  text = {"text_tokens": jnp.ones((n, 3, 2)), "text_mask": jnp.ones((n, 3), bool),
          "text_pooled": jnp.ones((n, 2))}
  null = {"text_tokens": jnp.zeros((3, 2)), "text_mask": jnp.array([True, False, False]),
          "text_pooled": jnp.zeros((2,))}
  out = conditioning.drop_to_null(text, null, jax.random.PRNGKey(0), p)
  dropped = np.asarray(out["text_pooled"][:, 0] == 0)
  assert abs(dropped.mean() - p) < tol
  # One draw per example for every leaf: a dropped example is entirely the null text.
  np.testing.assert_array_equal(np.asarray(out["text_mask"][:, 1]), ~dropped)
  np.testing.assert_array_equal(np.asarray(out["text_tokens"]).sum((1, 2)) == 0, dropped)
  labels = conditioning.ClassConditioner(10).drop(
      {"label": jnp.zeros((n,), jnp.int32)}, jax.random.PRNGKey(1), p)["label"]
  assert abs(float((labels == 10).mean()) - p) < tol
  assert set(np.unique(np.asarray(labels))) == {0, 10}


def test_embedding_cache_round_trip(make_t2i, caption_dirs):
  config = make_t2i()
  enc = conditioning.load_text_encoder(config.text)
  spec = datasets.get_dataset(config.data)
  raw = spec.source("train")
  cond = conditioning.TextConditioner(config, spec)
  src = cond.with_text(spec).source("train")
  assert spec.source("train") is raw or len(spec.source("train")) == len(raw)  # untouched
  for i in (0, 7, 100):
    ex, ref = src[i], raw[i]
    for which in ("short", "detailed"):
      tokens, mask, pooled = enc([ref[f"caption_{which}"]])
      np.testing.assert_array_equal(ex[f"text_{which}_mask"], mask[0])
      np.testing.assert_allclose(ex[f"text_{which}_tokens"], tokens[0], atol=2e-3, rtol=2e-3)
      np.testing.assert_allclose(ex[f"text_{which}_pooled"], pooled[0], atol=2e-3, rtol=2e-3)
  null = caption_embeddings.read_null(caption_dirs[1])
  tokens, mask, _ = enc([""])
  np.testing.assert_array_equal(null["text_mask"], mask[0])
  assert mask[0].sum() == 2  # [CLS] [SEP] only
  # choose_caption picks the embedding of the caption it picks, and the pp drops strings.
  from jaxgen.data import preprocess
  out = preprocess.parse(config.data.pp)(src[7], np.random.default_rng(3))
  which = "detailed" if np.random.default_rng(3).random() < 0.5 else "short"
  np.testing.assert_array_equal(out["text_tokens"], src[7][f"text_{which}_tokens"])
  assert "caption" not in out and not any(k.startswith("text_short") for k in out)


def test_mismatched_cache_is_refused(make_t2i, caption_dirs, tmp_path):
  _, emb_dir = caption_dirs
  other = make_t2i()
  other.text.encoder = "minilm"
  other.text.width = 384
  with pytest.raises(DataError, match=r"'tiny_random'.*this run uses 'minilm'"):
    caption_embeddings.check_cache(emb_dir, other.text)
  # Other captions (short only): the fingerprint differs.
  config = make_t2i(ratio=0.0)
  config.data.captions_dir = ""
  spec = datasets.get_dataset(config.data)
  spec = conditioning.TextConditioner(config, spec).with_text(spec)
  with pytest.raises(DataError, match="encode other captions"):
    spec.source("train")


@pytest.mark.parametrize("mode", ["cross_attention", "joint"])
def test_prompt_changes_output_and_padding_does_not(make_t2i, mode):
  exp = _build(make_t2i(mode=mode))
  p = exp.paradigm
  params = jax.tree.map(lambda a: a + 0.02, exp.init_state().params)  # non-zero output
  cond = p.conditioner.for_sampling(["a small dark sandal", "a large light coat"])
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + p.image_shape)
  t = jnp.full((2,), 0.5)
  velocity = jax.jit(lambda c: p.velocity(params, x, t, c))  # one program, not op by op
  v = velocity(cond)
  other = p.conditioner.for_sampling(["a large light coat", "a small dark sandal"])
  assert float(jnp.abs(v - velocity(other)).max()) > 1e-3
  pad = ~cond["text_mask"][..., None]
  junk = jax.random.normal(jax.random.PRNGKey(1), cond["text_tokens"].shape)
  padded = dict(cond, text_tokens=jnp.where(pad, junk, cond["text_tokens"]))
  np.testing.assert_allclose(v, velocity(padded), atol=1e-5)


def test_padding_token_ids_do_not_matter_when_encoding_in_step(make_t2i):
  exp = _build(make_t2i(encode_in_step=True))
  p = exp.paradigm
  ids, mask = p.conditioner.encoder.tokenize(["a dress", "a bag that is pale"])
  batch = {"text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(mask)}
  junk = dict(batch, text_ids=jnp.where(batch["text_mask"], batch["text_ids"], 77))
  a, b = p.conditioner.from_batch(batch), p.conditioner.from_batch(junk)
  np.testing.assert_allclose(a["text_tokens"], b["text_tokens"], atol=1e-6)
  np.testing.assert_allclose(a["text_pooled"], b["text_pooled"], atol=1e-6)
  from jaxgen.train import loop  # the pipeline tokenizes; the step encodes
  batch = next(loop.make_data_iterator(exp))
  assert batch["text_ids"].shape == (8, L) and "text_tokens" not in batch
  loss, _ = jax.jit(p.loss)(exp.init_state().params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss))


def test_cfg_against_null_text(make_t2i):
  exp = _build(make_t2i())
  p = exp.paradigm
  params = jax.tree.map(lambda a: a + 0.02, exp.init_state().params)
  cond = p.conditioner.for_sampling(["a pale shirt", "a dark patterned bag"])
  key = jax.random.PRNGKey(3)
  kw = dict(steps=3, solver="euler", shift=1.0)
  # (each program jitted whole: op-by-op dispatch compiles every op on its own)
  plain = jax.jit(lambda: p.sample(params, key, cond, cfg_scale=1.0, **kw))()
  # scale 1 through the two-pass CFG path (a traced scale) == the conditional model;
  # scale 3 == uncond + 3 (cond - uncond), uncond = the encoder's encoding of ""
  guided = jax.jit(lambda s: p.sample(params, key, cond, cfg_scale=s, **kw))
  np.testing.assert_allclose(plain, guided(1.0), atol=1e-5)
  null = p.conditioner.for_sampling(["", ""])
  velocity = jax.jit(lambda x, t, c: p.velocity(params, x, t, c))
  x = jax.random.normal(key, (2,) + p.image_shape)
  ts = np.linspace(1, 0, 4)
  for i in range(3):
    tb = jnp.full((2,), ts[i], jnp.float32)
    vc, vu = velocity(x, tb, cond), velocity(x, tb, null)
    x = x + (ts[i + 1] - ts[i]) * (vu + 3.0 * (vc - vu))
  np.testing.assert_allclose(guided(3.0), jnp.clip(x, -1, 1), atol=2e-4)


@pytest.mark.parametrize("mode", [
    "cross_attention",
    # the default tier's budget: joint's text path is checked by
    # test_prompt_changes_output_and_padding_does_not[joint] (default)
    pytest.param("joint", marks=pytest.mark.slow)])
def test_text_variants_train_on_a_fixed_batch(make_t2i, mode):
  exp = _build(make_t2i(mode=mode))
  p = exp.paradigm
  rng = np.random.default_rng(0)
  cond = p.conditioner.encode(["a small dark sandal", "a large light coat"] * 4)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8,) + p.image_shape), jnp.float32),
           "text_tokens": jnp.asarray(cond["text_tokens"], jnp.float16),
           "text_mask": jnp.asarray(cond["text_mask"]),
           "text_pooled": jnp.asarray(cond["text_pooled"], jnp.float16)}
  params = jax.tree.map(jnp.asarray, exp.init_state().params)
  tx = optax.adam(3e-3)
  opt = tx.init(params)
  key = jax.random.PRNGKey(0)

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(lambda q: p.loss(q, batch, key)[0])(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses = []
  for _ in range(40):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses[::10]


@pytest.mark.slow  # by default: the class-conditional DiT's sharded step (test_train.py)
def test_sharded_step_on_8_devices_equals_one_device(make_t2i):
  check_sharded_step_equals_one_device(make_t2i)


def test_sample_prompt_cli_writes_prompts(make_t2i, tmp_path):
  from jaxgen import cli
  from jaxgen.train import loop
  wd = str(tmp_path / "run")
  config = make_t2i()
  config.train.num_steps = 2
  loop.train(config, wd, jax.devices()[:1], progress=False)
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", wd, "--prompt", "a pale dress", "--num", "3",
                   "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape == (3, 32, 32, 1) and f["arr_0"].dtype == np.uint8
    assert list(f["prompts"]) == ["a pale dress"] * 3
  assert os.path.isfile(str(tmp_path / "s.png"))
  pf = tmp_path / "prompts.txt"
  pf.write_text("a bag\nan ankle boot\n\n")
  args = cli.build_parser().parse_args(["sample", "--workdir", wd, "--prompts", str(pf),
                                        "--num", "3"])
  exp = types.SimpleNamespace(paradigm=registry.PARADIGMS.get("flow"), config=config)
  assert cli._sample_prompts(args, exp) == ["a bag", "an ankle boot", "a bag"]
  # without prompts a text run samples its labels' short captions ("a t-shirt", ...)
  assert cli.main(["sample", "--workdir", wd, "--num", "2", "--out", out]) == 0
  with np.load(out) as f:
    assert list(f["labels"]) == [0, 1] and "prompts" not in f
