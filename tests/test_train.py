"""The shared loop: sharded step == single device, stop/resume == uninterrupted,
SIGTERM saves and stops, mismatched checkpoints are refused without damage."""

import json
import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

from helpers import run_steps
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.train import checkpoint, loop, preemption
from jaxgen.train import step as step_lib


@pytest.mark.parametrize("data,fsdp,tensor", [
    (2, 2, 2),  # default tier: fsdp and tensor parallelism in one program
    pytest.param(2, 4, 1, marks=pytest.mark.slow),
    pytest.param(2, 1, 4, marks=pytest.mark.slow)])
def test_sharded_step_on_8_devices_equals_one_device(make_config, data, fsdp, tensor):
  """3 steps on a (data, fsdp, tensor) mesh of 8 fake devices give one device's losses
  and parameters; the parameters really are split over the model axes in use."""
  c1 = make_config("dit")
  c8 = make_config("dit")
  c8.mesh = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  _, s1, l1 = run_steps(c1, jax.devices()[:1], 3)
  exp8, s8, l8 = run_steps(c8, jax.devices(), 3)
  specs = [str(x.sharding.spec) for x in jax.tree.leaves(s8.params)]
  for axis, size in (("fsdp", fsdp), ("tensor", tensor)):
    assert any(axis in s for s in specs) == (size > 1), (axis, specs)
  assert len(exp8.mesh.devices.flat) == 8
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
               jax.device_get(s1.params), jax.device_get(s8.params))


def _params(state):
  return jax.device_get((state.params, state.ema_params, state.opt_state, state.step))


def test_stop_and_resume_equals_uninterrupted(make_config, tmp_path, one_device):
  config = make_config("dit", num_steps=6, ckpt_every=100)
  full = loop.train(config, str(tmp_path / "full"), one_device, progress=False)
  wd = str(tmp_path / "resumed")
  part = loop.train(config, wd, one_device, stop_after=4, progress=False)
  assert int(part.step) == 4
  assert checkpoint.Checkpointer(wd).latest_step() == 4
  resumed = loop.train(config, wd, one_device, progress=False)
  assert int(resumed.step) == 6
  jax.tree.map(np.testing.assert_array_equal, _params(full), _params(resumed))
  # Identical losses at the logged steps after the resume point: same data order.
  read = lambda d: {r["step"]: r["loss"] for r in map(json.loads, open(f"{d}/metrics.jsonl"))}
  assert read(str(tmp_path / "full"))[6] == read(wd)[6]


@pytest.mark.slow  # the default tier's budget: test_cli.py's
# test_train_resume_sample_eval (default) checks it
def test_longer_num_steps_continues_from_checkpoint(make_config, tmp_path, one_device):
  wd = str(tmp_path / "wd")
  loop.train(make_config("dit", num_steps=3), wd, one_device, progress=False)
  state = loop.train(make_config("dit", num_steps=5), wd, one_device, progress=False)
  assert int(state.step) == 5
  assert checkpoint.Checkpointer(wd).latest_step() == 5


def test_sigterm_saves_a_checkpoint_and_stops(make_config, tmp_path, one_device, monkeypatch):
  orig = preemption.PreemptionGuard.should_stop

  def should_stop(self, step):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # a real signal, caught by the guard
    return orig(self, step)

  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", should_stop)
  wd = str(tmp_path / "wd")
  state = loop.train(make_config("dit", num_steps=50, ckpt_every=100), wd, one_device,
                     progress=False)
  assert int(state.step) == 2
  assert checkpoint.Checkpointer(wd).latest_step() == 2
  assert signal.getsignal(signal.SIGTERM) is not should_stop  # handler restored


def _snapshot(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      p = os.path.join(root, f)
      out[p] = open(p, "rb").read()
  return out


def test_checkpoint_of_another_model_is_refused_and_workdir_intact(
    make_config, tmp_path, one_device):
  wd = str(tmp_path / "wd")
  loop.train(make_config("dit", num_steps=2), wd, one_device, progress=False)
  before = _snapshot(wd)
  bigger = make_config("dit", num_steps=4)
  bigger.model.hidden_size = 64
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"differ in shape, e.g. .*checkpoint \(192,\) vs config \(384,\)"):
    loop.train(bigger, wd, one_device, progress=False)
  other = make_config("unet", num_steps=4)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="written for another model"):
    loop.train(other, wd, one_device, progress=False)
  assert _snapshot(wd) == before


