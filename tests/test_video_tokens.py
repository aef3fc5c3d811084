"""Masked and autoregressive transformers over a causal video tokenizer's (T', h, w)
codes: MaskGIT decoding over a (t, h, w) grid equals the image decoder on the flattened
grid, the MaskGIT loss on video codes falls, samples (with given first frames and CFG)
decode through the frozen tokenizer to (B, T, H, W, C) videos, KV-cached raster AR
equals full recomputation on a video grid with factorised positions, and a 2-D
grid_size on video codes is refused with what to set; MAGE takes video codes too.

Cost: one-block transformers (the image tests cover depth), the tiny causal LFQ
tokenizer of tests/helpers.py (5 x 16 x 16 clips -> (3, 8, 8) codes of 16) as a frozen
`Tokenizer` with random weights (nothing trained, initialised or saved: its loading
from a run is test_video_tokenizer.py's), codes written as `jaxgen tokenize` writes
them; one compile per program.
"""

import json

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (VIDEO_FRAMES, VIDEO_LATENT, VIDEO_SIZE, tiny_token_config,
                     video_tokenizer_config)
from jaxgen.config import ConfigError, validate
from jaxgen.data import datasets
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base
from jaxgen.tokenizers import precompute
from jaxgen.train import loop

V = 16                      # the tiny LFQ tokenizer's 2^4 codes
N = int(np.prod(VIDEO_LATENT))


@pytest.fixture(scope="module")
def video_codes(tmp_path_factory):
  """Random (N, 3, 8, 8) codes in the layout of `jaxgen tokenize` (its tokens.json
  names no tokenizer run: training on codes needs none). Each clip's codes follow its
  label (code ``label + t`` at latent frame t, a tenth of them random), so the model
  has something to learn."""
  out = tmp_path_factory.mktemp("video_codes")
  rng = np.random.default_rng(0)
  splits = {"train": 16, "test": 8}
  for split, n in splits.items():
    labels = rng.integers(0, 10, n).astype(np.int32)
    t = np.arange(VIDEO_LATENT[0])[None, :, None, None]
    codes = np.broadcast_to((labels[:, None, None, None] + t) % V, (n,) + VIDEO_LATENT)
    noise = rng.integers(0, V, codes.shape)
    codes = np.where(rng.uniform(size=codes.shape) < 0.1, noise, codes).astype(np.int32)
    np.save(out / f"{split}_codes.npy", codes)
    np.save(out / f"{split}_labels.npy", labels)
  meta = dict(kind="lfq", code_shape=list(VIDEO_LATENT), vocab_size=V,
              grid_shape=list(VIDEO_LATENT), latent_scale=1.0, tokenizer_workdir=None,
              source_dataset="moving_fashion_mnist", num_classes=10,
              class_names=[str(i) for i in range(10)], splits=splits)
  (out / precompute.META).write_text(json.dumps(meta))
  return str(out)


@pytest.fixture(scope="module")
def video_tokenizer(fake_fmnist_dir, data_dir):
  """The tiny causal LFQ video tokenizer with random weights (N(0, 0.2^2); its
  quantizer state zero), as a frozen `Tokenizer`."""
  config = video_tokenizer_config(fake_fmnist_dir, data_dir)
  validate(config)  # fills the model's defaults
  ae, image_shape = tok_base.build_autoencoder(config, datasets.describe(config.data))
  params, state = flax.linen.meta.unbox(tok_base.autoencoder_shapes(ae, image_shape))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype),
                        params)
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  return tok_base.Tokenizer(config, ae, image_shape, params, state)


def _video_config(paradigm, codes_dir, **model):
  c = tiny_token_config(paradigm, codes_dir, grid=VIDEO_LATENT, codebook_size=V)
  c.model.update(model)
  return c


def _shapes_only(paradigm, grid, **model):
  """A token paradigm over a ``grid`` of 16 codes without code files or tokenizer."""
  c = tiny_token_config(paradigm, "", grid=grid, codebook_size=V)
  c.data.code_shape = tuple(grid)
  c.model.update(model)
  return loop.build(c, jax.devices()[:1], load_data=False).paradigm


