"""Latent flow and latent diffusion: the denoiser trains on a frozen KL-VAE's latents
(pre-computed by `jaxgen tokenize` or encoded in the step: the same loss) and its
samples, preview grids and evaluation images are decoded images; a latent run names the
tokenizer it needs when it is missing, and refuses codes it cannot model."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common  # configs/common.py
from helpers import init_only_run, tiny_config, tiny_tokenizer_config
from jaxgen import config as config_lib
from jaxgen import errors, frozen, generate
from jaxgen.data import datasets
from jaxgen.tokenizers import base as tok_base
from jaxgen.tokenizers import precompute
from jaxgen.train import loop


@pytest.fixture(scope="module")
def kl_run(fake_fmnist_dir, data_dir, tmp_path_factory):
  """An (untrained) f4 KL-VAE (32x32x1 -> 8x8x4) with a fitted latent scale, and the
  scaled latents of both splits: ``(tokenizer_workdir, latents_dir)``."""
  root = tmp_path_factory.mktemp("kl_run")
  c = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "kl", gan=False)
  c.model.channel_mult = (1, 2, 2)
  wd = init_only_run(c, str(root / "vae"))
  tok = tok_base.Tokenizer.from_workdir(wd)
  spec = datasets.get_dataset(c.data)
  images, _ = datasets.load_arrays(spec, "train", limit=64)
  x = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32) / 127.5 - 1
  scale = tok_base.compute_latent_scale([np.asarray(tok.encode(x))])
  tok_base.write_latent_scale(wd, scale, 64)
  tok.latent_scale = scale
  out = str(root / "latents")
  precompute.tokenize_dataset(tok, spec, pp=c.data.pp, out_dir=out, splits=["train", "test"],
                              batch_size=64, progress=False)
  return wd, out


def latent_config(fake_fmnist_dir, data_dir, latents_dir, objective="flow", **train):
  """A tiny DiT (patch 2) on the 8x8x4 latents of ``latents_dir``."""
  c = tiny_config(fake_fmnist_dir, data_dir, "dit", **train)
  c.model.patch_size = 2
  c.data.name, c.data.data_dir, c.data.pp = "tokens", latents_dir, ""
  c.tokenizer = common.tokenizer_section()
  if objective == "ddpm":
    c.paradigm = common.diffusion_paradigm(num_timesteps=100)
    c.model.learn_sigma = True
    c.sample.solver = "ddpm"
  return c


@pytest.mark.parametrize("objective", ["flow", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_latent_loss_is_the_same_on_precomputed_and_in_step_latents(
    kl_run, fake_fmnist_dir, data_dir, objective):
  tok_dir, latents = kl_run
  pre = loop.build(latent_config(fake_fmnist_dir, data_dir, latents, objective),
                   jax.devices()[:1])
  c = latent_config(fake_fmnist_dir, data_dir, latents, objective)
  c.data = common.base_config().data
  c.data.source_dir, c.data.data_dir = fake_fmnist_dir, data_dir
  c.tokenizer.workdir = tok_dir
  step = loop.build(c, jax.devices()[:1])
  for p in (pre.paradigm, step.paradigm):
    assert p.model_shape == (8, 8, 4) and p.image_shape == (32, 32, 1)
    assert p.tokenizer.workdir == tok_dir
  chex.assert_shape(step.paradigm.example_batch(2)["image"], (2, 32, 32, 1))
  spec = datasets.get_dataset(c.data)
  images, labels = datasets.load_arrays(spec, "train", limit=8)
  x = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32) / 127.5 - 1
  z = np.load(os.path.join(latents, "train_codes.npy"))[:8]
  params = pre.init_state().params
  rng = jax.random.PRNGKey(0)
  loss = lambda exp, img: jax.jit(lambda p, b: exp.paradigm.loss(p, b, rng))(
      params, {"image": jnp.asarray(img), "label": jnp.asarray(labels)})[0]
  np.testing.assert_allclose(loss(pre, z), loss(step, x), rtol=1e-4)
  images = jax.jit(lambda p: pre.paradigm.sample(p, rng, jnp.arange(4)))(params)
  chex.assert_shape(images, (4, 32, 32, 1))
  assert float(jnp.abs(images).max()) <= 1.0
  # What `jaxgen sample`'s micro-batch picker times: the same sampler without the
  # decoder; its latents decode to the images above.
  with pre.paradigm.undecoded():
    z0 = jax.jit(lambda p: pre.paradigm.sample(p, rng, jnp.arange(4)))(params)
  chex.assert_shape(z0, (4, 8, 8, 4))
  np.testing.assert_allclose(pre.paradigm.to_images(z0), images, rtol=1e-4, atol=1e-5)


def test_latent_run_names_a_missing_tokenizer_and_refuses_vq_codes(
    kl_run, fake_fmnist_dir, data_dir, tmp_path):
  tok_dir, latents = kl_run
  moved = str(tmp_path / "vae")
  shutil.copytree(tok_dir, moved)
  out = str(tmp_path / "latents")
  shutil.copytree(latents, out)
  meta = precompute.read_meta(out)
  meta["tokenizer_workdir"] = moved
  with open(os.path.join(out, precompute.META), "w") as f:
    json.dump(meta, f)
  wd = str(tmp_path / "flow")
  loop.train(latent_config(fake_fmnist_dir, data_dir, out, num_steps=1), wd,
             jax.devices()[:1], progress=False)
  exp, state, _ = generate.load_run(wd, data=False)  # loads with its tokenizer where it is
  assert exp.paradigm.tokenizer.workdir == moved and int(state.step) == 1
  # (sampling a latent run: test_latent_loss_is_the_same_on_precomputed_and_in_step_...)
  # The run recorded its tokenizer; one whose weights differ is refused by sampling and
  # by a resumed training run (before anything compiles).
  path = os.path.join(wd, frozen.RECORD_FILE)
  record = json.loads(open(path).read())
  assert record["tokenizer"]["workdir"] == moved
  record["tokenizer"]["fingerprint"] = "0" * 16
  with open(path, "w") as f:
    json.dump(record, f)
  with pytest.raises(errors.ConfigError, match="trained with the tokenizer .*fingerprint"):
    generate.load_run(wd, data=False)
  with pytest.raises(errors.ConfigError, match="trained with the tokenizer .*fingerprint"):
    loop.train(latent_config(fake_fmnist_dir, data_dir, out, num_steps=2), wd,
               jax.devices()[:1], progress=False)
  shutil.rmtree(moved)
  with pytest.raises(errors.CheckpointError, match=f"tokenizer run {moved} does not exist"):
    generate.load_run(wd, data=False)
  codes = tmp_path / "vq_codes"  # what `jaxgen tokenize` of a VQ tokenizer describes
  codes.mkdir()
  (codes / precompute.META).write_text(json.dumps(dict(meta, kind="vq", vocab_size=32,
                                                       code_shape=[8, 8])))
  bad = latent_config(fake_fmnist_dir, data_dir, str(codes))
  with pytest.raises(errors.ConfigError, match="holds 'vq' codes; the 'flow' paradigm needs a "
                     r"KL-VAE tokenizer \(configs/fmnist_vae.py\)"):
    config_lib.validate(bad)


_E2E_CONFIG = '''
import sys
sys.path.insert(0, {tests!r})
import ml_collections
from helpers import tiny_config, tiny_tokenizer_config
import common


def get_config(arg=None):
  folder = ml_collections.ConfigDict(dict(
      name="folder", source_dir={src!r}, data_dir={data!r}, image_size=256, crop="center",
      grey=False, test_fraction=0.25, captions_file="", pp="scale(-1, 1)",
      train_split="train", eval_split="test"))
  if arg == "vae":  # a tiny f8 KL-VAE: 256x256x3 -> 32x32x4
    c = tiny_tokenizer_config("", "", "kl", gan=False, num_steps=2, batch_size=8)
    c.model.channel_mult = (1, 1, 2, 2)
    c.data = folder
  else:  # a tiny DiT/2 on its latents (256 tokens)
    c = tiny_config("", "", "dit", num_steps=2, batch_size=8)
    c.model.patch_size = 2
    c.data = ml_collections.ConfigDict(dict(name="tokens", data_dir={latents!r}, pp="",
                                            train_split="train", eval_split="test"))
    c.tokenizer = common.tokenizer_section()
    c.sample.batch_size = 8
    c.sample.steps = 2
  c.mesh.data = -1  # every device of the test session (8 fake CPUs)
  c.eval.classifier_dir = {clf!r}
  return c
'''


@pytest.mark.slow
def test_256px_latent_dit_trains_samples_decodes_and_evaluates_through_the_cli(tmp_path):
  """The ImageNet-shaped path at toy size: a folder of 256x256 RGB images, a tiny f8
  KL-VAE (2 steps), `jaxgen tokenize` (fits the latent scale), a tiny DiT/2 on the
  32x32x4 latents (2 steps), then `jaxgen sample` (decoded 256x256 images) and
  `jaxgen eval` against the folder's images."""
  from PIL import Image
  from jaxgen import cli
  from helpers import ROOT
  rng = np.random.default_rng(0)
  src = tmp_path / "images"
  for k, name in enumerate(["red", "green"]):
    (src / name).mkdir(parents=True)
    for i in range(12):
      arr = rng.integers(0, 60, (256, 256, 3)).astype(np.uint8)
      arr[32 * (i % 4):32 * (i % 4) + 96, 64:192, k] = 220
      Image.fromarray(arr).save(src / name / f"{i}.png")
  cfg = tmp_path / "e2e.py"
  cfg.write_text(_E2E_CONFIG.format(tests=os.path.join(ROOT, "tests"), src=str(src),
                                    data=str(tmp_path / "tfds"),
                                    latents=str(tmp_path / "latents"),
                                    clf=str(tmp_path / "clf")))
  vae, dit = str(tmp_path / "vae"), str(tmp_path / "dit")
  assert cli.main(["train", "--config", f"{cfg}:vae", "--workdir", vae]) == 0
  assert cli.main(["tokenize", "--workdir", vae, "--out", str(tmp_path / "latents"),
                   "--scale-examples", "8", "--batch-size", "4"]) == 0
  assert np.load(tmp_path / "latents" / "train_codes.npy").shape[1:] == (32, 32, 4)
  assert cli.main(["train", "--config", f"{cfg}:dit", "--workdir", dit]) == 0
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", dit, "--num", "8", "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape == (8, 256, 256, 3) and f["arr_0"].dtype == np.uint8
  report = str(tmp_path / "eval.json")
  assert cli.main(["eval", "--workdir", dit, "--samples", out, "--json-out", report]) == 0
  with open(report) as f:
    figures = json.load(f)["samples"]
  assert np.isfinite(figures["fd"]) and figures["num"] == 8
