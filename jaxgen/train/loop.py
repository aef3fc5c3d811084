"""The single generic training loop, shared by every paradigm.

Builds the mesh, data iterator, paradigm and sharded train state; resumes from the
newest checkpoint in the workdir by itself; runs a jitted, sharded, state-donating
step; logs metrics (JSONL + TensorBoard), writes sample grids, and checkpoints every
``config.train.ckpt_every`` steps and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxgen import config as config_lib
from jaxgen import errors
from jaxgen import fileio
from jaxgen import frozen as frozen_lib
from jaxgen import images as images_lib
from jaxgen import registry
from jaxgen.data import datasets, pipeline
from jaxgen.sharding import distributed, mesh as mesh_lib
from jaxgen.train import checkpoint, lock as lock_lib, preemption, state as state_lib
from jaxgen.train.metrics import MetricWriter


@dataclasses.dataclass
class Experiment:
  """Everything built from a config, before any step runs."""
  config: Any
  mesh: Any
  dataset: datasets.DatasetSpec
  paradigm: Any
  tx: Any
  schedule: Any
  init_state: Any          # () -> sharded TrainState
  abstract_state: Any      # ShapeDtypeStructs with shardings
  state_shardings: Any
  frozen: Any = None       # jaxgen.frozen.Frozen: the paradigm's frozen networks, placed


def build(config, devices=None, load_data: bool = True,
          dataset: Optional[datasets.DatasetSpec] = None) -> Experiment:
  """Validates ``config`` and builds mesh, data spec, paradigm and state factories.

  With ``load_data=False`` the dataset is only described (shapes, classes), for
  benchmarks, ahead-of-time compilation and ``info`` on machines without the data;
  ``dataset`` gives that description (a run's recorded ``dataset.json``) instead.
  """
  config_lib.validate(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  if dataset is None:
    dataset = (datasets.get_dataset(config.data) if load_data
               else datasets.describe(config.data))
  paradigm = registry.PARADIGMS.get(config.paradigm.name).build(config, dataset)
  dataset = paradigm.dataset  # a text run's: its examples carry the text arrays
  tx, schedule = paradigm.make_optimizer()
  rng = jax.random.PRNGKey(config.train.seed)
  init_state, abstract, shardings = state_lib.sharded_state(
      paradigm.init_params, tx, mesh, rng, init_model_state=paradigm.init_model_state)
  frozen = frozen_lib.Frozen(paradigm.frozen_networks(), mesh)
  return Experiment(config, mesh, dataset, paradigm, tx, schedule, init_state, abstract,
                    shardings, frozen)


def build_abstract(config, devices=None) -> Experiment:
  return build(config, devices, load_data=False)


def guard_nonfinite(step_fn, mode: str):
  """Wraps a train step ``(state, batch) -> (state, metrics)``: ``metrics["finite"]``
  says whether the loss, parameters and EMA after the step are all finite (a fused
  reduction in the same program). ``mode="skip"`` keeps the previous parameters, EMA,
  optimizer and model state where they are not (the step counter still advances) and
  reports ``metrics["nonfinite_skipped"]``."""
  def step(state, batch):
    new, metrics = step_fn(state, batch)
    ok = state_lib.all_finite((metrics["loss"], new.params, new.ema_params))
    if mode == "skip":
      keep = lambda n, o: jnp.where(ok, n, o)
      new = new.replace(**{f: jax.tree.map(keep, getattr(new, f), getattr(state, f))
                           for f in ("params", "ema_params", "opt_state", "model_state")})
      metrics = dict(metrics, nonfinite_skipped=1.0 - ok.astype(jnp.float32))
    return new, dict(metrics, finite=ok)
  return step


def make_train_step(exp: Experiment):
  """The paradigm's step under ``jax.jit`` with state/batch shardings, donating state;
  its metrics carry the finite flag of `guard_nonfinite`. The frozen networks' weights
  are arguments of the program (`jaxgen.frozen`), not constants."""
  batch_sh = jax.tree.map(
      lambda a: mesh_lib.batch_sharding(exp.mesh, len(a.shape)),
      exp.paradigm.example_batch(exp.config.train.batch_size))
  step = guard_nonfinite(
      functools.partial(exp.paradigm.train_step, tx=exp.tx, schedule=exp.schedule),
      config_lib.nonfinite_mode(exp.config))
  jitted = exp.frozen.jit(step, in_shardings=(exp.state_shardings, batch_sh),
                          out_shardings=(exp.state_shardings, mesh_lib.replicated(exp.mesh)),
                          donate_argnums=(0,))

  def run(state, batch):
    with mesh_lib.activate(exp.mesh):
      return jitted(state, batch)

  return run, jitted


def make_data_iterator(exp: Experiment):
  cfg = exp.config
  local_batch = pipeline.per_process_batch(
      cfg.train.batch_size, jax.process_count(), mesh_lib.data_parallel_size(exp.mesh))
  ds = pipeline.train_dataset(
      exp.dataset, split=cfg.data.train_split, pp=cfg.data.pp, batch_size=local_batch,
      seed=cfg.train.seed, process_index=jax.process_index(),
      process_count=jax.process_count())
  return iter(ds)


def make_preview_fn(exp: Experiment):
  """Jitted ``(state, rng) -> images`` for the PNG grids (``paradigm.preview``)."""
  return exp.frozen.jit(functools.partial(exp.paradigm.preview,
                                          num=exp.config.train.sample_grid))


def grid_labels(num: int, num_classes: int) -> np.ndarray:
  """Labels for a sample grid: each class in turn (a column per class in a grid of C
  columns)."""
  return (np.arange(num) % max(num_classes, 1)).astype(np.int32)


def train(config, workdir: str, devices=None, *, stop_after: Optional[int] = None,
          progress: bool = True, reset_optimizer: bool = False):
  """Trains ``config`` in ``workdir`` until ``config.train.num_steps``; resumes from
  the newest intact checkpoint there (see `checkpoint.Checkpointer`). ``stop_after``
  stops (with a checkpoint) after that many steps of this call, for tests of
  resumption. ``reset_optimizer`` resumes the parameters, EMA and data position but
  starts a fresh optimizer state (after a change of optimizer hyper-parameters that
  changes its layout, e.g. enabling grad_clip). Holds the workdir's lock
  (`lock.WorkdirLock`) while it runs. Returns the final state."""
  distributed.maybe_initialize_distributed()
  exp = build(config, devices)
  with lock_lib.WorkdirLock(workdir):
    return _train(exp, workdir, stop_after, progress, reset_optimizer)


def _say(msg: str) -> None:
  """Prints one line on process 0 (stderr, above any progress bar)."""
  if jax.process_index() == 0:
    tqdm.write(msg, file=sys.stderr)


def _train(exp, workdir, stop_after, progress, reset_optimizer):
  cfg = exp.config
  say = _say
  ckpt = checkpoint.Checkpointer(workdir, keep=cfg.train.keep_checkpoints, cleanup_tmp=True)
  data_iter = make_data_iterator(exp)
  fresh = exp.init_state if reset_optimizer else None
  state, start = ckpt.restore_newest_intact(
      exp.abstract_state, data_iter, quarantine=True, fresh_optimizer=fresh,
      all_finite=jax.jit(state_lib.all_finite), warn=say)
  if start is not None:
    logging.info("Resumed from %s at step %d", ckpt.directory, start)
    if progress and jax.process_index() == 0:
      print(f"Resuming from step {start} in {workdir}")
    if reset_optimizer:
      say("jaxgen: warning: --reset-optimizer: the parameters, EMA and data position of "
          f"step {start} are restored; the optimizer state (Adam moments, and the step "
          "count of the learning-rate schedule: warm-up runs again) starts fresh.")
  else:
    start = 0
    state = exp.init_state()
  num_steps = cfg.train.num_steps
  end = num_steps if stop_after is None else min(num_steps, start + stop_after)
  if start >= end:
    print(f"{workdir} is already at step {start} >= config.train.num_steps={num_steps}; "
          "pass a larger --config.train.num_steps to train on. Nothing was changed.")
    ckpt.close()
    return state
  # A resumed run must see the frozen networks (tokenizer) it was trained with.
  frozen_lib.check_record(workdir, exp.frozen.networks)
  checkpoint.write_config(workdir, cfg)  # only a run that trains, with a fitting config
  frozen_lib.write_record(workdir, exp.frozen.networks)
  if jax.process_index() == 0:  # what sampling elsewhere needs of the data (load_run)
    fileio.write_text(os.path.join(workdir, datasets.SPEC_FILE),
                      json.dumps(datasets.spec_to_dict(exp.dataset), indent=1))
  step_fn, _ = make_train_step(exp)
  sample_fn = make_preview_fn(exp) if cfg.train.sample_every > 0 else None
  writer = MetricWriter(workdir, start_step=start)
  pbar = tqdm(total=num_steps, initial=start, disable=not progress or jax.process_index() != 0,
              unit="step", dynamic_ncols=True, desc="train")
  pending, t_last, step = [], time.perf_counter(), start
  unchecked = []  # (step, finite flag) of the steps not yet checked on the host
  stop_on_nonfinite = config_lib.nonfinite_mode(cfg) == "stop"
  finished = False
  try:
    with preemption.PreemptionGuard() as guard:
      for step in range(start, end):
        batch = mesh_lib.global_batch(next(data_iter), exp.mesh)
        state, metrics = step_fn(state, batch)
        done = step + 1
        finite = metrics.pop("finite")
        if stop_on_nonfinite:
          unchecked.append((done, finite))
        pending.append(metrics)
        if progress:  # wait for the step so the bar's steps/s is the real rate
          jax.block_until_ready(metrics["loss"])
        pbar.update(1)
        ckpt.poll()  # a failed background save stops the run here, at once
        stop = guard.should_stop(done)
        save = done % cfg.train.ckpt_every == 0 or done == end or stop
        log = done % cfg.train.log_every == 0 or done == end
        if stop_on_nonfinite and (save or log):  # nothing non-finite is logged or saved
          _check_finite(unchecked, ckpt, cfg)
          unchecked = []
        if log:
          t_last = _log(writer, pbar, pending, done, t_last, cfg.train.batch_size)
          pending = []
        if sample_fn is not None and (done % cfg.train.sample_every == 0 or done == num_steps):
          _write_samples(exp, sample_fn, state, workdir, done, writer)
          t_last = time.perf_counter()  # keep sampling time out of steps/s
        if save:
          ckpt.save(done, state, data_iter, cfg, force=True)
        if stop:
          ckpt.wait()
          msg = (f"Stopped by signal after step {done}; checkpoint saved in {ckpt.directory}."
                 " Run the same command again to resume.")
          pbar.write(msg)
          logging.warning(msg)
          break
    ckpt.wait()
    finished = True
  finally:
    pbar.close()
    writer.close()
    if finished:
      ckpt.close()
    else:  # an error is on its way out: finish the saves in flight, raise only it
      try:
        ckpt.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Closing the checkpointer after an error: %s", e)
  return state


def _check_finite(unchecked, ckpt, cfg) -> None:
  """Raises `errors.DivergedError` (a FloatingPointError) at the first non-finite step
  of ``unchecked``, naming the newest checkpoint (only finite states are saved)."""
  flags = jax.device_get([f for _, f in unchecked])
  bad = [s for (s, _), ok in zip(unchecked, flags) if not ok]
  if not bad:
    return
  ckpt.wait()
  latest = ckpt.latest_step()
  where = (f"the newest checkpoint, step {latest} in {ckpt.directory}, is finite and "
           "training resumes from it" if latest is not None else
           "no checkpoint was saved yet")
  clip = ("" if cfg.optim.grad_clip > 0 else
          " or enable clipping with --config.optim.grad_clip=1.0 --reset-optimizer;")
  raise errors.DivergedError(
      f"Training diverged: the loss, parameters or EMA became non-finite at step "
      f"{bad[0]}. Training stopped without saving that state; {where}. Lower --config.optim.lr and run the "
      f"same command again;{clip} or pass --config.train.nonfinite=skip to skip such "
      "steps.")


def _log(writer, pbar, pending, step, t_last, batch_size):
  now = time.perf_counter()
  metrics = jax.device_get(pending)
  # Means over the interval; the number of skipped non-finite steps is a count.
  mean = {k: float((np.sum if k == "nonfinite_skipped" else np.mean)([m[k] for m in metrics]))
          for k in metrics[0]}
  if not np.isfinite(mean["loss"]):  # only with nonfinite="skip": the state was kept
    mean["loss"] = float(np.nanmean([m["loss"] for m in metrics]))
  steps_per_s = len(pending) / max(now - t_last, 1e-9)
  mean.update(steps_per_sec=steps_per_s, examples_per_sec=steps_per_s * batch_size)
  writer.write_scalars(step, mean)
  pbar.set_postfix(loss=f"{mean['loss']:.4f}", refresh=False)
  return now


def _write_samples(exp, sample_fn, state, workdir, step, writer):
  cfg = exp.config
  n = cfg.train.sample_grid
  rng = jax.random.PRNGKey(cfg.train.seed + 1)  # same noise every time: comparable grids
  with mesh_lib.activate(exp.mesh):
    x = sample_fn(state, rng)
  x = mesh_lib.to_host(x)
  if jax.process_index() != 0:
    return
  imgs = images_lib.to_uint8(x)
  ncols = exp.paradigm.preview_columns(n)
  path = os.path.join(workdir, "samples", f"step_{step:07d}")
  if imgs.ndim == 5:  # videos (N, T, H, W, C): an animated GIF; TensorBoard gets frame 0
    grid = images_lib.save_gif(path + ".gif", imgs, ncols=ncols)[0]
  else:
    grid = images_lib.save_grid(path + ".png", imgs, ncols=ncols)
  writer.write_image(step, "samples", grid)
