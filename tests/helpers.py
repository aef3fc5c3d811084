"""Test helpers with no side effects on JAX (usable from worker subprocesses)."""

import gzip
import os
import struct
import sys

import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))


def subprocess_env(**env) -> dict:
  """``os.environ`` for a jaxgen subprocess of a test (a launcher, a multi-host
  worker): without the caller's XLA_FLAGS (a device count of its own would clash),
  except the compile-time flag conftest.py sets; ``env`` on top."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "fusion_emitters" in f]
  return dict(os.environ, XLA_FLAGS=" ".join(flags), **env)


def users_emitters() -> dict:
  """``compiler_options`` for ``jax.jit`` that compile with XLA's default CPU fusion
  emitters, as users' programs are, where conftest.py turned them off for compile time:
  for a test whose property is bitwise (two formulations that agree bit for bit in
  the users' build, e.g. a KV cache and full recomputation drawing the same tokens at
  top-p boundaries of near-uniform logits). ``{}`` where they are already on."""
  if os.environ.get("JAXGEN_TEST_CLASSIC_EMITTERS") == "1":
    return {"xla_cpu_use_fusion_emitters": True}
  return {}


def write_idx(path, array):
  """Writes a gzipped IDX file (uint8 data)."""
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
      ">" + "I" * array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def synthetic_fmnist(n, seed):
  """Class-dependent 28x28 images: class k is a bright bar at row 2k+4 plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
  for i, k in enumerate(labels):
    images[i, 2 * k + 4:2 * k + 7, 4:24] = 220
  return images, labels


def tiny_config(source_dir, data_dir, model="dit", **train):
  """A complete config with a tiny model that compiles and runs in seconds."""
  import common  # configs/common.py
  c = common.base_config()
  c.data.source_dir = source_dir
  c.data.data_dir = data_dir
  if model == "dit":
    c.model = ml_collections.ConfigDict(dict(
        name="dit", variant=None, depth=2, hidden_size=32, num_heads=2, patch_size=4,
        mlp_ratio=2.0, scan_blocks=False))
  else:
    c.model = ml_collections.ConfigDict(dict(
        name="unet", variant="tiny", channels=8, channel_mult=(1, 2), num_res_blocks=1,
        attn_resolutions=(16,), head_channels=8))
  c.train.batch_size = 8
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.ckpt_every = 3
  c.train.sample_every = 0
  c.optim.warmup_steps = 2
  c.optim.ema_decay = 0.9
  c.sample.steps = 3
  c.sample.batch_size = 8
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  for k, v in train.items():
    c.train[k] = v
  return c


def write_tiny_config_file(directory, source_dir, data_dir) -> str:
  """Writes ``directory/tiny.py``, the `tiny_config` of a DiT (``tiny.py:unet``: of a
  U-Net) with 4 steps, a data-parallel mesh over all devices and its classifier cache in
  ``directory/clf``; returns its path (for ``--config``)."""
  path = os.path.join(directory, "tiny.py")
  with open(path, "w") as f:
    f.write("import sys\n"
            f"sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
            "from helpers import tiny_config\n\n"
            "def get_config(arg=None):\n"
            f"  c = tiny_config({source_dir!r}, {data_dir!r}, arg or 'dit', num_steps=4)\n"
            "  c.mesh.data = -1\n"
            f"  c.eval.classifier_dir = {os.path.join(directory, 'clf')!r}\n"
            "  return c\n")
  return path


def tiny_tokenizer_config(source_dir, data_dir, bottleneck="vq", gan=True, **train):
  """A complete tokenizer config with tiny nets (f2 -> 16x16 codes of 32x32 images)."""
  import common  # configs/common.py
  c = common.tokenizer_config()
  c.data.source_dir = source_dir
  c.data.data_dir = data_dir
  model = dict(name="vqgan", arch="conv", channels=8, channel_mult=(1, 2),
               num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8,
               bottleneck=bottleneck)
  if bottleneck == "vq":
    model.update(codebook_size=32, code_dim=8, l2_normalize=True, restart_dead=True)
  elif bottleneck == "msvq":
    model.update(codebook_size=32, code_dim=8, scales=(1, 2, 4, 8, 16), num_phi=2)
  else:
    model.update(name="kl_vae", embed_dim=4)
  c.model = ml_collections.ConfigDict(model)
  if gan:
    c.paradigm.disc_weight = 0.5
    c.paradigm.disc_channels = 8
    c.paradigm.disc_layers = 2
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.optim.warmup_steps = 1
  c.eval.classifier_dir = os.path.join(data_dir, "classifiers")
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  for k, v in train.items():
    c.train[k] = v
  return c