def test_train_writes_logs_samples_and_tensorboard(make_config, tmp_path, one_device):
  wd = str(tmp_path / "wd")
  c = make_config("dit", num_steps=4, sample_every=4, sample_grid=20)
  loop.train(c, wd, one_device, progress=False)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4]
  assert {"loss", "grad_norm", "lr", "steps_per_sec"} <= set(rows[0])
  assert os.path.isfile(os.path.join(wd, "samples", "step_0000004.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))
  assert json.load(open(os.path.join(wd, "config.json")))["model"]["hidden_size"] == 32


def test_grad_accumulation_equals_full_batch(make_config, one_device):
  c1 = make_config("dit")
  c1.optim.grad_clip = 0.0
  exp = loop.build(c1, one_device)
  state = exp.init_state()
  batch = mesh_lib.global_batch(next(loop.make_data_iterator(exp)), exp.mesh)
  rng = jax.random.PRNGKey(0)
  # Gradients of the mean loss over two halves (same per-half rngs) == accumulation.
  grad_fn = jax.value_and_grad(exp.paradigm.loss, has_aux=True)
  halves = [jax.tree.map(lambda x: x[i * 4:(i + 1) * 4], batch) for i in range(2)]
  grad_jit = jax.jit(grad_fn)  # one program for both halves, not op-by-op
  grads = [grad_jit(state.params, h, jax.random.fold_in(rng, i))[1]
           for i, h in enumerate(halves)]
  ref = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  _, _, acc = jax.jit(lambda p, b, r: step_lib.accumulate_gradients(grad_fn, p, b, r, 2))(
      state.params, batch, rng)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), ref, acc)


class _NanAt:
  """The loop's data iterator, with a NaN image in the batches of the given 1-based
  steps (the loss, the gradients and so the parameters turn non-finite there). Its
  state is the real iterator's, so checkpoints and resumption work as usual."""

  def __init__(self, it, steps):
    self.it, self.steps, self.n = it, set(steps), 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    self.n += 1
    if self.n in self.steps:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return batch

  def get_state(self):  # grain's checkpoint handler takes other iterators' state as bytes
    return json.dumps(self.it.get_state()).encode()

  def set_state(self, state):
    self.it.set_state(json.loads(state.decode()))

  def start_prefetch(self):
    self.it.start_prefetch()


def _inject_nan(monkeypatch, steps):
  real = loop.make_data_iterator
  monkeypatch.setattr(loop, "make_data_iterator", lambda exp: _NanAt(real(exp), steps))


def test_a_non_finite_step_is_never_checkpointed(make_config, tmp_path, monkeypatch,
                                                 one_device):
  """Checkpoints every 2 steps, logs every 50: the step-5 NaN stops the run at the
  step-6 save without saving it; the step-4 checkpoint is kept, named, and resumes."""
  config = make_config("dit", num_steps=8, log_every=50, ckpt_every=2, keep_checkpoints=1)
  _inject_nan(monkeypatch, [5])
  wd = str(tmp_path / "run")
  with pytest.raises(FloatingPointError,
                     match=r"non-finite at step 5\..*newest checkpoint, step 4 in .*"
                           r"is finite.*--config.train.nonfinite=skip"):
    loop.train(config, wd, one_device, progress=False)
  ckpt = checkpoint.Checkpointer(wd)
  assert ckpt.all_steps() == [4]
  ckpt.close()
  monkeypatch.undo()  # the advice works: the same command resumes from step 4
  state = loop.train(config, wd, one_device, progress=False)
  assert int(state.step) == 8
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(jax.device_get(state.params)))


def test_skip_mode_keeps_the_last_finite_state_and_counts_skips(make_config, tmp_path,
                                                                monkeypatch, one_device):
  config = make_config("dit", num_steps=4, log_every=4, ckpt_every=4)
  config.train.nonfinite = "skip"
  _inject_nan(monkeypatch, [2, 3])
  exp = loop.build(config, one_device)
  step_fn, _ = loop.make_train_step(exp)
  it = loop.make_data_iterator(exp)
  state = exp.init_state()
  params = []
  for _ in range(3):
    state, metrics = step_fn(state, mesh_lib.global_batch(next(it), exp.mesh))
    params.append(jax.device_get(state.params))
  assert not bool(metrics["finite"]) and float(metrics["nonfinite_skipped"]) == 1.0
  assert int(state.step) == 3  # the counter advances; the parameters do not
  jax.tree.map(np.testing.assert_array_equal, params[0], params[2])
  # Through the loop: the run finishes, and metrics.jsonl counts the two skips.
  wd = str(tmp_path / "run")
  state = loop.train(config, wd, one_device, progress=False)
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(jax.device_get(state.params)))
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]["step"] == 4 and rows[-1]["nonfinite_skipped"] == 2.0
  assert np.isfinite(rows[-1]["loss"])