@pytest.fixture(scope="module")
def maskgit_video(video_codes):
  """The MaskGIT experiment on the video codes (factorised positions, the default)
  and initial parameters (a host copy: the train step donates its state)."""
  c = _video_config("maskgit", video_codes, depth=1)
  c.optim.update(lr=3e-3, warmup_steps=1)
  exp = loop.build(c, jax.devices()[:1])
  return exp, jax.device_get(exp.init_state().params)


def test_maskgit_decoding_over_thw_equals_the_image_decoder_on_the_flat_grid():
  """With one position table (video_positions="full") the video model is the image
  model of a flattened grid: the same parameters, labels, guidance and key decode the
  same tokens, which are the (t, h, w) grid in t-major order."""
  video = _shapes_only("maskgit", VIDEO_LATENT, video_positions="full", depth=1)
  image = _shapes_only("maskgit", (VIDEO_LATENT[0] * VIDEO_LATENT[1], VIDEO_LATENT[2]),
                       depth=1)
  assert video.is_video and not image.is_video and video.num_tokens == image.num_tokens
  params = jax.eval_shape(image.init_params, jax.random.PRNGKey(0))
  chex.assert_trees_all_equal_shapes(
      params, jax.eval_shape(video.init_params, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)  # any weights: sharp enough that draws follow context
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype),
                        flax.linen.meta.unbox(params))
  labels = jnp.array([0, 3, 10, 7], jnp.int32)     # 10 = the null class
  kw = dict(cfg_scale=2.0, cfg_schedule="linear", top_k=8)
  decode = lambda p: jax.jit(lambda w, r: p.sample_tokens(w, r, labels, **kw))
  a = np.asarray(decode(video)(params, jax.random.PRNGKey(1)))
  b = np.asarray(decode(image)(params, jax.random.PRNGKey(1)))
  chex.assert_shape(a, (4, N))
  np.testing.assert_array_equal(a, b)
  assert (a >= 0).all() and (a < V).all()
  assert len(np.unique(a)) > 4  # drawn, not a constant


def test_maskgit_on_video_codes_trains_with_factorised_positions(maskgit_video):
  exp, params = maskgit_video
  p = exp.paradigm
  pos = params["position_embedding"]
  chex.assert_shape(pos, (1 + VIDEO_LATENT[1] * VIDEO_LATENT[2], 32))  # prefix + h w
  chex.assert_shape(params["temporal_embedding"], (VIDEO_LATENT[0], 32))
  state = exp.init_state()
  batch = next(loop.make_data_iterator(exp))
  assert batch["codes"].shape == (8,) + VIDEO_LATENT
  step = loop.make_train_step(exp)[0]
  losses = []
  for _ in range(8):
    state, m = step(state, mesh_lib.global_batch(batch, exp.mesh))
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  assert p.codes(batch).shape == (8, N)


def test_samples_from_given_first_frames_decode_to_videos(maskgit_video, video_tokenizer):
  """The first frame (a causal tokenizer encodes it alone as the first latent frame)
  gives the first 8 x 8 codes, kept through decoding with CFG; the codes decode
  through the frozen tokenizer to (B, T, H, W, C) videos."""
  exp, params = maskgit_video
  p = type(exp.paradigm)(exp.config, exp.dataset, tokenizer=video_tokenizer)
  assert p.image_shape == (VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 1)
  frames = jax.random.uniform(jax.random.PRNGKey(0), (4, 1, VIDEO_SIZE, VIDEO_SIZE, 1),
                              minval=-1.0, maxval=1.0)
  labels = jnp.array([1, 2, 3, 10], jnp.int32)

  @jax.jit
  def run(params, rng):
    known = p.known_from_frames(frames)
    tokens = p.sample_tokens(params, rng, labels, known=known, cfg_scale=2.0)
    return known, tokens, p.decode_images(tokens)

  known, tokens, videos = run(params, jax.random.PRNGKey(2))
  first = VIDEO_LATENT[1] * VIDEO_LATENT[2]
  assert (np.asarray(known[:, :first]) < V).all()
  assert (np.asarray(known[:, first:]) == p.mask_id).all()
  np.testing.assert_array_equal(tokens[:, :first], known[:, :first])
  assert (np.asarray(tokens) < V).all()
  chex.assert_shape(videos, (4, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 1))
  chex.assert_type(videos, jnp.float32)
  assert float(jnp.abs(videos).max()) <= 1.0
  # The composed entry points (traced only: the programs above are what they run).
  out = jax.eval_shape(lambda r: p.sample_from_frames(params, r, labels, frames),
                       jax.random.PRNGKey(0))
  chex.assert_shape(out, (4, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 1))
  out = jax.eval_shape(lambda r: p.sample(params, r, labels), jax.random.PRNGKey(0))
  chex.assert_shape(out, (4, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 1))
  with pytest.raises(ValueError, match=r"encode to a \(3, 8, 8\) grid.*fewer frames"):
    jax.eval_shape(p.known_from_frames, jnp.zeros((1, VIDEO_FRAMES, 16, 16, 1)))


