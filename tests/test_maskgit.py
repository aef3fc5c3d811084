"""MaskGIT and MAGE: mask schedules and the reveal counts of iterative decoding against
NumPy re-implementations, decoding never changes a fixed token and is deterministic at
temperature 0, scan decoding == a Python loop, the loss sees masked positions only,
sharded steps on 8 fake devices == 1 device, mismatched tokenizers/codes are refused,
and the named ImageNet sizes match the official parameter counts."""

import hashlib
import importlib.util
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import ROOT, image_token_config, run_steps, tiny_token_config
from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import token as token_losses
from jaxgen.paradigms import mage as mage_lib
from jaxgen.samplers import loop as sampler_loop
from jaxgen.samplers import maskgit as decoding
from jaxgen.train import loop


def np_gamma(r, schedule, total):
  r = np.asarray(r, np.float64)
  g = {"cosine": lambda: np.cos(np.pi / 2 * r), "linear": lambda: 1 - r,
       "uniform": lambda: 1 - r, "sqrt": lambda: 1 - np.sqrt(r),
       "pow0.5": lambda: 1 - np.sqrt(r), "square": lambda: 1 - r ** 2,
       "pow2": lambda: 1 - r ** 2,
       "exp": lambda: 1 - 2.0 ** (-np.log2(total) * (1 - r)),
       "log": lambda: -np.log2(np.maximum(r, 1e-30)) / np.log2(total)}[schedule]()
  return np.clip(g, 1e-6, 1.0)


@pytest.mark.parametrize("schedule", decoding.SCHEDULES)
def test_mask_schedules_match_numpy(schedule):
  r = np.linspace(0.0, 1.0, 17)[1:]
  np.testing.assert_allclose(decoding.mask_ratio(r, schedule, 256),
                             np_gamma(r, schedule, 256), rtol=1e-5, atol=1e-6)
  assert float(decoding.mask_ratio(1.0, schedule, 256)) <= 1e-5  # nothing left at the end
  with pytest.raises(ValueError, match="Unknown mask schedule 'pow-1'"):
    decoding.mask_ratio(0.5, "pow-1")


def _official_reference():
  """The official decoder's outputs (tests/data/make_maskgit_decode_reference.py ran
  google-research/maskgit's parallel_decode) and that script's logits table / starts."""
  with open(os.path.join(ROOT, "tests", "data", "maskgit_decode_reference.json")) as f:
    ref = json.load(f)
  spec = importlib.util.spec_from_file_location(
      "make_maskgit_decode_reference",
      os.path.join(ROOT, "tests", "data", "make_maskgit_decode_reference.py"))
  maker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(maker)
  return ref, maker


def _decode_states(start, table, steps, schedule, mask_id, deterministic):
  """Every state of jaxgen's decoder, step by step (op by op, as the official code
  ran; no program to compile per case): (steps + 1, B, N)."""
  step = decoding.decode_step(lambda tokens, i: table, mask_id=mask_id, num_steps=steps,
                              schedule=schedule, temperature=0.0 if deterministic else 1.0,
                              choice_temperature=0.0 if deterministic else 4.5)
  state = decoding.init_state(jnp.asarray(start), mask_id, jax.random.PRNGKey(0))
  seen = [start]
  for i in range(steps):
    state = step(state, jnp.int32(i))
    seen.append(np.asarray(state.tokens))
  return np.stack(seen)