# The tiny causal 3D video tokenizer of the video tests: f 2 in space, ft 2 in time, so
# (5, 16, 16, 1) clips of Moving Fashion-MNIST -> (3, 8, 8) codes (LFQ: 2^4 of them).
VIDEO_NETS = dict(arch="causal3d", channels=8, channel_mult=(1, 2), num_res_blocks=0,
                  attn_resolutions=(), mid_attn=False, temporal_downsample=(True,),
                  z_channels=4)
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_LATENT = 5, 16, (3, 8, 8)


def video_tokenizer_config(source_dir, data_dir, bottleneck="lfq", gan=False):
  """A tiny causal 3D tokenizer on 16x16 Moving Fashion-MNIST clips of 5 frames."""
  import common  # configs/common.py
  c = common.tokenizer_config()
  c.data = ml_collections.ConfigDict(dict(
      name="moving_fashion_mnist", source_dir=source_dir, data_dir=data_dir,
      pp="scale(-1, 1)", train_split="train", eval_split="test", image_size=VIDEO_SIZE,
      object_size=8, max_speed=2, num_frames=VIDEO_FRAMES, num_train=16, num_test=8))
  model = dict(VIDEO_NETS, name="causal_vqgan", bottleneck=bottleneck, embed_dim=4)
  if bottleneck == "lfq":
    model.update(codebook_size=16, entropy_temperature=0.1, entropy_anneal_steps=4,
                 lfq_norm="rms")
  else:
    model.update(name="causal_kl_vae")
    c.paradigm.bottleneck_weight = 1e-4
  c.model = ml_collections.ConfigDict(model)
  if gan:  # a constant GAN weight (the adaptive one is the image path's, tested there)
    c.paradigm.update(disc_weight=0.5, disc_channels=8, disc_layers=1, disc_start=0,
                      adaptive_weight=False)
  c.optim.update(lr=3e-3, warmup_steps=1, eps=1e-3)
  c.train.update(batch_size=8, num_steps=10, log_every=5, ckpt_every=5, sample_every=0)
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  return c


def tiny_token_config(paradigm, codes_dir, grid=(8, 8), codebook_size=32,
                      classifier_dir="", **train):
  """A complete MaskGIT / MAGE / autoregressive config with a tiny transformer over
  pre-computed codes."""
  import common  # configs/common.py
  c = common.token_config(paradigm)
  c.data.data_dir = codes_dir
  c.eval.classifier_dir = classifier_dir
  c.model.variant = None
  if paradigm == "var":  # ``grid`` is the scale schedule (conftest.msvq_run's)
    c.model.scales = tuple(grid) if grid != (8, 8) else (1, 2, 3, 4, 6, 8)
    c.model.code_dim = 8
  else:
    c.model.grid_size = tuple(grid)
  c.model.codebook_size = codebook_size
  sizes = dict(depth=2, hidden_size=32, num_heads=2)
  if paradigm in ("maskgit", "autoregressive"):
    sizes.update(mlp_dim=64)
  elif paradigm == "var":
    sizes.update(drop_path_rate=0.0)
  else:
    sizes.update(decoder_depth=1, decoder_hidden_size=32, decoder_num_heads=2)
  c.model.update(sizes)
  if paradigm != "var":
    c.model.dropout = 0.0
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.optim.warmup_steps = 1
  c.sample.batch_size = 8
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  for k, v in train.items():
    c.train[k] = v
  return c


# Text length and width of the "tiny_random" test encoder in the text-to-image tests.
L, D = 16, 32