def test_kv_cached_raster_ar_equals_full_recomputation_on_a_video_grid():
  """t-major raster AR over a (3, 4, 4) grid with factorised positions: the KV-cached
  decoder (positions gathered at the cache index) draws what full recomputation draws,
  with filters and CFG."""
  p = _shapes_only("autoregressive", (3, 4, 4), depth=1)  # deeper caches: the image tests
  assert p.model.factorized
  rng = np.random.default_rng(0)  # any weights: sharp enough that draws follow context
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype),
                        flax.linen.meta.unbox(jax.eval_shape(p.init_params,
                                                             jax.random.PRNGKey(0))))
  chex.assert_shape(params["temporal_embedding"], (3, 32))
  labels = jnp.array([0, 4, 10], jnp.int32)
  kw = dict(temperature=0.8, top_k=8, top_p=0.9, cfg_scale=2.5)

  @jax.jit
  def both(params, rng):
    return (p.sample_tokens(params, rng, labels, **kw),
            p.sample_tokens_uncached(params, rng, labels, **kw))

  a, b = map(np.asarray, both(params, jax.random.PRNGKey(4)))
  chex.assert_shape(a, (3, 48))
  np.testing.assert_array_equal(a, b)
  assert (a >= 0).all() and (a < V).all()


def test_mage_takes_video_codes(video_codes, video_tokenizer):
  """MAGE (one learned position per token) on the same codes: its loss and its
  sampling (from given first frames too) trace to the right shapes (not compiled)."""
  exp = loop.build(_video_config("mage", video_codes), jax.devices()[:1])
  p = type(exp.paradigm)(exp.config, exp.dataset, tokenizer=video_tokenizer)
  params = jax.eval_shape(p.init_params, jax.random.PRNGKey(0))
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), p.example_batch(4))
  assert batch["codes"].shape == (4,) + VIDEO_LATENT
  loss, _ = jax.eval_shape(lambda w, r: p.loss(w, batch, r), params, jax.random.PRNGKey(0))
  chex.assert_shape(loss, ())
  frames = jnp.zeros((4, 1, VIDEO_SIZE, VIDEO_SIZE, 1))
  out = jax.eval_shape(lambda w, r: p.sample_from_frames(w, r, jnp.arange(4), frames,
                                                         cfg_scale=2.0),
                       params, jax.random.PRNGKey(0))
  chex.assert_shape(out, (4, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 1))


def test_a_2d_grid_size_on_video_codes_is_refused(video_codes):
  codes = video_codes
  validate(_video_config("maskgit", codes))  # the matching one
  for paradigm in ("maskgit", "autoregressive"):
    bad = tiny_token_config(paradigm, codes, grid=(8, 8), codebook_size=V)
    with pytest.raises(ConfigError, match=r"\(3, 8, 8\) grid of 16 codes.*grid_size="
                       r"\(8, 8\).*set a 3-axis config.model.grid_size=\(T', h, w\)"):
      validate(bad)
  with pytest.raises(ConfigError, match=r"grid_size=\(1, 3, 8, 8\) must be an image's"):
    validate(_video_config("maskgit", codes, grid_size=(1, 3, 8, 8)))
  with pytest.raises(ConfigError, match="video_positions='space'; use one of factorized"):
    validate(_video_config("maskgit", codes, video_positions="space"))
