"""Inference without the training data (issue 20): the Python API (`jaxgen.load`),
`jaxgen sample` and tokenizers on a workdir whose data is gone, and `jaxgen info` on the
shipped configs with nothing read, loaded or trained."""

import glob
import json
import os
import shutil
import time

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen import cli
from jaxgen import config as config_lib
from jaxgen import generate
from jaxgen import info
from jaxgen.eval import classifier
from jaxgen.tokenizers import base as tok_base
from jaxgen.train import checkpoint, loop

from helpers import ROOT, tiny_config

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) != "common.py")


def _point_nowhere(data, root):
  """Points a config's (or stored config's) data at directories that do not exist."""
  data.update(data_dir=os.path.join(root, "no_tfds"), source_dir=os.path.join(root, "no_idx"))


def _checkpointed_run(config, workdir):
  """A workdir as `jaxgen train` leaves it (config.json, a checkpoint of step 1) whose
  stored config points at training data that does not exist. The state holds random
  host arrays of the run's shapes: nothing to compile (not even ``init``), no data."""
  _point_nowhere(config.data, workdir)
  exp = loop.build_abstract(config, jax.devices()[:1])
  rng = np.random.default_rng(0)
  state = jax.tree.map(
      lambda a: (rng.normal(0, 0.1, a.shape).astype(a.dtype)
                 if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, a.dtype)),
      exp.abstract_state)
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  ckpt.save(1, state, config=config, force=True)
  ckpt.close()
  checkpoint.write_config(workdir, config)
  return workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return _checkpointed_run(tiny_config("", ""), str(tmp_path_factory.mktemp("api") / "run"))


def test_load_and_sample_without_training_data(run_dir, tmp_path, one_device):
  run = jaxgen.load(run_dir, devices=one_device)
  assert isinstance(run, jaxgen.Run) and run.step == 1 and run.config.model.name == "dit"
  assert run.image_shape == (32, 32, 1) and run.num_classes == 10
  images, labels = run.sample(num=4, seed=0, steps=2)
  assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 1)
  np.testing.assert_array_equal(labels, [0, 1, 2, 3])
  again, _ = run.sample(num=4, seed=0, steps=2)
  np.testing.assert_array_equal(again, images)  # same seed, same images
  png = run.save(str(tmp_path / "s.npz"), images, labels)
  assert os.path.isfile(png) and np.load(tmp_path / "s.npz")["arr_0"].shape == images.shape
  with pytest.raises(ValueError, match="no tokenizer"):
    run.encode(images)


def test_cli_sample_without_training_data(run_dir, tmp_path, monkeypatch):
  load_run, seen = generate.load_run, {}

  def on_one_device(*args, **kwargs):  # the program of the test above: compiled once
    seen.update(kwargs)
    return load_run(*args, devices=jax.devices()[:1], **kwargs)

  monkeypatch.setattr(generate, "load_run", on_one_device)
  out = str(tmp_path / "a.npz")
  assert cli.main(["sample", "--workdir", run_dir, "--num", "4", "--steps", "2",
                   "--batch-size", "4", "--out", out]) == 0
  assert seen["data"] is False and np.load(out)["arr_0"].shape == (4, 32, 32, 1)


def test_tokenizer_encode_decode_without_training_data(vq_run, tmp_path):
  """A copy of the session's tiny VQ run (its programs, on all devices and a batch of
  50, are test_tokenizer's: compiled once) whose data is gone."""
  wd = str(tmp_path / "vq")
  shutil.copytree(vq_run[0], wd)
  with open(os.path.join(wd, "config.json")) as f:
    stored = json.load(f)
  _point_nowhere(stored["data"], str(tmp_path))
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(stored, f)
  run = jaxgen.load(wd)
  assert run.params_name == "raw" and run.image_shape == (32, 32, 1)
  x = np.random.default_rng(0).uniform(-1, 1, (50, 32, 32, 1)).astype(np.float32)
  codes = run.encode(x)
  assert codes.shape == (50, 8, 8) and run.tokenizer.vocab_size == 32
  decoded = run.decode(codes)
  assert decoded.dtype == np.uint8 and decoded.shape == x.shape
  with pytest.raises(ValueError, match="reconstructs"):
    run.sample(num=2)


@pytest.fixture
def nothing_loaded(monkeypatch):
  """Fails a test that loads a tokenizer or trains (or loads) a classifier."""
  def refuse(*args, **kwargs):
    raise AssertionError("jaxgen info loaded weights or trained")
  monkeypatch.setattr(classifier, "load_or_train", refuse)
  monkeypatch.setattr(tok_base.Tokenizer, "from_workdir", refuse)


# One config per way info used to fail (and the command on one more: code files
# without tokens.json, VAR's scales): a tokenizer run that does not exist, a
# tokenizer's perceptual net (not built: neither the Fashion-MNIST classifier, trained
# on first use, nor LPIPS, whose weights training needs; the full loop has both).
@pytest.mark.parametrize("name,overrides", [
    ("fmnist_token_t2i", []),
    ("fmnist_vqgan", [("paradigm.perceptual", "lpips"), ("paradigm.perceptual_weights", "")])])
def test_info_reads_nothing(name, overrides, nothing_loaded):
  del nothing_loaded
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", name + ".py"))
  out = info.model_info(config_lib.apply_overrides(config, overrides))
  assert out["params"] > 0 and out["flops_per_example"] > 0


def test_info_command_notes_what_token_models_rest_on(nothing_loaded, tmp_path, capsys):
  del nothing_loaded
  assert cli.main(["info", "--config", os.path.join(ROOT, "configs", "fmnist_var.py"),
                   f"--config.data.data_dir={tmp_path / 'no_codes'}"]) == 0
  out = capsys.readouterr().out
  assert "on ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8))" in out
  assert "130 tokens of 512 (the tokenizer is not loaded)" in out
  assert "10 classes of config.data.source_dataset='fashion_mnist'" in out


@pytest.mark.slow
def test_info_on_every_config(nothing_loaded):
  del nothing_loaded
  t0 = time.perf_counter()
  for path in CONFIGS:
    out = info.model_info(config_lib.load_config_file(path))
    assert out["params"] > 0, path
  print(f"info on {len(CONFIGS)} configs: {time.perf_counter() - t0:.1f} s")
