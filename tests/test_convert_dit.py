"""Official DiT checkpoints (jaxgen.convert.dit): a state dict the official code saved
(tests/data/make_dit_forward_reference.py: facebookresearch/DiT's models.DiT at a small
size, random weights) is read without torch and converted; jaxgen's DiT then gives the
official model's outputs to 1e-4 (fp32). A wrong shape, a missing or an extra tensor is
an error naming the key and both shapes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import dit as dit_convert
from jaxgen.convert import torch_pickle

DATA = os.path.join(ROOT, "tests", "data")
CKPT = os.path.join(DATA, "dit_tiny_official.pt")


def test_converted_dit_equals_the_official_model():
  fields, params = dit_convert.load_dit(CKPT, num_heads=2)
  assert (fields["hidden_size"], fields["depth"], fields["patch_size"], fields["input_size"],
          fields["in_channels"], fields["num_classes"], fields["learn_sigma"]) == (
              32, 2, 2, 8, 4, 10, True)
  module = dit_convert.build_module(fields)
  with np.load(os.path.join(DATA, "dit_tiny_official_outputs.npz")) as f:
    x, t, y, want = f["x"], f["t"], f["y"], f["out"]
  got = jax.jit(lambda p, x, t, y: module.apply({"params": p}, x, t, y))(
      params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.float32),
      jnp.asarray(y, jnp.int32))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-4, rtol=0)
  assert float(np.abs(want).mean()) > 0.05  # a real output, not the zero-init one



@pytest.mark.parametrize("solver", ["ddpm", pytest.param("ddim", marks=pytest.mark.slow)])
def test_converted_dit_samples_as_the_official_sampler(solver, monkeypatch):
  """The official sampling path (tests/data/make_dit_sampling_reference.py: DiT's
  ``create_diffusion("10")``, ``forward_with_cfg`` at 1.5 guiding 3 channels,
  ``p_sample_loop`` / ``ddim_sample_loop``, no clipping) and jaxgen's (the respaced
  process, `cfg.guided` on 3 channels as ``config.sample.cfg_channels=3``, the
  `samplers.diffusion` steps) give the same samples from the same noise and draws."""
  from jaxgen.losses import diffusion as dl
  from jaxgen.samplers import cfg as cfg_lib
  from jaxgen.samplers import diffusion as ds
  from jaxgen.samplers import loop
  fields, params = dit_convert.load_dit(CKPT, num_heads=2)
  module = dit_convert.build_module(fields)
  with np.load(os.path.join(DATA, "dit_sampling_reference.npz")) as f:
    ref = {k: f[k] for k in f.files}
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))  # noqa: E731
  draws = [nhwc(d) for d in ref["draws"]]
  monkeypatch.setattr(jax.random, "normal", lambda key, shape, dtype: draws.pop(0))
  net = lambda x, t, y: module.apply({"params": params}, x, t, y)  # noqa: E731
  guided = cfg_lib.guided(net, jnp.int32(fields["num_classes"]), float(ref["cfg_scale"]),
                          channels=3)
  labels = jnp.asarray(ref["labels"], jnp.int32)
  d = dl.GaussianDiffusion.create("linear", 1000).respace(int(ref["steps"]))
  got = ds.sample(lambda x, t: guided(x, t, labels), d, nhwc(ref["z"]), jax.random.PRNGKey(0),
                  solver=solver, learn_sigma=True, loop_fn=loop.run_loop_python)  # eager
  assert not draws or solver == "ddim"  # DDPM used all 10 recorded draws, DDIM none
  want = ref[solver]  # |x| up to ~500 (random weights): relative to the largest entry;
  # guiding all 4 channels instead of DiT's 3 is off by 2e-4 of it, float rounding 4e-7
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-5,
                             atol=1e-5 * float(np.abs(want).max()))

def _write(tmp_path, state):
  path = str(tmp_path / "ckpt.npz")
  np.savez(path, **state)
  return path


def test_wrong_missing_or_extra_tensors_are_named(tmp_path):
  state = torch_pickle.read_state_dict(CKPT)
  bad = dict(state)
  bad["blocks.1.mlp.fc1.weight"] = np.zeros((64, 32), np.float32)
  with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight has shape \(64, 32\), "
                     r"DiT \(width 32, depth 2\) expects \(128, 32\)"):
    dit_convert.load_dit(_write(tmp_path, bad), num_heads=2)
  missing = {k: v for k, v in state.items() if k != "final_layer.linear.bias"}
  with pytest.raises(ValueError, match="1 of its .* tensors are missing, e.g. "
                     r"final_layer\.linear\.bias"):
    dit_convert.load_dit(_write(tmp_path, missing), num_heads=2)
  extra = dict(state, **{"blocks.0.attn.extra.weight": np.zeros((2,), np.float32)})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. blocks\.0\.attn\.extra"):
    dit_convert.load_dit(_write(tmp_path, extra), num_heads=2)
  with pytest.raises(ValueError, match="none of the official DiT sizes"):
    dit_convert.load_dit(CKPT)  # width 32: the heads must be given
  with pytest.raises(ValueError, match="not an official DiT checkpoint"):
    dit_convert.load_dit(_write(tmp_path, {"w": np.zeros(3, np.float32)}))
  # A training checkpoint's ``args`` (an argparse.Namespace) is refused, not executed.
  import argparse, pickle, zipfile  # pylint: disable=g-import-not-at-top,multiple-imports
  with zipfile.ZipFile(tmp_path / "train.pt", "w") as z:
    z.writestr("train/data.pkl", pickle.dumps({"args": argparse.Namespace(lr=1e-4)}))
  with pytest.raises(ValueError, match="refusing to load global argparse.Namespace"):
    dit_convert.load_dit(str(tmp_path / "train.pt"))


def test_official_sizes_need_no_head_count():
  """The published sizes' widths give their heads (S 6, B 12, L 16, XL 16), and
  XL/2's fields (inferred from shapes only) build the 675M model."""
  state = {"x_embedder.proj.weight": np.zeros((1152, 4, 2, 2), np.float32),
           "final_layer.linear.weight": np.zeros((32, 1152), np.float32),
           "y_embedder.embedding_table.weight": np.zeros((1001, 1152), np.float32),
           "pos_embed": np.zeros((1, 256, 1152), np.float32),
           **{f"blocks.{i}.mlp.fc1.weight": np.zeros((4608, 1152), np.float32)
              for i in range(28)}}
  fields = dit_convert.infer_fields(state, "xl2")
  assert (fields["num_heads"], fields["depth"], fields["input_size"], fields["learn_sigma"],
          fields["num_classes"]) == (16, 28, 32, True, 1000)


