"""Workdirs in cloud storage: every file jaxgen itself writes into a workdir (config,
metrics, checkpoint manifests, sample grids, the lock, the latent scale) goes through
`jaxgen.fileio`, so a ``gs://`` workdir works. A stand-in for Google Cloud Storage
(fsspec's in-memory file system registered for ``gs://``) checks the round trips
without a network; the same code paths are run on a local directory by the other
tests. Orbax writes the checkpoint arrays to ``gs://`` itself (tensorstore)."""

import json
import sys

import fsspec  # noqa: F401  (fsspec.registry below)
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from jaxgen import errors, fileio, images
from jaxgen.tokenizers import base
from jaxgen.train import checkpoint, lock, metrics


class _FakeGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  root_marker = ""

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # what epath passes to gcsfs
    super().__init__(*args, **kwargs)


@pytest.fixture
def gs(monkeypatch):
  """A fresh ``gs://bucket/<name>`` workdir in memory."""
  monkeypatch.setenv("EPATH_USE_TF", "0")  # epath's fsspec backend, not tf.io.gfile
  registry = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access
  for name in ("gs", "gcs"):
    monkeypatch.setitem(registry, name, _FakeGCS)
  _FakeGCS.store.clear()
  _FakeGCS.pseudo_dirs.clear()
  _FakeGCS.pseudo_dirs.append("")
  return "gs://bucket/run"


def test_paths_stay_uris(gs):
  assert fileio.absolute(gs) == gs and fileio.is_remote(gs)
  assert fileio.absolute("rel") != "rel" and not fileio.is_remote("rel")
  fileio.write_text(fileio.join(gs, "a", "b.txt"), "hello")
  assert fileio.isfile(gs + "/a/b.txt") and fileio.isdir(gs + "/a")
  assert fileio.read_text(gs + "/a/b.txt") == "hello" and fileio.size(gs + "/a/b.txt") == 5
  assert sorted(fileio.walk_files(gs)) == [("a/b.txt", gs + "/a/b.txt")]
  fileio.move(gs + "/a", gs + "/moved/a")
  assert [r for r, _ in fileio.walk_files(gs)] == ["moved/a/b.txt"]


def test_config_metrics_manifest_png_scale_round_trip(gs):
  import ml_collections
  config = ml_collections.ConfigDict({"train": {"num_steps": 5}})
  checkpoint.write_config(gs, config)
  assert checkpoint.read_config(gs) == {"train": {"num_steps": 5}}
  w = metrics.MetricWriter(gs)
  for step in (2, 4, 6):
    w.write_scalars(step, {"loss": step / 10})
  w.close()
  w = metrics.MetricWriter(gs, start_step=4)  # a resume: row 6 is rolled back
  w.write_scalars(6, {"loss": 0.5})
  w.close()
  rows = [json.loads(l) for l in fileio.read_text(gs + "/metrics.jsonl").splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(2, 0.2), (4, 0.4), (6, 0.5)]
  assert json.loads(fileio.read_text(gs + "/metrics.rolled_back.jsonl"))["loss"] == 0.6
  step_dir = gs + "/checkpoints/6"
  fileio.write_bytes(step_dir + "/state/d/0", b"\1" * 100)
  checkpoint.write_manifest(step_dir, 6)
  assert checkpoint.check_manifest(step_dir) is None
  fileio.write_bytes(step_dir + "/state/d/0", b"\1" * 99 + b"\2")
  assert checkpoint.check_manifest(step_dir) == "state/d/0 does not match its SHA-256 checksum"
  images.save_grid(gs + "/samples/step_6.png", np.zeros((4, 8, 8, 1), np.uint8))
  with fileio.open_file(gs + "/samples/step_6.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  base.write_latent_scale(gs, 0.25, num_examples=10)
  assert base.read_latent_scale(gs) == 0.25
  from jaxgen import generate
  imgs = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1)
  png = generate.save_samples(gs + "/out/s.npz", imgs, np.arange(4))
  assert png == gs + "/out/s.png" and fileio.isfile(png)
  with fileio.open_file(gs + "/out/s.npz", "rb") as f, np.load(f) as z:
    np.testing.assert_array_equal(z["arr_0"], imgs)
    np.testing.assert_array_equal(z["labels"], np.arange(4))


def test_lock_in_a_remote_workdir(gs, capsys):
  with lock.WorkdirLock(gs):
    held = json.loads(fileio.read_text(gs + "/" + lock.LOCK_FILE))
    with pytest.raises(errors.WorkdirLockedError, match=f"pid {held['pid']} on host"):
      lock.WorkdirLock(gs).acquire()
  assert fileio.read_text(gs + "/" + lock.LOCK_FILE) == ""  # released
  fileio.write_text(gs + "/" + lock.LOCK_FILE, json.dumps(dict(held, pid=2 ** 22 + 5)))
  with lock.WorkdirLock(gs):  # that pid runs no more on this host: a stale lock
    pass
  assert "taking over the lock" in capsys.readouterr().err
  fileio.write_text(gs + "/" + lock.LOCK_FILE, json.dumps(dict(held, host="elsewhere")))
  with pytest.raises(errors.WorkdirLockedError, match="on another machine.*delete gs://"):
    lock.WorkdirLock(gs).acquire()