def _check_official(random_sizes):
  """Every reference case: the [MASK] count at each step, which positions stay masked
  and the final tokens (draws made deterministic as the reference made them: argmax,
  no choice noise); for ``random_sizes``, the counts with random draws (categorical,
  choice temperature 4.5), which do not depend on the draws."""
  ref, maker = _official_reference()
  mask_id, checked = ref["mask_id"], 0
  for case in ref["cases"]:
    n, steps, schedule = case["tokens"], case["steps"], case["schedule"]
    table, start = jnp.asarray(maker.logits_table(n)), maker.start_tokens(n, case["given"])
    where = (n, case["given"], steps, schedule)
    seen = _decode_states(start, table, steps, schedule, mask_id, True)
    counts = [[int(c) for c in (s == mask_id).sum(-1)] for s in seen[:-1]]
    assert counts == case["counts"], (where, counts, case["counts"])
    masks = hashlib.sha256(b"".join((s == mask_id).tobytes() for s in seen[1:-1])).hexdigest()
    assert masks == case["masks"], where
    final = hashlib.sha256(seen[-1].astype(np.int32).tobytes()).hexdigest()
    assert final == case["final"], where
    if n in random_sizes:
      random = _decode_states(start, table, steps, schedule, mask_id, False)
      assert [[int(c) for c in (s == mask_id).sum(-1)] for s in random[:-1]] == case["counts"]
      assert (random[-1] != mask_id).all() and (random[-1] < ref["codes"]).all()
      fixed = start != mask_id
      assert (random[:, fixed] == start[fixed]).all(), where  # given tokens never change
    checked += 1
  assert checked == 224


def test_decoding_is_the_official_parallel_decode():
  """jaxgen's MaskGIT decoder == the official parallel_decode on every schedule, 16-1024
  tokens, 4-16 steps, with and without given tokens (random draws: 16-64 tokens here,
  every size in the slow tier)."""
  _check_official(random_sizes=(16, 64))


@pytest.mark.slow
def test_official_counts_with_random_draws_at_every_size():
  _check_official(random_sizes=(16, 64, 256, 1024))


def _fixed_logits(b, n, v, seed=0):
  table = jax.random.normal(jax.random.PRNGKey(seed), (b, n, v)) * 3.0
  return lambda tokens, i: table + 0.1 * i  # any deterministic "model"


def test_scan_decoding_equals_python_loop():
  b, n, v = 4, 64, 32
  step = decoding.decode_step(_fixed_logits(b, n, v, seed=3), mask_id=v, num_steps=8,
                              temperature=1.0, choice_temperature=4.5, top_k=5)
  init = decoding.init_state(jnp.full((b, n), v, jnp.int32), v, jax.random.PRNGKey(7))
  scanned = jax.jit(lambda s: sampler_loop.run_loop(step, s, 8))(init)
  python = sampler_loop.run_loop_python(step, init, 8)
  np.testing.assert_array_equal(scanned.tokens, python.tokens)


def test_top_k_matches_numpy():
  logits = np.random.default_rng(0).normal(size=(3, 5, 11)).astype(np.float32)
  out = np.asarray(decoding.top_k_logits(jnp.asarray(logits), 4))
  kth = np.sort(logits, axis=-1)[..., -4][..., None]
  np.testing.assert_array_equal(out, np.where(logits >= kth, logits, -np.inf))
  np.testing.assert_array_equal(decoding.top_k_logits(jnp.asarray(logits), 0), logits)


def test_masked_cross_entropy_matches_numpy_and_ignores_unmasked_targets():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 9, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (4, 9))
  mask = rng.uniform(size=(4, 9)) < 0.4
  eps = 0.1
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  ref = ((1 - eps) * nll - eps * logp.mean(-1))[mask].mean()
  loss, acc = token_losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                                jnp.asarray(mask), eps)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(acc, (logits.argmax(-1) == targets)[mask].mean(), rtol=1e-6)
  other = np.where(mask, targets, (targets + 3) % 7)  # change only unmasked targets
  loss2, _ = token_losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(other),
                                               jnp.asarray(mask), eps)
  assert float(loss2) == float(loss)


def test_training_mask_counts_follow_the_schedule():
  rng, b, n = jax.random.PRNGKey(5), 64, 49
  mask = decoding.training_mask(rng, b, n, "cosine")
  r = np.asarray(jax.random.uniform(jax.random.split(rng)[0], (b,)))
  want = np.clip(np.ceil(np_gamma(r, "cosine", n) * n), 1, n)
  np.testing.assert_array_equal(np.asarray(mask).sum(-1), want)


