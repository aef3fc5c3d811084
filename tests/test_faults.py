"""Fault injection, runs and checkpoints (issue 21): each way a run used to lose work or
continue from a wrong state, with the exact behaviour now. Bad inputs to the commands
are in test_faults_inputs.py.

One tiny run (6 steps, checkpoints at 3 and 6) is trained once; each test damages a
copy of it and checks the message, the exit code, the step resumed from, and that
nothing in the workdir was lost. The CLI runs on one device here (`_one_device_cli`),
so that it reuses the compiled programs of the module's run.
"""

import json
import os
import shutil
import time

import jax
import numpy as np
import pytest

from helpers import tiny_config
from jaxgen import cli, errors
from jaxgen.train import checkpoint, lock, loop

NUM, EVERY = 6, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory, fake_fmnist_dir, data_dir):
  """``(config, workdir, final_state)``: checkpoints 3 and 6, metrics at 2, 4, 6."""
  config = tiny_config(fake_fmnist_dir, data_dir, "dit", num_steps=NUM, ckpt_every=EVERY,
                       log_every=2)
  config.mesh.data = -1  # config.json: the CLI resumes on whatever devices there are
  wd = str(tmp_path_factory.mktemp("faults") / "run")
  state = loop.train(config, wd, jax.devices()[:1], progress=False)
  return config, wd, jax.device_get(state)


@pytest.fixture
def wd(run, tmp_path):
  """A fresh copy of the module's run to damage."""
  dst = str(tmp_path / "wd")
  shutil.copytree(run[1], dst)
  return dst


@pytest.fixture
def one_device_cli(monkeypatch):
  real = jax.devices
  monkeypatch.setattr(jax, "devices", lambda *a, **k: real(*a, **k)[:1])


def _files(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, directory)] = fh.read()
  return out


def _state_files(wd, step):
  """The files of checkpoint ``step`` with their sizes, largest data file first."""
  d = os.path.join(wd, "checkpoints", str(step))
  paths = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs
           if f != checkpoint.MANIFEST]
  return d, sorted(paths, key=os.path.getsize, reverse=True)


def _steps_in(wd):
  ck = checkpoint.Checkpointer(wd)
  steps = ck.all_steps()
  ck.close()
  return sorted(steps)


def _rows(wd, name="metrics.jsonl"):
  path = os.path.join(wd, name)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f]


def _one_error_line(err):
  """The one ``jaxgen: error:`` line of stderr (progress bars aside), no traceback."""
  lines = [l for l in err.replace("\r", "\n").splitlines()
           if l.strip() and not l.startswith("train:")]
  assert len(lines) == 1 and lines[0].startswith("jaxgen: error: "), err
  return lines[0]


def test_checkpoints_carry_a_manifest_and_only_verified_ones_are_kept(run):
  _, wd, _ = run
  assert _steps_in(wd) == [3, 6]
  for step in (3, 6):
    d = os.path.join(wd, "checkpoints", str(step))
    with open(os.path.join(d, checkpoint.MANIFEST)) as f:
      manifest = json.load(f)
    on_disk = {os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs}
    assert set(manifest["files"]) == on_disk - {checkpoint.MANIFEST}
    assert checkpoint.check_manifest(d) is None
  assert not os.path.exists(os.path.join(wd, "train.lock")) or not open(
      os.path.join(wd, "train.lock")).read()  # released: empty
  with open(os.path.join(wd, "dataset.json")) as f:  # for sampling where the data is not
    spec = json.load(f)
  assert spec["name"] == "fashion_mnist" and spec["num_classes"] == 10


