"""The video DiT (jaxgen.models.video_dit) and the flow / diffusion paradigms on videos:
shapes, the factorised attention against a per-frame / per-position loop, the flow loss
on a fixed batch, sampling with CFG, given first frames, text captions of Moving
Fashion-MNIST, and the context-sharded step on 2x4 fake devices."""

import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from helpers import check_sharded_step_equals_one_device, tiny_config
from jaxgen.models import dit
from jaxgen.models import video_dit as vd
from jaxgen.nn import layers
from jaxgen.train import loop

SHAPE = (4, 8, 8, 1)  # T, H, W, C


def _module(attention, depth=2):
  return vd.VideoDiT(input_shape=SHAPE[:3], in_channels=1, patch_size=4, hidden_size=16,
                     depth=depth, num_heads=2, mlp_ratio=2.0, num_classes=3,
                     attention=attention)


def _inputs(b=2, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((b,) + SHAPE), jnp.float32),
          jnp.asarray(rng.uniform(0, 1000, b), jnp.float32),
          jnp.asarray(rng.integers(0, 3, b), jnp.int32))


def _params(module, inputs, seed=1):
  params = module.init(jax.random.PRNGKey(0), *inputs)["params"]
  # adaLN-Zero starts as the identity: perturb every weight so each block acts
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(params))))
  return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)


@pytest.mark.parametrize("attention", ["full", "factorised"])
def test_shapes_and_dtypes(attention):
  m = _module(attention)
  x, t, y = _inputs()
  out = jax.eval_shape(lambda: m.init_with_output(jax.random.PRNGKey(0), x, t, y)[0])
  chex.assert_shape(out, (2,) + SHAPE)
  chex.assert_type(out, jnp.float32)
  bf = vd.VideoDiT(input_shape=SHAPE[:3], in_channels=1, patch_size=2, temporal_patch=2,
                   hidden_size=16, depth=2, num_heads=2, attention=attention,
                   learn_sigma=True, dtype=jnp.bfloat16)
  out = jax.eval_shape(lambda: bf.init_with_output(jax.random.PRNGKey(0), x, t, y)[0])
  chex.assert_shape(out, (2,) + SHAPE[:3] + (2,))  # learn_sigma: 2C, float32 out
  chex.assert_type(out, jnp.float32)


def test_factorised_attention_equals_a_per_frame_and_per_position_loop():
  m = _module("factorised")
  x, t, y = inputs = _inputs()
  params = _params(m, inputs)
  got = jax.jit(m.apply)({"params": params}, *inputs)
  # The reference: the same pieces, the blocks applied one frame / one position at a time.
  b, (gt, gh, gw), d = 2, (4, 2, 2), 16
  apply = lambda mod, name, *a: mod.apply({"params": params[name]}, *a)  # noqa: E731

  @jax.jit
  def embed(x, t, y):
    tok = apply(layers.PatchEmbed(d, (1, 4, 4)), "x_embedder", x)
    c = (apply(layers.TimestepEmbedder(d), "t_embedder", t)
         + apply(layers.LabelEmbedder(3, d), "y_embedder", y))
    return tok.reshape(b, gt, gh * gw, d) + layers.sincos_2d(d, gh, gw)[None, None], c

  block = jax.jit(lambda name, x, c: apply(dit.DiTBlock(d, 2, 2.0), name, x, c),
                  static_argnums=0)  # one program of (2, 4, 16) tokens per block
  tok, c = embed(*inputs)
  tok = np.array(tok)
  for f in range(gt):  # spatial block: the tokens of frame f only
    tok[:, f] = block("blocks_0", tok[:, f], c)
  tok = tok + np.asarray(layers.sincos_1d(d, np.arange(gt, dtype=np.float64)))[None, :, None]
  for s in range(gh * gw):  # temporal block: position s across the frames only
    tok[:, :, s] = block("blocks_1", tok[:, :, s], c)
  final = jax.jit(lambda tok, c: vd.unpatchify(  # one program, not op by op
      apply(dit.FinalLayer((1, 4, 4), 1), "final_layer", tok, c), (gt, gh, gw), (1, 4, 4), 1))
  want = final(tok.reshape(b, -1, d), c)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Full attention, unlike one spatial block (the loop above), mixes frames.
  one = _module("full", depth=1)
  p1 = _params(one, inputs)
  run = jax.jit(lambda v: one.apply({"params": p1}, v, t, y))
  delta = np.abs(run(x.at[:, 2].add(1.0)) - run(x))
  assert delta[:, 2].max() > 1e-3 and delta[:, [0, 1, 3]].max() > 1e-6