def test_mage_masking_ratio_is_the_truncated_gaussian():
  from scipy import stats
  r = np.asarray(mage_lib.masking_ratio(jax.random.PRNGKey(0), 20000, 0.55, 0.25, 0.5))
  assert r.min() >= 0.5 and r.max() <= 1.0
  ref = stats.truncnorm((0.5 - 0.55) / 0.25, (1 - 0.55) / 0.25, loc=0.55, scale=0.25)
  np.testing.assert_allclose(r.mean(), ref.mean(), atol=3e-3)
  np.testing.assert_allclose(r.std(), ref.std(), atol=3e-3)


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  z = np.concatenate([a, b])
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  sim = z @ z.T / 0.2
  np.fill_diagonal(sim, -np.inf)
  logp = sim - np.log(np.exp(sim).sum(1, keepdims=True))
  pos = np.r_[np.arange(5, 10), np.arange(5)]
  ref = -logp[np.arange(10), pos].mean()
  np.testing.assert_allclose(mage_lib.info_nce(jnp.asarray(a), jnp.asarray(b), 0.2), ref,
                             rtol=1e-5)


# -- the paradigms on a tiny tokenizer's codes ------------------------------------------

@pytest.fixture(scope="module")
def built(vq_run):
  """One built experiment per paradigm (compiled functions are reused in the module)."""
  _, codes = vq_run
  out = {}
  for name in ("maskgit", "mage"):
    exp = loop.build(tiny_token_config(name, codes), jax.devices()[:1])
    out[name] = (exp, exp.init_state())
  return out


@pytest.mark.parametrize("name", ["maskgit", "mage"])
def test_samples_decode_to_images_and_zero_temperature_is_deterministic(built, name):
  exp, state = built[name]
  p = exp.paradigm
  labels = jnp.arange(4, dtype=jnp.int32)
  greedy = jax.jit(lambda r: p.sample_tokens(state.params, r, labels, temperature=0.0,
                                             choice_temperature=0.0))
  a = greedy(jax.random.PRNGKey(0))
  b = greedy(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  c = jax.jit(lambda r: p.sample_tokens(state.params, r, labels))(jax.random.PRNGKey(1))
  assert not np.array_equal(a, c)
  chex.assert_shape(a, (4, 64))
  assert int(a.max()) < 32 and int(a.min()) >= 0
  images = jax.jit(lambda r: p.sample(state.params, r, labels))(jax.random.PRNGKey(2))
  chex.assert_shape(images, (4, 32, 32, 1))
  assert float(jnp.abs(images).max()) <= 1.0


def test_maskgit_loss_sees_only_masked_positions(built):
  exp, state = built["maskgit"]
  p = exp.paradigm
  codes = jnp.asarray(np.random.default_rng(0).integers(0, 32, (8, 64)), jnp.int32)
  rng = jax.random.PRNGKey(3)
  mask = decoding.training_mask(jax.random.split(rng, 3)[0], 8, 64, "cosine")
  batch = {"codes": codes.reshape(8, 8, 8), "label": jnp.zeros((8,), jnp.int32)}
  loss, _ = jax.jit(lambda b, r: p.loss(state.params, b, r, train=False))(batch, rng)
  # The model's input is the masked grid, so unmasked positions enter only as inputs:
  # with the same input, the loss is the masked cross-entropy of the logits.
  logits = jax.jit(p.logits)(state.params, jnp.where(mask, p.mask_id, codes),
                             batch["label"])
  ref, _ = token_losses.masked_cross_entropy(logits, codes, mask, 0.1)
  np.testing.assert_allclose(loss, ref, rtol=1e-6)


# The default tier's budget: the sharded step == one device is checked by test_train.py
# (DiT, 2x2x2 mesh) and test_gan.py (two networks), the tokenizer as a program argument
# by test_frozen.py (default); this token-paradigm version is slow.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["maskgit", "mage"])
def test_sharded_step_on_8_devices_equals_one_device(vq_run, name, fake_fmnist_dir,
                                                     data_dir):
  """On images encoded in the step by the frozen tokenizer (its weights an argument of
  the program, sharded on the 2x4 mesh): the same losses and parameters."""
  tok_dir, _ = vq_run
  c1 = image_token_config(name, tok_dir, fake_fmnist_dir, data_dir)
  c8 = image_token_config(name, tok_dir, fake_fmnist_dir, data_dir)
  c8.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4, tensor=1))
  for c in (c1, c8):
    # Adam turns the float noise of exactly-zero gradients into lr-sized steps of random
    # sign; a larger eps compares the real updates (as in the tokenizer's test).
    c.optim.eps = 1e-3
  _, s1, l1 = run_steps(c1, jax.devices()[:1], 2)
  _, s8, l8 = run_steps(c8, jax.devices(), 2)
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
               jax.device_get(s1.params), jax.device_get(s8.params))