def test_flipped_bytes_fall_back_to_the_previous_checkpoint_and_resume_exactly(
    run, wd, capsys, one_device_cli):
  """64 bytes overwritten in the newest checkpoint (size unchanged), and a stale lock
  of a killed run: the resume says both in one line each, moves step 6 aside, retrains
  3 -> 6 bit-identical to the uninterrupted run, and logs each step once."""
  _, _, final = run
  d, paths = _state_files(wd, 6)
  with open(paths[0], "r+b") as f:
    f.seek(os.path.getsize(paths[0]) // 2)
    f.write(b"\xff" * 64)
  with open(os.path.join(wd, lock.LOCK_FILE), "w") as f:  # kill -9 leaves this behind
    json.dump({"host": os.uname().nodename, "pid": 2 ** 22 + 7, "started": "earlier"}, f)
  capsys.readouterr()
  assert cli.main(["train", "--workdir", wd]) == 0
  err = capsys.readouterr().err
  assert "taking over the lock of a run that ended without releasing it" in err
  rel = os.path.relpath(paths[0], d)
  assert (f"checkpoint step 6 is damaged: {rel} does not match its SHA-256 checksum. "
          "Moved it to ") in err and "resuming from step 3" in err, err
  moved = os.listdir(os.path.join(wd, checkpoint.DAMAGED_DIR))
  assert len(moved) == 1 and moved[0].startswith("6-")  # kept, not deleted
  assert _steps_in(wd) == [3, 6]
  ck = checkpoint.Checkpointer(wd)
  exp = loop.build_abstract(run[0], jax.devices()[:1])
  again = jax.device_get(ck.restore(exp.abstract_state, step=6))
  ck.close()
  jax.tree.map(np.testing.assert_array_equal, (final.params, final.ema_params,
                                               final.opt_state),
               (again.params, again.ema_params, again.opt_state))
  assert _rows(wd) == [2, 4, 6]  # no duplicate rows; the rolled-back ones are kept aside
  assert _rows(wd, "metrics.rolled_back.jsonl") == [4, 6]


@pytest.mark.parametrize("fault", ["truncated", "emptied", "deleted", "_METADATA deleted"])
def test_damaged_newest_checkpoint_is_reported_and_skipped(run, wd, fault, capsys):
  """`jaxgen sample`'s loader: one warning line, the newest intact step, nothing moved."""
  from jaxgen import generate
  d, paths = _state_files(wd, 6)
  target = os.path.join(d, "state", "_METADATA") if "METADATA" in fault else paths[0]
  rel = os.path.relpath(target, d)
  if fault == "truncated":
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 2)
  elif fault == "emptied":
    open(target, "w").close()
  else:
    os.remove(target)
  before = _files(wd)
  capsys.readouterr()
  _, state, step = generate.load_run(wd, devices=jax.devices()[:1])
  assert step == 3 and int(state.step) == 3
  err = capsys.readouterr().err.strip()
  says = "is missing" if "deleted" in fault else "bytes, "
  assert err.startswith("jaxgen: warning: checkpoint step 6 in ") and len(err.splitlines()) == 1
  assert f"is damaged: {rel} " in err and says in err and "Using step 3" in err, err
  assert _files(wd) == before


def test_non_finite_checkpoint_is_skipped_and_no_intact_one_is_an_error(run, wd, capsys):
  """A checkpoint that verifies but holds NaN (e.g. written by an older version) is
  not used; when every checkpoint is damaged, one error and nothing moved."""
  config, _, _ = run
  exp = loop.build_abstract(config, jax.devices()[:1])
  ck = checkpoint.Checkpointer(wd, keep=None)
  state = ck.restore(exp.abstract_state, step=6)
  bad = state.replace(ema_params=jax.tree.map(lambda x: x * np.nan, state.ema_params))
  ck.save(9, bad, force=True)
  ck.wait()
  finite = jax.jit(loop.state_lib.all_finite)
  got, step = ck.restore_newest_intact(exp.abstract_state, all_finite=finite)
  assert step == 6
  assert "step 9 in" in capsys.readouterr().err
  for s in (3, 6):
    os.remove(_state_files(wd, s)[1][0])
  before = _files(wd)
  with pytest.raises(errors.CheckpointError, match=r"No intact checkpoint in .*step 9: it "
                     r"holds non-finite values.*step 6: .* is missing.*step 3: .*"
                     r"move them away"):
    ck.restore_newest_intact(exp.abstract_state, all_finite=finite, quarantine=True)
  ck.close()
  assert _files(wd) == before