def _video_config(fake_fmnist_dir, data_dir, paradigm="flow", **paradigm_fields):
  c = tiny_config(fake_fmnist_dir, data_dir)
  c.data = ml_collections.ConfigDict(dict(
      name="moving_fashion_mnist", data_dir=data_dir, source_dir=fake_fmnist_dir,
      pp="scale(-1, 1)", image_size=8, object_size=4, num_frames=4, max_speed=2,
      num_train=16, num_test=8, train_split="train", eval_split="test"))
  c.model = ml_collections.ConfigDict(dict(
      name="video_dit", variant=None, depth=2, hidden_size=16, num_heads=2, patch_size=4,
      mlp_ratio=2.0, attention="factorised"))
  if paradigm == "diffusion":
    import common  # configs/common.py
    c.paradigm = common.diffusion_paradigm(num_timesteps=100)
    c.sample = common.sample_section("diffusion", steps=3, solver="ddim", batch_size=8)
  c.paradigm.update(paradigm_fields)
  return c


@pytest.fixture(scope="module")
def flow_exp(fake_fmnist_dir, data_dir):
  return loop.build(_video_config(fake_fmnist_dir, data_dir, context_frames=2,
                                  context_dropout=True), jax.devices()[:1])


def test_flow_loss_falls_on_a_fixed_batch(flow_exp):
  p = flow_exp.paradigm
  assert p.image_shape == SHAPE and p.example_batch(8)["image"].shape == (8,) + SHAPE
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8,) + SHAPE), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  params = jax.tree.map(jnp.asarray, flow_exp.init_state().params)
  tx = optax.adam(1e-2)
  key = jax.random.PRNGKey(0)  # same noise, times and dropout each step

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(lambda q: p.loss(q, batch, key)[0])(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  opt, losses = tx.init(params), []
  for _ in range(20):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses[::5]


def test_given_frames_are_clean_in_training_and_exact_in_samples(flow_exp):
  p = flow_exp.paradigm
  x0, x_t = jnp.ones((6,) + SHAPE), jnp.zeros((6,) + SHAPE)
  kept, keep = p.context_input(x_t, x0, jax.random.PRNGKey(3), train=False)
  assert bool(keep.all()) and float(kept[:, :2].min()) == 1 and float(kept[:, 2:].max()) == 0
  # In training the frames go with the dropped labels (label_dropout 0.1: the same draw).
  p.conditioner.dropout = 0.5
  try:
    labels = p.conditioner.train_input({"label": jnp.zeros(64, jnp.int32)},
                                       jax.random.PRNGKey(4))
    big = jnp.ones((64,) + SHAPE)
    got, keep = p.context_input(jnp.zeros_like(big), big, jax.random.PRNGKey(4), True)
  finally:
    p.conditioner.dropout = 0.1
  np.testing.assert_array_equal(keep, labels != 10)
  np.testing.assert_array_equal(got[:, 0, 0, 0, 0], keep.astype(np.float32))
  assert 0 < int(keep.sum()) < 64
  # Sampling with CFG and given frames (kept exactly): test_jaxgen_sample_continues_...
  params = jax.tree.map(lambda a: a + 0.01, flow_exp.init_state().params)
  free = jax.jit(lambda r: p.sample(params, r, jnp.array([0, 3]), steps=2,
                                    cfg_scale=2.0))(jax.random.PRNGKey(5))
  chex.assert_shape(free, (2,) + SHAPE)  # context_dropout: also without given frames


def test_jaxgen_sample_continues_given_frames(fake_fmnist_dir, data_dir, tmp_path, capsys):
  """`jaxgen sample --given-frames test` continues the first 2 frames of the test videos
  (exactly kept, conditioned on their labels); a file of videos is cycled to --num;
  --format adm on a video run and given frames on a run without context_frames are one
  `jaxgen: error:` line each, before anything samples."""
  from helpers import init_only_run
  from jaxgen import cli, generate
  from jaxgen.data import datasets
  from jaxgen.eval import evaluate
  c = _video_config(fake_fmnist_dir, data_dir, context_frames=2, context_dropout=True)
  c.sample.update(steps=2, batch_size=3)
  wd = init_only_run(c, str(tmp_path / "run"))
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", wd, "--num", "3", "--given-frames", "test",
                   "--cfg-scale", "2", "--out", out]) == 0
  videos, labels = evaluate.load_samples(out, video=True)
  real, real_labels = datasets.load_arrays(datasets.get_dataset(c.data), "test", limit=3)
  chex.assert_shape(videos, (3,) + SHAPE)
  np.testing.assert_array_equal(videos[:, :2], real[:, :2])
  np.testing.assert_array_equal(labels, real_labels)
  assert videos[:, 2:].std() > 0
  np.savez(tmp_path / "v.npz", arr_0=real[:2], labels=np.array([4, 5]))
  exp, _, _ = generate.load_run(wd, data=False)
  frames, y = generate.given_frames(exp, str(tmp_path / "v.npz"), 3)
  np.testing.assert_allclose(frames, real[[0, 1, 0], :2] / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(y, [4, 5, 4])
  capsys.readouterr()
  for argv, said in ((["--format", "adm"], "--format adm writes images"),
                     (["--given-frames", "test", "--config.paradigm.context_frames=0",
                       "--config.paradigm.context_dropout=False"], "cannot continue given"),
                     (["--given-frames", "valid"], "give a split of")):
    assert cli.main(["sample", "--workdir", wd, "--num", "2"] + argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxgen: error:") and said in err[0], err

def test_diffusion_samples_videos_with_cfg(fake_fmnist_dir, data_dir):
  exp = loop.build(_video_config(fake_fmnist_dir, data_dir, "diffusion"),
                   jax.devices()[:1])
  p = exp.paradigm
  params = jax.tree.map(lambda a: a + 0.01, exp.init_state().params)
  batch = {"image": jnp.zeros((2,) + SHAPE), "label": jnp.array([1, 2])}
  loss, _ = jax.jit(p.loss)(params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss))
  out = jax.jit(lambda r: p.sample(params, r, jnp.array([0, 3]), cfg_scale=2.0))(
      jax.random.PRNGKey(1))
  chex.assert_shape(out, (2,) + SHAPE)
  assert np.isfinite(np.asarray(out)).all()


def test_captions_of_moving_fashion_mnist_condition_a_text_video_dit(fake_fmnist_dir,
                                                                       data_dir):
  import common  # configs/common.py
  c = _video_config(fake_fmnist_dir, data_dir)
  c.data.pp = "choose_caption(0.5)|scale(-1, 1)|drop('caption')"
  c.data.detailed_ratio = 0.5
  c.text = common.text_fields("tiny_random", max_length=16, width=32)
  c.text.encode_in_step = True
  c.model.text_conditioning = "cross_attention"
  c.model.depth = 1
  exp = loop.build(c, jax.devices()[:1])
  batch = next(loop.make_data_iterator(exp))
  assert batch["image"].shape == (8,) + SHAPE and batch["text_ids"].shape == (8, 16)
  params = exp.init_state().params
  loss, _ = jax.jit(exp.paradigm.loss)(params, jax.tree.map(jnp.asarray, batch),
                                       jax.random.PRNGKey(0))
  assert np.isfinite(float(loss))
  out = jax.jit(lambda r, cond: exp.paradigm.sample(params, r, cond, steps=1, cfg_scale=2.0))(
      jax.random.PRNGKey(1), exp.paradigm.conditioner.for_sampling(["a sandal moving left"]))
  chex.assert_shape(out, (1,) + SHAPE)


def test_context_sharded_forward_on_2x4_mesh_equals_one_device(fake_fmnist_dir, data_dir):
  """The cheap default check of sequence parallelism: the network on a data=2 x
  context=4 mesh (tokens split over "context" by the blocks' activation constraints)
  gives what one device gives; the whole train step is the slow test below."""
  from jaxgen.sharding import mesh as mesh_lib
  c = _video_config(fake_fmnist_dir, data_dir, context_frames=1)
  c.model.attention, c.model.depth = "full", 1
  c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=1, context=4, tensor=1))
  exp = loop.build(c, jax.devices())
  params = jax.tree.map(lambda a: a + 0.01, exp.init_state().params)
  x, t, y = _inputs(b=4)
  fwd = lambda q, x, t, y: exp.paradigm.network(q, x, t, y)  # noqa: E731
  with mesh_lib.activate(exp.mesh):
    xs = mesh_lib.global_batch({"x": np.asarray(x), "t": np.asarray(t),
                                "y": np.asarray(y)}, exp.mesh)
    sharded = jax.jit(fwd)(params, xs["x"], xs["t"], xs["y"])
    hlo = jax.jit(fwd).lower(params, xs["x"], xs["t"], xs["y"]).as_text()
  # the tokens really are split over "context" (not a constraint dropped for want of
  # an abstract mesh: mesh_lib.activate sets one)
  assert re.search(r'sharding_constraint.*\{"context"\}', hlo), "no context constraint"
  one = jax.jit(fwd)(jax.device_get(params), x, t, y)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(one), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_context_sharded_step_on_2x4_mesh_equals_one_device(fake_fmnist_dir, data_dir):
  def make():
    c = _video_config(fake_fmnist_dir, data_dir, context_frames=1)
    c.model.attention = "full"
    c.model.depth = 1
    return c
  check_sharded_step_equals_one_device(
      make, mesh=dict(data=2, fsdp=1, context=4, tensor=1))
