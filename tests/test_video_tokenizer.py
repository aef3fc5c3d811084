"""The tokenizer paradigm on videos: causal 3D LFQ and KL tokenizers train on Moving
Fashion-MNIST (the loss falls, LFQ's usage and entropies are logged, the per-frame
PatchGAN runs), the sharded step equals one device, a run serves the frozen
`Tokenizer` interface on videos and `jaxgen tokenize` writes (N, T', h, w) codes,
``model.inflate_from`` initialises the nets with `inflation.inflate_params` of a 2D run
(which makes a one-frame video encode as the image does: test_video_tokenizer_nets.py),
and bad configs are refused.

Cost: 16x16 canvases, 5-frame clips (ft 2 -> 3 latent frames, f2 -> 8x8), 8 channels;
each experiment is built and compiled once per module (module-scoped fixtures).
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import (VIDEO_FRAMES, VIDEO_LATENT, VIDEO_NETS, VIDEO_SIZE, init_only_run,
                     tiny_config, tiny_tokenizer_config)
from helpers import video_tokenizer_config as video_config
from jaxgen.config import ConfigError, validate
from jaxgen import images as images_lib
from jaxgen.data import datasets, pipeline
from jaxgen.eval import frechet, reconstruction
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base
from jaxgen.tokenizers import inflation, precompute
from jaxgen.train import checkpoint, loop

# f 2 in space, ft 2 in time: (5, 16, 16, 1) clips -> (3, 8, 8) codes of 2^4.
NETS, FRAMES, SIZE, LATENT = VIDEO_NETS, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_LATENT


@pytest.fixture(scope="module")
def runs(fake_fmnist_dir, data_dir, tmp_path_factory):
  """bottleneck -> a run of 4 steps on one fixed batch (the KL one with the per-frame
  PatchGAN): experiment, jitted step, batch, reconstruction losses, final state and
  metrics, and its workdir (the final state saved as a checkpoint)."""
  out = {}

  def get(bottleneck):
    if bottleneck not in out:
      config = video_config(fake_fmnist_dir, data_dir, bottleneck, gan=bottleneck == "kl")
      exp = loop.build(config, jax.devices()[:1])
      batch = next(loop.make_data_iterator(exp))
      step = loop.make_train_step(exp)[0]
      state, losses = exp.init_state(), []
      for _ in range(4):
        state, m = step(state, mesh_lib.global_batch(batch, exp.mesh))
        losses.append(float(m["rec_loss"]))
      workdir = str(tmp_path_factory.mktemp(f"video_{bottleneck}"))
      ckpt = checkpoint.Checkpointer(workdir, async_save=False)
      ckpt.save(4, state, config=config, force=True)
      ckpt.close()
      checkpoint.write_config(workdir, config)
      out[bottleneck] = dict(exp=exp, step=step, batch=batch, losses=losses, state=state,
                             metrics=jax.device_get(m), workdir=workdir)
    return out[bottleneck]
  return get


# KL's video step differs from LFQ's only in the bottleneck (the image path's KL is
# tested by default in test_tokenizer.py): its training run is in the slow tier.
@pytest.mark.parametrize("bottleneck", ["lfq", pytest.param("kl", marks=pytest.mark.slow)])
def test_video_step_lowers_the_loss_and_logs_code_usage(runs, bottleneck):
  run = runs(bottleneck)
  exp, state, losses, m = run["exp"], run["state"], run["losses"], run["metrics"]
  assert run["batch"]["image"].shape == (8, FRAMES, SIZE, SIZE, 1)
  assert losses[-1] < 0.8 * losses[0], losses
  if bottleneck == "lfq":
    for k in ("usage", "usage_window", "perplexity", "per_sample_entropy",
              "codebook_entropy", "entropy_weight", "commitment_loss", "entropy_loss"):
      assert np.isfinite(m[k]) and np.ndim(m[k]) == 0, k
    assert 0 < m["usage"] <= 1 and 1 <= m["perplexity"] <= 16
    np.testing.assert_allclose(m["entropy_weight"], 0.15, rtol=1e-6)  # 0.3 -> 0.1 in 4
    assert int(state.model_state["vq_stats"]["quantizer"]["steps"]) == 4
  else:
    assert m["kl"] > 0
    assert "d_loss" in m and "g_loss" in m  # the per-frame PatchGAN (on the KL run)
  # The previews are videos: real clips over their reconstructions (GIF grids).
  preview = jax.eval_shape(lambda s: exp.paradigm.preview(s, None, 4), state)
  chex.assert_shape(preview, (4, FRAMES, SIZE, SIZE, 1))


@pytest.mark.slow  # ~16 s (the 8-device program's compile); the brief's bar was 5 s
def test_sharded_video_step_equals_one_device(fake_fmnist_dir, data_dir, runs):
  exp1, step1, batch = (runs("lfq")[k] for k in ("exp", "step", "batch"))
  c8 = video_config(fake_fmnist_dir, data_dir, "lfq")
  c8.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4, tensor=1))
  exp8 = loop.build(c8, jax.devices())
  step8 = loop.make_train_step(exp8)[0]
  s1, m1 = step1(exp1.init_state(), mesh_lib.global_batch(batch, exp1.mesh))
  s8, m8 = step8(exp8.init_state(), mesh_lib.global_batch(batch, exp8.mesh))
  for k in ("loss", "usage", "codebook_entropy"):
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-4, err_msg=k)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-4, atol=5e-6)
  jax.tree.map(close, jax.device_get(s1.params), jax.device_get(s8.params))
  jax.tree.map(close, jax.device_get(s1.model_state), jax.device_get(s8.model_state))


def test_video_tokenizer_interface_and_tokenize(runs, tmp_path):
  config, wd = runs("lfq")["exp"].config, runs("lfq")["workdir"]
  tok = tok_base.Tokenizer.from_workdir(wd)
  assert tok.kind == "lfq" and tok.vocab_size == 16
  assert tok.grid_shape == LATENT and tok.latent_shape == LATENT + (4,)
  x = np.random.default_rng(0).uniform(-1, 1, (8, FRAMES, SIZE, SIZE, 1)).astype(np.float32)
  codes = tok.encode(x)
  chex.assert_shape(codes, (8,) + LATENT)
  chex.assert_type(codes, jnp.int32)
  assert int(codes.min()) >= 0 and int(codes.max()) < 16
  emb = tok.codes_to_embeddings(codes)
  chex.assert_shape(emb, (8,) + LATENT + (4,))
  np.testing.assert_array_equal(np.abs(emb), 1.0)  # the codes are sign vectors
  rec = tok.decode(codes)
  chex.assert_shape(rec, x.shape)
  chex.assert_type(rec, jnp.float32)
  assert float(jnp.abs(rec).max()) <= 1.0
  # `jaxgen tokenize`: (N, T', h, w) codes, read back by the tokens dataset.
  spec = datasets.get_dataset(config.data)
  out = str(tmp_path / "codes")
  written = precompute.tokenize_dataset(tok, spec, pp=config.data.pp, out_dir=out,
                                        splits=["test"], batch_size=8, progress=False)
  assert written == {"test": 8}
  tokens = datasets.get_dataset(ml_collections.ConfigDict(dict(name="tokens", data_dir=out)))
  assert tokens.image_shape == LATENT
  videos, _ = datasets.load_arrays(spec, "test", limit=8)
  np.testing.assert_array_equal(
      np.load(f"{out}/test_codes.npy"), tok.encode(videos.astype(np.float32) / 127.5 - 1))
  batch = next(iter(pipeline.train_dataset(tokens, split="test", pp="", batch_size=4,
                                           seed=0)))
  assert batch["codes"].shape == (4,) + LATENT
  # `jaxgen eval`'s reconstruction figures of videos: PSNR over each whole video, SSIM
  # of every frame averaged per video, the Frechet figures given (here: FD of the
  # per-frame mean grey levels) of reconstructions and originals.
  # Labels come with the videos, in order, for the accuracies.
  _, test_labels = datasets.load_arrays(spec, "test", limit=8)

  def figures_fn(v, labels):
    np.testing.assert_array_equal(labels, test_labels)
    f = v.reshape(len(v), FRAMES, -1).mean(-1).astype(np.float64)
    return {"fd_means": frechet.frechet_distance(*frechet.stats(f), *frechet.stats(
        videos.reshape(len(videos), FRAMES, -1).mean(-1).astype(np.float64)))}
  figs = reconstruction.evaluate_tokenizer(tok, spec, split="test", pp=config.data.pp,
                                           num=8, batch_size=8, figures_fn=figures_fn,
                                           progress=False)
  rec = np.asarray(images_lib.to_uint8(tok.decode(tok.encode(
      videos.astype(np.float32) / 127.5 - 1))))
  frame = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
  assert figs["psnr"] == pytest.approx(reconstruction.psnr_uint8(videos, rec).mean())
  assert figs["ssim"] == pytest.approx(reconstruction.ssim_uint8(
      frame(videos), frame(rec)).mean())
  assert figs["fd_means_originals"] == pytest.approx(0, abs=1e-6)
  assert figs["rfd_means"] == pytest.approx(figures_fn(rec, test_labels)["fd_means"])
  assert 0 < figs["codebook_usage"] <= 1 and figs["num"] == 8
  with pytest.raises(ValueError, match="needs figures_fn"):
    reconstruction.evaluate_tokenizer(tok, spec, split="test", pp=config.data.pp, num=8,
                                      batch_size=8, progress=False)


def test_video_kl_tokenizer_latents_and_scale(fake_fmnist_dir, data_dir, tmp_path):
  config = video_config(fake_fmnist_dir, data_dir, "kl")  # initialised, not trained
  wd = init_only_run(config, str(tmp_path / "kl"))
  tok = tok_base.Tokenizer.from_workdir(wd)
  assert tok.kind == "kl" and tok.vocab_size is None
  assert tok.latent_shape == LATENT + (4,)
  spec = datasets.get_dataset(config.data)
  scale = tok_base.ensure_latent_scale(tok, spec, split="test", pp=config.data.pp, num=8)
  assert scale is not None and np.isfinite(scale) and scale > 0
  assert tok_base.read_latent_scale(wd) == pytest.approx(scale)
  x = np.zeros((2, FRAMES, SIZE, SIZE, 1), np.float32)
  z = tok.encode(x)
  chex.assert_shape(z, (2,) + LATENT + (4,))
  chex.assert_shape(tok.decode(z), x.shape)
  # A latent video DiT given 2 latent frames continues the 3 pixel frames that encode
  # alone into them (by causality the whole clip's first 2 latent frames, as the
  # causality tests of test_video_tokenizer_nets.py check).
  c = tiny_config(fake_fmnist_dir, data_dir)  # a flow run
  c.data, c.paradigm.context_frames = config.data, 2
  c.tokenizer = ml_collections.ConfigDict(dict(workdir=wd))
  c.model = ml_collections.ConfigDict(dict(name="video_dit", depth=1, hidden_size=8,
                                           num_heads=1, patch_size=4))
  p = loop.build(c, jax.devices()[:1], load_data=False).paradigm
  assert p.given_frames() == 3 and p.model_shape[0] == 3 and p.image_shape[0] == FRAMES


@pytest.mark.slow  # the default tier's budget: inflation itself: test_video_tokenizer_nets.py (default)
def test_inflate_from_a_2d_run_equals_inflate_params(fake_fmnist_dir, data_dir, tmp_path):
  c2 = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "vq", gan=False)
  c2.model = ml_collections.ConfigDict(dict(
      inflation.image_fields(NETS), name="vqgan", bottleneck="vq", embed_dim=4,
      codebook_size=16, code_dim=4))
  wd2 = init_only_run(c2, str(tmp_path / "tok2d"))
  tok2 = tok_base.Tokenizer.from_workdir(wd2)
  c3 = video_config(fake_fmnist_dir, data_dir, "lfq")
  c3.model.inflate_from = wd2
  exp = loop.build(c3, jax.devices()[:1], load_data=False)
  ae3 = jax.device_get(exp.init_state().params["autoencoder"])
  for net in ("encoder", "decoder"):
    want = inflation.inflate_params(tok2.params[net], ae3[net])
    jax.tree.map(np.testing.assert_array_equal, ae3[net], want)
  # (inflate_params makes a one-frame video go through the 3D nets as the image through
  # the 2D ones: tests/test_video_tokenizer_nets.py.)
  # Sizes that do not inflate: the fields that differ, named.
  with pytest.raises(ConfigError, match=r"channels: 8 there, 16 here"):
    inflation.inflate_run(wd2, ae3, dict(NETS, channels=16), 1)


def test_config_errors_say_what_to_do(fake_fmnist_dir, data_dir):
  def check(match, bottleneck="lfq", **fields):
    c = video_config(fake_fmnist_dir, data_dir, bottleneck)
    for k, v in fields.items():
      section, name = k.split("__")
      c[section][name] = v
    with pytest.raises(ConfigError, match=match):
      validate(c)

  check(r"4-frame videos.*1 \+ 2 k frames \(3, 5, 7, 9.*config.data.num_frames",
        data__num_frames=4)
  check(r"embed_dim=4 .* log2\(config.model.codebook_size=32\) = 5", model__codebook_size=32)
  check("power of two", model__codebook_size=24)
  check("2D 'conv' autoencoder", model__arch="conv", model__temporal_downsample=None)
  check("as_video", data__name="fashion_mnist", data__pp="pad(32)|scale(-1, 1)")
  check("perceptual='lpips'", "kl", paradigm__perceptual="classifier",
        paradigm__perceptual_weight=0.1)
  c2 = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "vq", gan=False)
  c2.model.inflate_from = "/somewhere"
  with pytest.raises(ConfigError, match="inflate_from.*'causal3d' variant"):
    validate(c2)