def test_optimizer_layout_change_is_refused_with_advice_that_works(run, wd, capsys,
                                                                  one_device_cli):
  """Turning grad_clip off changes the optimizer state's layout: refused (exit 2, one
  line naming --reset-optimizer, workdir unchanged); with --reset-optimizer the run
  resumes the parameters and EMA of step 6 with a fresh optimizer state."""
  config, _, final = run
  before = _files(wd)
  args = ["train", "--workdir", wd, "--config.optim.grad_clip=0", "--config.train.num_steps=8"]
  capsys.readouterr()
  assert cli.main(args) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "Only the optimizer state differs" in line and "--reset-optimizer" in line, line
  assert _files(wd) == before
  # What --reset-optimizer restores: step 6's networks, a fresh optimizer state.
  noclip = config.copy_and_resolve_references()
  noclip.optim.grad_clip = 0.0
  exp = loop.build_abstract(noclip, jax.devices()[:1])
  ck = checkpoint.Checkpointer(wd)
  state = jax.device_get(ck.restore(exp.abstract_state, step=6, fresh_optimizer=exp.init_state))
  ck.close()
  jax.tree.map(np.testing.assert_array_equal, (final.params, final.ema_params, final.step),
               (state.params, state.ema_params, state.step))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(exp.init_state().opt_state),
               state.opt_state)
  # Through the CLI (with the module's config, so its compiled step is reused): the
  # flag resumes from step 6, says so, and trains on.
  assert cli.main(["train", "--workdir", wd, "--config.train.num_steps=8",
                   "--reset-optimizer"]) == 0
  assert "--reset-optimizer: the parameters, EMA and data position of step 6" in (
      capsys.readouterr().err)
  assert _steps_in(wd)[-1] == 8


def test_a_failed_save_stops_at_once_and_keeps_every_checkpoint(run, wd, capsys,
                                                                monkeypatch, one_device_cli):
  """The disk fills during the background save of step 9: the run stops at the next
  step with one line (exit 1), and checkpoints 3 and 6 are untouched."""
  import orbax.checkpoint as ocp
  real = ocp.StandardCheckpointHandler.async_save

  class _Full:
    def result(self, timeout=None):
      raise OSError(28, "No space left on device", "checkpoints/9/state/d/0")

  async def async_save(self, *args, **kwargs):
    return list(await real(self, *args, **kwargs) or []) + [_Full()]

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", async_save)
  real_step = loop.make_train_step

  def slow_steps(exp):  # steps after the save take time, as real ones do
    run_step, jitted = real_step(exp)
    def step(state, batch):
      if int(state.step) >= 9:
        time.sleep(0.5)
      return run_step(state, batch)
    return step, jitted

  monkeypatch.setattr(loop, "make_train_step", slow_steps)
  before = {k: v for k, v in _files(wd).items() if k.startswith("checkpoints")}
  capsys.readouterr()
  assert cli.main(["train", "--workdir", wd, "--config.train.num_steps=15"]) == 1
  line = _one_error_line(capsys.readouterr().err)
  assert ("Saving checkpoint step 9 in " in line and "failed: No space left on device" in line
          and "the newest verified checkpoint is step 6" in line), line
  after = _files(wd)
  assert all(after.get(k) == v for k, v in before.items())  # nothing lost or changed
  assert max(_rows(wd)) <= 10  # stopped within a step of the failure, not at 12 or 15
  assert not os.path.isfile(os.path.join(wd, "checkpoints", "9", checkpoint.MANIFEST))


