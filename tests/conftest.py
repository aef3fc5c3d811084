"""Shared fixtures. The whole test session sees 8 fake CPU devices (set before any
device is touched); single-device tests build their mesh from ``jax.devices()[:1]``."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# Test programs are tiny and run in microseconds: XLA's compile time is the test
# suite's time. Compile with most optimisations off (LLVM -O0), as JAX's own tests
# can; set before jax is imported so that subprocesses (multi-host workers) inherit it.
# JAXGEN_TEST_XLA_OPT=1 compiles as users do.
_FAST_COMPILE = os.environ.get("JAXGEN_TEST_XLA_OPT", "0") != "1"
# XLA's newer CPU fusion emitters (MLIR) spend 1.5-4x more compile time on these small
# programs than its classic ones (measured: the tiny DiT step 1.3-1.7 s of compile CPU
# instead of 4.4-6.0 s; the tiny VQGAN step 5.8-7.2 s instead of 9.5-10.5 s; the whole
# suite's compile time -32%); same math, other rounding. Newer jaxlibs no longer have
# the flag (XLA aborts on an unknown one): probed once, in a subprocess, by the first
# pytest process; the xdist workers and test subprocesses inherit the result.
_CLASSIC_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(),
             JAX_PLATFORMS="cpu")
  try:
    return subprocess.run([sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1)"],
                          env=env, capture_output=True, timeout=120).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


if _FAST_COMPILE:
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  # Set before any device is touched. JAXGEN_TEST_CLASSIC_EMITTERS=0 keeps the default
  # emitters; after the probe it says which ones the run uses (helpers.users_emitters).
  if (os.environ.get("JAXGEN_TEST_CLASSIC_EMITTERS") != "0"
      and _CLASSIC_EMITTERS not in os.environ.get("XLA_FLAGS", "")):
    ok = _xla_accepts(_CLASSIC_EMITTERS)
    os.environ["JAXGEN_TEST_CLASSIC_EMITTERS"] = "1" if ok else "0"
    if ok:
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CLASSIC_EMITTERS}".strip()

import jax  # noqa: E402

if _FAST_COMPILE:  # also when a plugin imported jax before this file
  jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_num_cpu_devices", 8)
# One XLA compilation cache for the test session: tests that build the same program
# (the one-device step of a sharded==1 test and a training test of the same tiny
# config, the same tokenizer in several fixtures) compile it once, also when they run
# on different pytest-xdist workers: the controller makes the folder and the workers
# it starts inherit its path ($JAXGEN_TEST_XLA_CACHE_DIR). Session-local: the process
# that made it removes it at exit, so nothing carries over between runs.
# JAXGEN_TEST_XLA_CACHE=0 turns it off.
if os.environ.get("JAXGEN_TEST_XLA_CACHE", "1") != "0":
  _XLA_CACHE = os.environ.get("JAXGEN_TEST_XLA_CACHE_DIR", "")
  if not _XLA_CACHE or not os.path.isdir(_XLA_CACHE):
    _XLA_CACHE = tempfile.mkdtemp(prefix="jaxgen-test-xla-")
    os.environ["JAXGEN_TEST_XLA_CACHE_DIR"] = _XLA_CACHE
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

import pytest  # noqa: E402

# The tests that use the session fixtures below (the tiny tokenizer runs, the
# captions) form one pytest-xdist group, so those fixtures are built on one worker
# only; every other test is grouped by its file (module fixtures built once). The big
# group is collected first so that it starts at once. See README "Tests".
_SHARED_FIXTURES = {"vq_run", "msvq_run", "caption_dirs"}


def _xdist_group(item) -> str:
  if _SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
    return "shared_fixtures"
  if item.get_closest_marker("uses_shared_fixtures"):  # via request.getfixturevalue
    return "shared_fixtures"
  return item.path.name


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config, items):
  for item in items:
    item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))
  items.sort(key=lambda item: _xdist_group(item) != "shared_fixtures")  # stable


def pytest_xdist_auto_num_workers(config):
  """``-n auto``: one worker per core, at most 4 (each holds its own compiled programs
  and 8 fake devices; beyond that the shared-fixture group bounds the wall time)."""
  return max(1, min(os.cpu_count() or 1, 4))


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


@pytest.fixture(scope="session")
def caption_dirs(fake_fmnist_dir, data_dir, tmp_path_factory):
  """Detailed captions of the synthetic data (the built-in captioner, true labels) and
  their tiny_random embeddings: ``(captions_dir, embeddings_dir)``. Shared by the
  text-to-image tests."""
  import ml_collections
  import numpy as np
  from helpers import t2i_config
  from jaxgen import conditioning
  from jaxgen.data import caption_embeddings, captions, datasets
  root = tmp_path_factory.mktemp("t2i")
  cap_dir, emb_dir = str(root / "captions"), str(root / "emb")
  base = datasets.get_dataset(ml_collections.ConfigDict(dict(
      name="fashion_mnist", data_dir=data_dir, source_dir=fake_fmnist_dir)))
  captioner = captions.FashionMnistCaptioner(classifier=None, seed=0)
  for split in ("train", "test"):
    src = base.source(split)
    exs = [src[i] for i in range(len(src))]
    text = captioner(np.stack([e["image"] for e in exs]), np.arange(len(exs)),
                     labels=np.array([e["label"] for e in exs]))
    captions.write_captions(cap_dir, split, text, captioner="test", seed=0,
                            dataset="fashion_mnist_captions",
                            fingerprint=captions.split_fingerprint(src))
  config = t2i_config(fake_fmnist_dir, data_dir, cap_dir, emb_dir)
  enc = conditioning.load_text_encoder(config.text)
  caption_embeddings.embed_captions(datasets.get_dataset(config.data), config.data, enc,
                                    emb_dir, ["train", "test"], progress=False)
  return cap_dir, emb_dir


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
