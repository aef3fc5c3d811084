"""Fault injection, bad inputs: each case of issue 21 item 6/7 (an input a user can get
wrong) ends in one ``jaxgen: error: ...`` line that says what is wrong and what to do,
with exit code 2, and nothing written. Config, source-directory and ``--samples``
errors stop before anything is compiled or evaluated; a damaged prepared-data cache
stops at its first read; non-finite samples stop sampling at the first bad chunk (exit
code 1) before the .npz is written. Every case runs ``jaxgen.cli.main`` in-process and
none trains (the evaluator and the trained run are stubbed), so the module takes
seconds."""

import os
import shutil
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import common  # configs/common.py (on the path through helpers)
from jaxgen import cli, config as config_lib, errors, frozen, generate
from jaxgen.data import datasets, pipeline
from jaxgen.eval import evaluate
from jaxgen.samplers import options
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.train import checkpoint

from helpers import write_tiny_config_file


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, fake_fmnist_dir, data_dir):
  """A tiny config file; ``path:unet`` gives the U-Net one."""
  return write_tiny_config_file(str(tmp_path_factory.mktemp("cfg")), fake_fmnist_dir,
                                data_dir)


def _fails(capsys, argv, *says, code=2, progress=None):
  """Runs ``jaxgen argv``: exit ``code`` and one stderr line, ``jaxgen: error: ...``
  holding every phrase of ``says``; returns that line. ``progress``: the name of a
  progress bar that may precede it (work that had begun, e.g. sampling)."""
  capsys.readouterr()
  assert cli.main(argv) == code
  err = capsys.readouterr().err
  lines = [l for l in err.strip().splitlines() if not progress or
           not l.startswith(f"{progress}:")]
  assert len(lines) == 1 and lines[0].startswith("jaxgen: error: "), err
  for phrase in says:
    assert phrase in lines[0], (phrase, lines[0])
  return lines[0]


# -- config: model variant, data name, preprocessing op, mesh ---------------------------

@pytest.mark.parametrize("model,known", [("dit", "S/2, S/4"), ("unet", "tiny, small")])
def test_unknown_model_variant_lists_the_known_ones(config_file, tmp_path, capsys, model,
                                                    known):
  cfg = f"{config_file}:{model}"
  run = str(tmp_path / "run")  # a run's workdir: its config.json, no checkpoint needed
  checkpoint.write_config(run, config_lib.load_config_file(cfg))
  for cmd in (["info", "--config", cfg], ["train", "--config", cfg, "--workdir",
                                          str(tmp_path / "wd")],
              ["sample", "--workdir", run, "--out", str(tmp_path / "s.npz")]):
    _fails(capsys, cmd + ["--config.model.variant=huge"],
           f"config.model.variant='huge' is not a named size of the {model!r} model",
           f"Known: {known}", "config.model.variant=None")
  assert sorted(os.listdir(tmp_path)) == ["run"] and os.listdir(run) == ["config.json"]


@pytest.mark.parametrize("family", ["flow", "gan", "tokenizer", "maskgit", "mage",
                                    "autoregressive", "var"])
def test_every_model_family_checks_its_variant(family):
  c = {"flow": common.base_config, "gan": common.gan_config,
       "tokenizer": common.tokenizer_config}.get(family, lambda: common.token_config(family))()
  c.model.variant = "huge"
  with pytest.raises(errors.ConfigError,
                     match=f"is not a named size of the '{c.model.name}' model.* Known: "):
    config_lib.validate(c)


def test_unknown_data_name_and_pp_op(config_file, tmp_path, capsys):
  wd = str(tmp_path / "wd")
  _fails(capsys, ["train", "--config", config_file, "--workdir", wd,
                  "--config.data.name=fashion_mnst"],
         "config.data.name='fashion_mnst' is unknown", "Did you mean fashion_mnist",
         "Known: fashion_mnist, fashion_mnist_captions")
  _fails(capsys, ["data", "--config", config_file, "--config.data.name=nope"],
         "Unknown dataset 'nope'", "Known: fashion_mnist")  # `data` skips validate
  _fails(capsys, ["train", "--config", config_file, "--workdir", wd,
                  "--config.data.pp=pda(32)|scale(-1, 1)"],
         "config.data.pp='pda(32)|scale(-1, 1)'", "Unknown preprocessing op 'pda'",
         "Did you mean 'pad'", "Known: as_video, center_crop")
  _fails(capsys, ["info", "--config", config_file, "--config.data.pp=pad()"],
         "config.data.pp='pad()'", "pad() missing 1 required positional argument")
  assert not os.path.exists(wd)