def test_mismatched_tokenizer_or_codes_are_refused(vq_run, tmp_path, fake_fmnist_dir,
                                                   data_dir):
  from jaxgen import config as config_lib
  wd, codes = vq_run
  bad = tiny_token_config("maskgit", codes)
  bad.model.codebook_size = 64
  with pytest.raises(ConfigError, match=r"32 codes.*codebook_size=64"):
    config_lib.validate(bad)
  bad = tiny_token_config("maskgit", codes)
  bad.model.grid_size = (16, 16)
  with pytest.raises(ConfigError, match=r"\(8, 8\) grid.*\(16, 16\)"):
    config_lib.validate(bad)
  other = tiny_token_config("maskgit", codes)
  other.tokenizer.workdir = str(tmp_path / "another_tokenizer")
  with pytest.raises(ConfigError, match="written by the tokenizer"):
    config_lib.validate(other)
  # Images encoded in the step by a tokenizer whose codebook differs from the model's.
  on_images = tiny_token_config("maskgit", "")
  on_images.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist", data_dir=data_dir, source_dir=fake_fmnist_dir,
      pp="pad(32)|scale(-1, 1)", train_split="train", eval_split="test"))
  on_images.tokenizer.workdir = wd
  on_images.model.codebook_size = 64
  with pytest.raises(ConfigError, match=f"tokenizer {wd}.*32 codes.*codebook_size=64"):
    loop.build(on_images, jax.devices()[:1])


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(config_name):
  c = importlib.import_module(config_name).get_config()
  m = registry.MODELS.get(c.model.name)(c.model, num_tokens=256, codebook_size=1024,
                                        num_classes=1000)
  return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 256), jnp.int32),
                                       jnp.zeros((1,), jnp.int32)))["params"]


def _official_maskgit_vqgan_params():
  """The official MaskGIT VQGAN (maskgit/nets/vqgan_tokenizer.py with vqgan_config.py:
  128 filters, multipliers 1,1,2,2,4, 2 res blocks, GroupNorm, bias-free res convs,
  1024 x 256 codebook), counted in closed form."""
  def res(i, o):
    return 2 * i + 9 * i * o + 2 * o + 9 * o * o + (i * o if i != o else 0)
  f = [128 * m for m in (1, 1, 2, 2, 4)]
  enc, prev = 9 * 3 * 128, 128
  for fi in f:
    for _ in range(2):
      enc, prev = enc + res(prev, fi), fi
  enc += 2 * res(512, 512) + 2 * 512 + 512 * 256 + 256
  dec, prev = 9 * 256 * 512 + 512 + 2 * res(512, 512), 512
  for i in reversed(range(5)):
    for _ in range(2):
      dec, prev = dec + res(prev, f[i]), f[i]
    dec += 9 * f[i] ** 2 + f[i] if i else 0
  dec += 2 * 128 + 9 * 128 * 3 + 3
  return enc + dec + 1024 * 256