def _kl_tokenizer(root, fake_fmnist_dir, data_dir):
  """A tiny f4 KL-VAE run (8x8x4 latents of the 32x32 images), initialised only."""
  from helpers import init_only_run, tiny_tokenizer_config
  c = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "kl", gan=False)
  c.model.channel_mult = (1, 2, 2)
  return init_only_run(c, str(root / "kl"))


def test_converted_run_holds_the_weights_and_the_papers_recipe(tmp_path):
  """`jaxgen convert --from dit` writes a run: step 0's parameters and EMA are the
  checkpoint's weights (read back), its config the paper's DDPM recipe with the
  checkpoint's sizes; without a tokenizer it says how to add one; errors are one line."""
  from jaxgen import cli
  from jaxgen.train import checkpoint
  wd = str(tmp_path / "dit")
  assert cli.main(["convert", "--from", "dit", "--ckpt", CKPT, "--out", wd,
                   "--source-dataset", "fashion_mnist", "--num-heads", "2"]) == 0
  _, params = dit_convert.load_dit(CKPT, num_heads=2)
  abstract = jax.eval_shape(lambda: params)
  ckpt = checkpoint.Checkpointer(wd, async_save=False)
  parts, step = ckpt.restore_newest_intact(None, parts={"params": abstract,
                                                        "ema_params": abstract})
  ckpt.close()
  assert step == 0
  for name in ("params", "ema_params"):
    jax.tree.map(np.testing.assert_array_equal, parts[name], params)
  c = checkpoint.read_config(wd)
  assert (c["paradigm"]["name"], c["paradigm"]["schedule"], c["model"]["learn_sigma"],
          c["model"]["hidden_size"], c["sample"]["solver"], c["sample"]["steps"],
          c["sample"]["cfg_scale"], tuple(c["data"]["code_shape"])) == (
              "diffusion", "linear", True, 32, "ddpm", 250, 1.5, (8, 8, 4))
  assert cli.main(["convert", "--from", "dit", "--ckpt", CKPT, "--out", wd]) == 2  # exists
  bad = str(tmp_path / "bad.pt")
  with open(bad, "wb") as f:
    f.write(b"not a checkpoint")
  assert cli.main(["convert", "--from", "dit", "--ckpt", bad, "--out",
                   str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_converted_dit_samples_through_the_cli(tmp_path, fake_fmnist_dir, data_dir):
  """With a tokenizer, the converted run loads as a trained one (its weights, its
  tokenizer recorded) and samples images through it (DDPM, 2 steps, CFG 1.5)."""
  from jaxgen import cli
  from jaxgen.generate import load_run
  tok = _kl_tokenizer(tmp_path, fake_fmnist_dir, data_dir)
  wd = str(tmp_path / "dit")
  assert cli.main(["convert", "--from", "dit", "--ckpt", CKPT, "--out", wd, "--tokenizer",
                   tok, "--source-dataset", "fashion_mnist", "--num-heads", "2"]) == 0
  exp, state, _ = load_run(wd, data=False)
  _, params = dit_convert.load_dit(CKPT, num_heads=2)
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, params)
  assert exp.paradigm.tokenizer is not None and exp.paradigm.model_shape == (8, 8, 4)
  assert os.path.isfile(os.path.join(wd, "frozen_networks.json"))
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", wd, "--num", "4", "--steps", "2", "--batch-size",
                   "4", "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape == (4, 32, 32, 1) and f["arr_0"].dtype == np.uint8
