"""Shared fixtures. The whole test session sees 8 fake CPU devices (set before any
device is touched); single-device tests build their mesh from ``jax.devices()[:1]``."""

import jax

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

from helpers import ROOT, synthetic_fmnist, tiny_config, write_idx  # noqa: E402,F401


@pytest.fixture(scope="session")
def fake_fmnist_dir(tmp_path_factory):
  """A directory with the four Fashion-MNIST IDX files holding synthetic data."""
  d = tmp_path_factory.mktemp("fmnist_idx")
  for split, n, seed in (("train", 512, 0), ("t10k", 128, 1)):
    images, labels = synthetic_fmnist(n, seed)
    write_idx(str(d / f"{split}-images-idx3-ubyte.gz"), images)
    write_idx(str(d / f"{split}-labels-idx1-ubyte.gz"), labels)
  return str(d)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def make_config(fake_fmnist_dir, data_dir):
  def make(model="dit", **train):
    return tiny_config(fake_fmnist_dir, data_dir, model, **train)
  return make


@pytest.fixture
def one_device():
  return jax.devices()[:1]


def _tokenizer_run(bottleneck, root, fake_fmnist_dir, data_dir, **model):
  """Trains a tiny f4 tokenizer for 2 steps in ``root`` and writes the codes of both
  splits: ``(tokenizer_workdir, codes_dir)``."""
  from helpers import tiny_tokenizer_config
  from jaxgen.data import datasets
  from jaxgen.tokenizers import base, precompute
  from jaxgen.train import loop
  config = tiny_tokenizer_config(fake_fmnist_dir, data_dir, bottleneck, gan=False,
                                 num_steps=2)
  config.model.channel_mult = (1, 2, 2)
  config.model.update(model)
  wd = str(root / "tokenizer")
  loop.train(config, wd, jax.devices()[:1], progress=False)
  tok = base.Tokenizer.from_workdir(wd)
  codes = str(root / "codes")
  precompute.tokenize_dataset(tok, datasets.get_dataset(config.data), pp=config.data.pp,
                              out_dir=codes, splits=["train", "test"], batch_size=64,
                              progress=False)
  return wd, codes


@pytest.fixture(scope="session")
def vq_run(fake_fmnist_dir, data_dir, tmp_path_factory):
  """A tiny VQ tokenizer trained for 2 steps (f4: 8x8 codes of 32 entries) and its
  codes of both splits: ``(tokenizer_workdir, codes_dir)``. Shared by the token
  paradigms' tests."""
  return _tokenizer_run("vq", tmp_path_factory.mktemp("vq_run"), fake_fmnist_dir, data_dir)


@pytest.fixture(scope="session")
def msvq_run(fake_fmnist_dir, data_dir, tmp_path_factory):
  """A tiny multi-scale VQ tokenizer trained for 2 steps (f4: scales 1,2,3,4,6,8 of 32
  codes, 8 channels) and its codes of both splits: ``(tokenizer_workdir, codes_dir)``.
  VAR's tests train on it."""
  return _tokenizer_run("msvq", tmp_path_factory.mktemp("msvq_run"), fake_fmnist_dir,
                        data_dir, scales=(1, 2, 3, 4, 6, 8))