def t2i_config(source_dir, data_dir, cap_dir, emb_dir, mode="cross_attention",
               encode_in_step=False, ratio=0.5):
  """The tiny DiT config on captioned synthetic data with the tiny_random encoder."""
  import common  # configs/common.py
  c = tiny_config(source_dir, data_dir)
  c.data = common.captioned_data(cap_dir, emb_dir, ratio, pad=32)
  c.data.source_dir, c.data.data_dir = source_dir, data_dir
  c.text = common.text_fields("tiny_random", max_length=L, width=D)
  c.text.encode_in_step = encode_in_step
  c.model.text_conditioning = mode
  return c


def image_token_config(paradigm, tokenizer_dir, source_dir, data_dir, **kw):
  """`tiny_token_config` on images encoded in the step by the frozen tokenizer of
  ``tokenizer_dir`` (no pre-computed codes)."""
  import common  # configs/common.py
  c = tiny_token_config(paradigm, "", **kw)
  c.tokenizer.workdir = tokenizer_dir
  c.data = common.base_config().data
  c.data.source_dir, c.data.data_dir = source_dir, data_dir
  return c


def init_only_run(config, *workdirs):
  """Workdirs holding ``config``'s freshly initialised state as checkpoint 0 (with its
  manifest and config.json): a frozen network of a given size without training it. The
  k-th workdir's parameters are scaled by 1 + k / 100 (same shapes, other weights).
  Returns the first workdir."""
  import jax
  from jaxgen.train import checkpoint, loop
  exp = loop.build(config, jax.devices()[:1], load_data=False)
  state = exp.init_state()
  for k, workdir in enumerate(workdirs):
    params = jax.tree.map(lambda x: x * (1 + k / 100), state.params)
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    ckpt.save(0, state.replace(params=params, ema_params=params), config=config, force=True)
    ckpt.close()
    checkpoint.write_config(workdir, config)
  return workdirs[0]


def text_token_config(paradigm, tokenizer_dir, source_dir, data_dir, cap_dir, emb_dir,
                      grid=(8, 8)):
  """`tiny_token_config` made text-to-image: captioned synthetic images encoded in the
  step by the tokenizer of ``tokenizer_dir``, conditioned on tiny_random text."""
  import common  # configs/common.py
  c = tiny_token_config(paradigm, "", grid=grid)
  c.tokenizer.workdir = tokenizer_dir
  c.data = common.captioned_data(cap_dir, emb_dir, 0.5, pad=32)
  c.data.source_dir, c.data.data_dir = source_dir, data_dir
  c.text = common.text_fields("tiny_random", max_length=L, width=D)
  return c


def run_steps(config, devices, n):
  """Builds ``config`` on ``devices`` and runs ``n`` train steps on its data:
  ``(experiment, state, losses)``."""
  from jaxgen.sharding import mesh as mesh_lib
  from jaxgen.train import loop
  exp = loop.build(config, devices)
  state = exp.init_state()
  step_fn, _ = loop.make_train_step(exp)
  it = loop.make_data_iterator(exp)
  losses = []
  for _ in range(n):
    state, m = step_fn(state, mesh_lib.global_batch(next(it), exp.mesh))
    losses.append(float(m["loss"]))
  return exp, state, losses


def check_sharded_step_equals_one_device(make, n: int = 2, mesh=None):
  """Runs ``n`` train steps of the config ``make()`` on one device and on a 2x4
  (data x fsdp, or ``mesh``: a dict of sizes) mesh of the 8 fake devices; the losses
  and the parameters must agree.
  Adam's eps is raised to 1e-3 in both, so that parameters whose true gradient is 0 do
  not turn float noise into lr-sized steps: the comparison is of the real updates."""
  import jax
  c1, c8 = make(), make()
  c8.mesh = ml_collections.ConfigDict(mesh or dict(data=2, fsdp=4, tensor=1))
  for c in (c1, c8):
    c.optim.eps = 1e-3
  _, s1, l1 = run_steps(c1, jax.devices()[:1], n)
  _, s8, l8 = run_steps(c8, jax.devices(), n)
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
               jax.device_get(s1.params), jax.device_get(s8.params))


def jaxpr_eqns(jaxpr):
  """Every equation of a jaxpr and of its sub-jaxprs (jit, custom_vjp, scan, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from jaxpr_eqns(inner)
