"""Two CPU processes on localhost (jax.distributed + gloo) train on a global batch:
the result equals one process stepping on the concatenation of both local batches."""

import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from jaxgen.sharding import mesh as mesh_lib
from jaxgen.train import loop

from helpers import subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))


def test_two_processes_train_a_step_on_a_global_batch(make_config, fake_fmnist_dir,
                                                      data_dir, tmp_path):
  # Prepare the data once here so the workers only read it.
  loop.build(make_config("dit"), jax.devices()[:1])
  port = portpicker.pick_unused_port()
  procs = []
  for pid in range(2):
    env = subprocess_env(
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, "multihost_worker.py"), fake_fmnist_dir, data_dir,
         str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("multi-process workers timed out")
    outs.append(out)
    assert p.returncode == 0, out[-3000:]
  r = [np.load(tmp_path / f"proc{i}.npz") for i in range(2)]
  # The two processes read different examples...
  assert not np.array_equal(r[0]["image"], r[1]["image"])
  # ...and agree on the (replicated) result.
  assert float(r[0]["loss"]) == float(r[1]["loss"])
  # Single-process reference on the global batch = concatenation in process order.
  config = make_config("dit")
  exp = loop.build(config, jax.devices()[:1])
  state = exp.init_state()
  step_fn, _ = loop.make_train_step(exp)
  batch = {k: np.concatenate([r[0][k], r[1][k]]) for k in ("image", "label")}
  state, metrics = step_fn(state, mesh_lib.global_batch(batch, exp.mesh))
  np.testing.assert_allclose(float(metrics["loss"]), float(r[0]["loss"]), rtol=1e-5)
  flat = {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
  for k, v in flat.items():
    np.testing.assert_allclose(r[0][k], v, rtol=2e-4, atol=2e-6, err_msg=k)
  # The loop ran and checkpointed with one data-iterator state per process.
  data = tmp_path / "workdir" / "checkpoints" / "2" / "data"
  assert sorted(os.listdir(data))[:2] == ["commit_success.txt", "process_0-of-2.json"] or \
      {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))