def test_impossible_mesh_says_devices_and_product(config_file, tmp_path, capsys):
  wd = str(tmp_path / "wd")
  n = len(jax.devices())
  _fails(capsys, ["train", "--config", config_file, "--workdir", wd, "--config.mesh.data=3",
                  "--config.mesh.fsdp=3"],
         "config.mesh data=3 x fsdp=3 x context=1 x tensor=1 multiplies to 9 devices",
         f"there are {n} CPU device(s)", "--config.mesh.data=-1")
  _fails(capsys, ["train", "--config", config_file, "--workdir", wd,
                  "--config.mesh.fsdp=3"],  # data=-1 cannot fill 8 devices with fsdp=3
         f"the fixed axes multiply to 3, which does not divide the {n}")
  _fails(capsys, ["train", "--config", config_file, "--workdir", wd, "--config.mesh.data=0"],
         "each size must be >= 1")
  assert not os.path.exists(wd)
  # Sampling still falls back to data parallelism when the run's mesh does not fit.
  c = common.base_config()
  c.mesh.data = 3
  assert generate.fit_mesh(c).mesh.to_dict() == dict(data=-1, fsdp=1, context=1, tensor=1)


# -- data: the Fashion-MNIST source directory and the prepared cache ------------------

@pytest.mark.parametrize("where", ["missing", "empty"])
def test_fashion_mnist_dir_variable_must_hold_the_files(config_file, tmp_path, capsys,
                                                        monkeypatch, where):
  bad = tmp_path / where
  if where == "empty":
    bad.mkdir()
  monkeypatch.setenv("JAXGEN_FASHION_MNIST_DIR", str(bad))
  fresh = str(tmp_path / "tfds")
  _fails(capsys, ["data", "--config", config_file, "--config.data.source_dir=",
                  f"--config.data.data_dir={fresh}"],
         f"$JAXGEN_FASHION_MNIST_DIR={str(bad)!r}",
         "does not exist" if where == "missing" else "holds none of",
         "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "or unset it")
  assert not os.path.exists(fresh)


def test_corrupted_prepared_data_names_the_directory_to_delete(config_file, data_dir,
                                                               fake_fmnist_dir, tmp_path,
                                                               capsys, monkeypatch):
  cfg = ml_collections.ConfigDict(dict(name="fashion_mnist", source_dir=fake_fmnist_dir,
                                       data_dir=data_dir))
  datasets.get_dataset(cfg)  # prepared once (shared with other tests), then copied
  bad = str(tmp_path / "tfds")
  shutil.copytree(os.path.join(data_dir, "jaxgen_fashion_mnist"),
                  os.path.join(bad, "jaxgen_fashion_mnist"))
  prepared = os.path.join(bad, "jaxgen_fashion_mnist", "1.0.0")
  train = [f for f in os.listdir(prepared) if "-train.array_record" in f]
  with open(os.path.join(prepared, train[0]), "r+b") as f:  # 64 bytes in a data chunk
    f.seek(5000)
    f.write(b"\xab" * 64)
  samples = _npz(tmp_path / "s.npz", _grey(), np.arange(4))
  # The evaluator's first read of the train split hits the damaged chunk.
  monkeypatch.setattr(evaluate, "Evaluator", _ReadingEvaluator)
  _fails(capsys, ["eval", "--config", config_file, "--samples", samples,
                  f"--config.data.data_dir={bad}", "--no-reference"],
         f"The prepared data in {prepared} is damaged", "'train' split",
         "hash mismatch", f"rm -r {prepared}")
  cfg.data_dir = bad  # the same error from the training pipeline
  it = iter(pipeline.train_dataset(datasets.get_dataset(cfg), split="train",
                                   pp="scale(-1, 1)", batch_size=16, seed=0))
  with pytest.raises(errors.DataError, match=f"The prepared data in {prepared} is damaged"):
    for _ in range(64):  # two epochs of 512: every record is read
      next(it)


# -- eval --samples: every bad .npz ---------------------------------------------------

class _FakeEvaluator:
  """Stands in for the evaluator (which trains a classifier once): records what it is
  given and returns fixed figures."""
  built = []

  def __init__(self, spec, classifier_dir="", log=print):
    del classifier_dir, log
    self.spec = spec
    self.classifier = types.SimpleNamespace(info={"test_accuracy": 0.9})
    _FakeEvaluator.built.append(self)

  def figures(self, images, labels=None):
    self.images, self.labels = images, labels
    out = {"fd": 1.0, "num": float(len(images))}
    if labels is not None and (labels < self.spec.num_classes).any():
      out["accuracy"] = 0.5
    return out

  def reference(self, num, split="test"):
    del split
    return {"fd": 0.5, "num": float(num)}


class _ReadingEvaluator(_FakeEvaluator):
  def __init__(self, spec, classifier_dir="", log=print):
    datasets.load_arrays(spec, "train")  # what the real one does first
    super().__init__(spec, classifier_dir, log)


def _stub_evaluator(monkeypatch):
  _FakeEvaluator.built = []
  monkeypatch.setattr(evaluate, "Evaluator", _FakeEvaluator)


def _npz(path, images=None, labels=None, **arrays):
  if images is not None:
    arrays["arr_0"] = images
  if labels is not None:
    arrays["labels"] = labels
  np.savez(path, **arrays)
  return str(path)


def _grey(n=4):
  return np.zeros((n, 32, 32, 1), np.uint8)


def _write(path, data: bytes):
  path.write_bytes(data)
  return str(path)


def _damaged(path, start, stop=None):
  """A valid .npz cut to ``[:start]``, or with bytes ``start:stop`` overwritten."""
  data = bytearray(open(_npz(path, _grey()), "rb").read())
  if stop is None:
    return _write(path, bytes(data[:start]))
  data[start:stop] = b"\xab" * (stop - start)
  return _write(path, bytes(data))


def _npy(path):
  with open(path, "wb") as f:
    np.save(f, _grey())
  return str(path)


BAD_NPZ = {
    "not a zip": (lambda p: _write(p, b"hello, not an archive"), "is not an .npz archive"),
    "a .npy": (_npy, "holds one .npy array, not an .npz archive"),
    "truncated": (lambda p: _damaged(p, 300), "is not an .npz archive"),
    "bad bytes": (lambda p: _damaged(p, 400, 464), "is damaged: its arrays cannot be read"),
    "no arr_0": (lambda p: _npz(p, images_=_grey()), "has no 'arr_0' array (keys: images_)"),
    "float32": (lambda p: _npz(p, _grey().astype(np.float32)),
                "arr_0 must be uint8 NHWC, got float32"),
    "NHW": (lambda p: _npz(p, _grey()[..., 0]), "arr_0 must be uint8 NHWC, got uint8 (4, 32"),
    "zero samples": (lambda p: _npz(p, _grey(0)), "holds 0 sample(s)"),
    "label count": (lambda p: _npz(p, _grey(), np.arange(3)),
                    "labels must be one integer per image, got int64 (3,) for 4 images"),
    "float labels": (lambda p: _npz(p, _grey(), np.zeros(4)),
                     "labels must be one integer per image, got float64"),
    "RGBA": (lambda p: _npz(p, np.zeros((4, 32, 32, 4), np.uint8)),
             "arr_0 has 4 channels per pixel, but fashion_mnist images have 1"),
    "label < 0": (lambda p: _npz(p, _grey(), np.array([0, 1, -1, 2])),
                  "labels range over -1..2, but fashion_mnist has classes 0..9 (10 = "
                  "unconditional)"),
    "label > classes": (lambda p: _npz(p, _grey(), np.array([0, 11, 1, 2])),
                        "labels range over 0..11"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_eval_refuses_bad_samples_file(config_file, tmp_path, capsys, monkeypatch, case):
  make, says = BAD_NPZ[case]
  path = make(tmp_path / "s.npz")
  _stub_evaluator(monkeypatch)
  out = str(tmp_path / "figures.json")
  line = _fails(capsys, ["eval", "--config", config_file, "--samples", path,
                         "--json-out", out], says)
  assert path in line
  assert not _FakeEvaluator.built and not os.path.exists(out)  # stopped before the work


def test_eval_converts_rgb_and_says_when_accuracy_is_skipped(config_file, tmp_path, capsys,
                                                             monkeypatch):
  _stub_evaluator(monkeypatch)
  rgb = np.zeros((4, 32, 32, 3), np.uint8)
  rgb[..., 0] = 100  # pure red: luma 0.299 * 100 = 30
  cases = (
      (_npz(tmp_path / "rgb.npz", rgb, np.arange(4)), ["converted them to grey"], True),
      (_npz(tmp_path / "null.npz", _grey(), np.full(4, 10)),
       ["all 4 samples", "are unconditional (label 10): classifier accuracy skipped"], False),
      (_npz(tmp_path / "mixed.npz", _grey(), np.array([0, 10, 1, 10])),
       ["accuracy counts the 2 class-conditional samples only; 2 are unconditional"], True),
      (_npz(tmp_path / "nolabels.npz", _grey()), ["has no labels: classifier accuracy "
                                                  "skipped"], False))
  for path, says, accuracy in cases:
    capsys.readouterr()
    assert cli.main(["eval", "--config", config_file, "--samples", path,
                     "--no-reference"]) == 0
    out = capsys.readouterr()
    assert not out.err, out.err
    for phrase in says:
      assert phrase in out.out, (phrase, out.out)
    assert ("accuracy=" in out.out) == accuracy
  images = _FakeEvaluator.built[0].images  # the RGB file, as the evaluator saw it
  assert images.shape == (4, 28, 28, 1) and (images == 30).all()


# -- sample: non-finite images are refused ---------------------------------------------

def _stub_run(monkeypatch, bad_label=-1, bad_value=np.nan):
  """``generate.load_run`` of a run at step 7 whose sampler puts ``bad_value`` in the
  samples of class ``bad_label`` (nothing is trained or restored)."""
  devices = np.asarray(jax.devices()[:1]).reshape((1,) * len(mesh_lib.MESH_AXES))

  def sample(params, rng, labels, options=None):
    del rng, options
    x = jnp.zeros((labels.shape[0], 8, 8, 1)) + params["w"]
    return jnp.where((labels == bad_label)[:, None, None, None], bad_value, x)

  exp = types.SimpleNamespace(
      paradigm=types.SimpleNamespace(num_classes=10, sample=sample,
                                     require=lambda *args: None, can=lambda *args: False,
                                     sample_options=lambda **kw: options.NoOptions()),
      config=ml_collections.ConfigDict(dict(paradigm=dict(name="flow"),
                                            sample=dict(batch_size=4))),
      mesh=jax.sharding.Mesh(devices, mesh_lib.MESH_AXES), frozen=frozen.Frozen({}))
  params = {"w": jnp.zeros(())}
  state = types.SimpleNamespace(params=params, ema_params=params)
  monkeypatch.setattr(generate, "load_run", lambda workdir, overrides, **kw: (exp, state, 7))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_sample_refuses_to_write_non_finite_images(tmp_path, capsys, monkeypatch,
                                                   bad_value):
  _stub_run(monkeypatch, bad_label=3, bad_value=bad_value)
  out = tmp_path / "s.npz"
  args = ["sample", "--workdir", str(tmp_path), "--num", "12", "--out", str(out)]
  # Labels cycle 0..9: the first chunk of 4 holds class 3, and sampling stops there.
  _fails(capsys, args, "1 of the first 4 (of 12) samples from checkpoint step 7 hold NaN "
         "or inf values; nothing was written", "--params raw", "--steps", code=1,
         progress="sample")
  assert not os.listdir(tmp_path)
  _fails(capsys, args + ["--label", "3", "--batch-size", "12"],
         "12 of the 12 samples from checkpoint step 7", code=1, progress="sample")
  assert not os.listdir(tmp_path)
  _stub_run(monkeypatch)  # all finite: written as before
  capsys.readouterr()
  assert cli.main(args) == 0
  assert np.load(out)["arr_0"].shape == (12, 8, 8, 1)