def test_a_second_trainer_on_the_workdir_is_refused(run, wd, capsys):
  before = _files(wd)
  with lock.WorkdirLock(wd):  # the first run, still training
    holding = _files(wd)
    assert cli.main(["train", "--workdir", wd, "--config.train.num_steps=9"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"in use by another training run (pid {os.getpid()} on host" in line, line
    assert _files(wd) == holding  # nothing written: no config.json, no temp checkpoint
  assert {k: v for k, v in _files(wd).items() if k != lock.LOCK_FILE} == {
      k: v for k, v in before.items() if k != lock.LOCK_FILE}
  # A lock left by another machine cannot be checked from here: refused, with the fix.
  with open(os.path.join(wd, lock.LOCK_FILE), "w") as f:
    json.dump({"host": "elsewhere", "pid": 12, "started": "earlier"}, f)
  assert cli.main(["train", "--workdir", wd, "--config.train.num_steps=9"]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "on another machine" in line and f"delete {wd}" in line, line


def test_a_command_that_trains_nothing_writes_nothing(run, wd, capsys, one_device_cli):
  """`train` on a finished run with an override: says so; config.json unchanged."""
  before = _files(wd)
  assert cli.main(["train", "--workdir", wd, "--config.optim.lr=0.5",
                   "--config.train.num_steps=6"]) == 0
  assert "already at step 6" in capsys.readouterr().out
  after = _files(wd)
  assert {k: v for k, v in after.items() if k != lock.LOCK_FILE} == {
      k: v for k, v in before.items() if k != lock.LOCK_FILE}


def test_leftovers_of_a_kill_during_save_are_cleaned_and_the_run_resumes(
    run, wd, capsys, one_device_cli):
  """What ``kill -9`` during a save leaves: an unfinished ``9.orbax-checkpoint-tmp``,
  step 6 committed but not yet verified (no manifest), metrics logged after it, and
  the lock file. The resume removes the unfinished save, uses step 6 (readable and
  finite), and logs each step once. (The real kill: test_kill_9_at_random_moments.)"""
  tmp = os.path.join(wd, "checkpoints", "9.orbax-checkpoint-tmp", "state")
  os.makedirs(tmp)
  with open(os.path.join(tmp, "partial"), "wb") as f:
    f.write(b"\0" * 100)
  os.remove(os.path.join(wd, "checkpoints", "6", checkpoint.MANIFEST))
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 8, "loss": 1.0}) + "\n" + '{"step": 9, "lo')  # torn
  with open(os.path.join(wd, lock.LOCK_FILE), "w") as f:
    json.dump({"host": os.uname().nodename, "pid": 2 ** 22 + 9, "started": "earlier"}, f)
  capsys.readouterr()
  assert cli.main(["train", "--workdir", wd, "--config.train.num_steps=8"]) == 0
  captured = capsys.readouterr()
  assert "Resuming from step 6" in captured.out
  assert "taking over the lock" in captured.err and "damaged" not in captured.err
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6", "8"]
  assert checkpoint.check_manifest(os.path.join(wd, "checkpoints", "8")) is None
  assert _rows(wd) == [2, 4, 6, 8]
  with open(os.path.join(wd, "metrics.rolled_back.jsonl")) as f:
    assert f.read().splitlines()[-1] == '{"step": 9, "lo'  # kept, not dropped


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_equal_to_uninterrupted(run, tmp_path):
  """`jaxgen train` in a subprocess, killed with SIGKILL three times at random
  moments once it trains (checkpoints every step, so often during a save), then run
  to the end:
  the final parameters equal those of an uninterrupted run in the same kind of
  process, bit for bit."""
  import signal
  import subprocess
  import sys
  config, src, _ = run
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for name in ("killed", "whole"):
    os.makedirs(tmp_path / name)
    shutil.copy(os.path.join(src, "config.json"), tmp_path / name)
  cmd = lambda wd: [sys.executable, "-m", "jaxgen.cli", "train", "--workdir", wd,
                    "--config.train.ckpt_every=1", "--config.train.num_steps=60"]
  whole = str(tmp_path / "whole")
  subprocess.run(cmd(whole), env=env, capture_output=True, check=True)
  wd = str(tmp_path / "killed")
  rng = np.random.default_rng(0)
  reached = []
  def on_disk():
    d = os.path.join(wd, "checkpoints")
    names = os.listdir(d) if os.path.isdir(d) else []
    return max([int(n) for n in names if n.isdigit()], default=0)

  for _ in range(3):
    p = subprocess.Popen(cmd(wd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start, deadline = on_disk(), time.time() + 180
    while on_disk() <= start and time.time() < deadline and p.poll() is None:
      time.sleep(0.1)  # until this attempt has saved a checkpoint (after start-up)
    time.sleep(float(rng.uniform(0.0, 1.0)))  # then at a random moment (often a save)
    p.send_signal(signal.SIGKILL)
    p.wait()
    reached.append(max(_steps_in(wd), default=0))
  assert 0 < reached[-1] < 60 and len(set(reached)) == 3, reached  # really interrupted
  out = subprocess.run(cmd(wd), env=env, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  exp = loop.build_abstract(config, jax.devices()[:1])
  got = []
  for d in (whole, wd):
    ck = checkpoint.Checkpointer(d)
    got.append(jax.device_get(ck.restore(exp.abstract_state, step=60)))
    ck.close()
  jax.tree.map(np.testing.assert_array_equal, (got[0].params, got[0].ema_params),
               (got[1].params, got[1].ema_params))
  assert _rows(wd) == list(range(2, 61, 2))