def test_imagenet_maskgit_matches_the_papers_227m():
  transformer = _count(_abstract_params("imagenet256_maskgit"))
  # Official transformer (24 x 768, 3072 MLP, vocab 1024 + 1000 classes + [MASK], 257
  # positions, BERT embedding LN and MLM head): our layout differs only in a final LN
  # and the null-class row, both under 2k parameters.
  per_layer = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
  official = (24 * per_layer + 2025 * 768 + 257 * 768 + 2 * 768
              + 768 * 768 + 768 + 2 * 768 + 2025)
  assert abs(transformer - official) < 2000, (transformer, official)
  # The paper's Table 1 gives 227M for MaskGIT: transformer + its VQGAN tokenizer.
  total = transformer + _official_maskgit_vqgan_params()
  assert abs(total / 1e6 - 227) < 0.5, total


def test_imagenet_mage_vitb_matches_the_official_model():
  n = _count(_abstract_params("imagenet256_mage_vitb"))
  # models_mage.py, mage_vit_base_patch16: encoder 12 x 768, decoder 8 x 768 (MLP 4x),
  # token table 1024 + 1000 + 1 rows, 257 learned encoder and decoder positions, the
  # decoder projection and the MLM head (its unused MAE leftovers not counted). The
  # named size takes the official layout (one 2025-row table, the head's bias over it):
  # equal, as the official model's used parameters counted in PyTorch (144,896,745).
  per_layer = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
  official = (20 * per_layer + 2025 * 768 + 2 * 257 * 768 + 2 * 768 + 2 * 2 * 768
              + 768 * 768 + 768 + 768 * 768 + 768 + 2 * 768 + 2025)
  assert n == official == 144_896_745, (n, official)


def test_linear_probe_fit_reaches_the_scipy_optimum():
  from scipy import optimize
  from jaxgen.eval import linear_probe
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 300)
  x = rng.normal(size=(300, 5)) + np.eye(3, 5)[y] * 1.5
  w, b, _ = linear_probe.fit_logistic(x.astype(np.float32), y, 3, l2=1e-2)

  def objective(theta):
    ww, bb = theta[:15].reshape(5, 3), theta[15:]
    logits = x @ ww + bb
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(300), y].mean() + 0.5 * 1e-2 * (ww ** 2).sum()

  ref = optimize.minimize(objective, np.zeros(18), method="L-BFGS-B", tol=1e-12)
  np.testing.assert_allclose(objective(np.r_[w.ravel(), b]), ref.fun, rtol=1e-4)
  figs = linear_probe.linear_probe(x[:200], y[:200], x[200:], y[200:], 3)
  assert figs["linear_probe_test_accuracy"] > 0.6  # well above chance (1/3)


@pytest.mark.slow
def test_token_run_samples_evaluates_and_probes_through_the_cli(vq_run, data_dir, tmp_path,
                                                                 capsys):
  import json
  import os
  from jaxgen import cli
  _, codes = vq_run
  config = tiny_token_config("mage", codes, classifier_dir=os.path.join(data_dir,
                                                                        "classifiers"),
                             num_steps=2)
  wd = str(tmp_path / "mage")
  loop.train(config, wd, jax.devices()[:1], progress=False)
  out = str(tmp_path / "samples.npz")
  assert cli.main(["sample", "--workdir", wd, "--num", "20", "--out", out]) == 0
  stored = np.load(out)
  assert stored["arr_0"].shape == (20, 32, 32, 1) and stored["arr_0"].dtype == np.uint8
  capsys.readouterr()
  # Samples of a run on codes are evaluated against the tokenizer's images.
  assert cli.main(["eval", "--workdir", wd, "--samples", out, "--no-reference",
                   "--json-out", str(tmp_path / "eval.json")]) == 0
  figs = json.load(open(tmp_path / "eval.json"))["samples"]
  assert 0.0 <= figs["accuracy"] <= 1.0 and np.isfinite(figs["fd"])
  assert cli.main(["eval", "--workdir", wd, "--linear-probe",
                   "--json-out", str(tmp_path / "probe.json")]) == 0
  probe = json.load(open(tmp_path / "probe.json"))["linear_probe"]
  assert probe["num_train"] == 512 and probe["num_test"] == 128
  assert 0.0 <= probe["linear_probe_test_accuracy"] <= 1.0
