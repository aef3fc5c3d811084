"""One process of the two-process test (run by tests/test_multihost.py).

Reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, initialises
jax.distributed (gloo CPU collectives), takes one sharded train step on a global
batch built from both processes' local batches, saves what it saw, then runs the
generic loop (with checkpoints) for two steps, damages the newest checkpoint and
resumes (both processes fall back to the intact one).
"""

import os
import sys

import jax

jax.config.update("jax_platforms", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import tiny_config  # noqa: E402

from jaxgen.sharding import distributed, mesh as mesh_lib  # noqa: E402
from jaxgen.train import loop  # noqa: E402


def main(source_dir, data_dir, out_dir):
  distributed.maybe_initialize_distributed()
  assert jax.process_count() == 2, jax.process_count()
  pid = jax.process_index()
  config = tiny_config(source_dir, data_dir, "dit", num_steps=2, ckpt_every=1)
  config.mesh.data = -1
  exp = loop.build(config)
  state = exp.init_state()
  step_fn, _ = loop.make_train_step(exp)
  local = next(loop.make_data_iterator(exp))
  batch = mesh_lib.global_batch(local, exp.mesh)
  assert batch["image"].shape[0] == config.train.batch_size
  state, metrics = step_fn(state, batch)
  params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
  flat = {jax.tree_util.keystr(p): v
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(os.path.join(out_dir, f"proc{pid}.npz"), loss=np.asarray(metrics["loss"]),
           image=local["image"], label=local["label"], **flat)
  workdir = os.path.join(out_dir, "workdir")
  loop.train(config, workdir, progress=False)
  # Both processes verify checkpoints alike: process 0 damages the newest one; the
  # resume falls back to step 1 on both (process 0 moves step 2 aside) and goes on.
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices("before_damage")
  if pid == 0:
    data = os.path.join(workdir, "checkpoints", "2", "state", "_METADATA")
    with open(data, "r+b") as f:
      f.write(b"#")
  multihost_utils.sync_global_devices("after_damage")
  config.train.num_steps = 3
  state = loop.train(config, workdir, progress=False)
  assert int(state.step) == 3
  assert os.listdir(os.path.join(workdir, "damaged_checkpoints"))[0].startswith("2-")
  print(f"process {pid} done", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:4])
