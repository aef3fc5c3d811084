"""Load a trained run from its workdir and generate samples (``jaxgen sample``)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxgen import config as config_lib
from jaxgen import errors
from jaxgen import fileio
from jaxgen import frozen as frozen_lib
from jaxgen import images as images_lib
from jaxgen.data import datasets
from jaxgen.samplers import loop as loop_lib
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base
from jaxgen.train import checkpoint
from jaxgen.train import state as state_lib
from jaxgen.train import loop


def fit_mesh(config, devices=None):
  """The run's mesh if it fits the devices here, else pure data parallelism over them
  (a run trained on a pod is sampled on one host, and the other way round)."""
  try:
    mesh_lib.make_mesh(config.mesh, devices)
  except ValueError:
    axes = [a for a in ("context", "tensor") if a in config.mesh]  # older runs: no context
    config = config_lib.apply_overrides(
        config, [("mesh.data", "-1"), ("mesh.fsdp", "1")] + [(f"mesh.{a}", "1") for a in axes])
  return config


def load_run(workdir: str, overrides=(), step: Optional[int] = None, devices=None,
             data: bool = True):
  """``(experiment, state, step)`` of the newest (or given) checkpoint in ``workdir``,
  on ``devices`` (default: all).

  ``data=False`` only describes the dataset (the ``dataset.json`` the training run
  wrote, else `datasets.describe`: shapes and classes) instead of preparing and
  reading it, for sampling and frozen use on a machine that
  has the workdir but not the training data; ``exp.dataset`` then reads no examples.
  A token run still needs its tokenizer's workdir (to decode codes), and without the
  codes' ``tokens.json`` only ``config.tokenizer.workdir`` names it.
  """
  stored = checkpoint.read_config(workdir)
  if stored is None:
    raise FileNotFoundError(f"{workdir} holds no config.json: is it a jaxgen workdir? "
                            "Train first with `jaxgen train --config C --workdir DIR`.")
  config = config_lib.apply_overrides(config_lib.from_dict(stored), overrides)
  config = fit_mesh(config, devices)
  spec = None
  spec_path = os.path.join(workdir, datasets.SPEC_FILE)
  if not data and fileio.isfile(spec_path):  # the description the training run recorded
    spec = datasets.spec_from_dict(json.loads(fileio.read_text(spec_path)))
  exp = loop.build(config, devices, load_data=data, dataset=spec)
  frozen_lib.check_record(workdir, exp.frozen.networks)  # the tokenizer it was trained with
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  if step is not None and step not in ckpt.all_steps():
    raise FileNotFoundError(f"{workdir} has no checkpoint of step {step} (it has "
                            f"{sorted(ckpt.all_steps())}).")
  # The newest checkpoint whose files match their manifest and whose arrays are
  # finite; a damaged newer one is reported in one line and left where it is.
  state, step = ckpt.restore_newest_intact(
      exp.abstract_state, steps=None if step is None else [step],
      all_finite=jax.jit(state_lib.all_finite))
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint yet.")
  return exp, state, step


def generate(exp, params, *, num: int, seed: int, labels: Optional[np.ndarray] = None,
             batch_size: int = 500, progress: bool = True, prompts=None,
             step: Optional[int] = None, frames: Optional[np.ndarray] = None,
             **sample_kwargs):
  """``num`` samples as uint8 NHWC and their labels; deterministic in ``seed``.

  Labels default to a balanced cycle over the classes. Chunk ``i`` uses the key
  ``fold_in(PRNGKey(seed), i)``, so the same seed and batch size give the same samples.
  ``prompts`` (text-conditioned runs): one prompt per sample, encoded with the run's
  text encoder; the returned labels are then ``labels`` or, if None, the null label.
  ``step``: the checkpoint step of ``params``, named in errors. ``frames`` (video
  runs that continue given frames, `Paradigm.given_frames`): (num, F, H, W, C) first
  frames in [-1, 1] (`given_frames`), kept at the start of every sample.

  Raises:
    NonFiniteSamplesError: a chunk of samples holds NaN or inf (checked on the host
      before the conversion to uint8, which would turn them into black pixels).
  """
  nc = exp.paradigm.num_classes
  if prompts is not None:
    return _generate_text(exp, params, num=num, seed=seed, labels=labels, prompts=prompts,
                          batch_size=batch_size, progress=progress, step=step,
                          **sample_kwargs)
  labels = loop.grid_labels(num, nc) if labels is None else np.asarray(labels, np.int32)
  if len(labels) != num:
    raise ValueError(f"{len(labels)} labels for {num} samples.")
  if labels.max(initial=0) > nc or labels.min(initial=0) < 0:
    raise ValueError(f"labels must be in [0, {nc}] ({nc} = unconditional).")
  cond = labels
  if frames is not None:
    if len(frames) != num:
      raise ValueError(f"{len(frames)} given first frames for {num} samples.")
    cond = {"label": labels, "frames": np.asarray(frames, np.float32)}
  images = _sample_in_chunks(exp, params, cond, num=num, seed=seed,
                             batch_size=batch_size, progress=progress, step=step,
                             **sample_kwargs)
  return images, labels


def given_frames(exp, source: str, num: int, data_config=None):
  """``(frames, labels)``: the first `Paradigm.given_frames` frames (in [-1, 1]) of
  ``num`` videos to continue, and their labels. ``source``: a split of the run's
  dataset (e.g. ``test``: its first ``num`` videos, preprocessed as in training), or an
  .npz of uint8 (N, T, H, W, C) videos (``arr_0``, optional ``labels``; cycled to
  ``num``) at the run's frame size."""
  p = exp.paradigm
  count = p.given_frames()
  if not count:
    raise config_lib.ConfigError(
        f"This {p.name!r} run cannot continue given frames: it needs a video run trained "
        "with config.paradigm.context_frames > 0 (flow, diffusion), or a maskgit / mage "
        "run on a video tokenizer's codes.")
  shape = tuple(p.image_shape)
  if source.endswith(".npz"):
    from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
    videos, labels = evaluate.load_samples(source, video=True)
    if videos.shape[2:] != shape[1:] or videos.shape[1] < count:
      raise errors.DataError(f"{source}: videos of {videos.shape[1:]}; this run continues "
                             f"the first {count} frames of {shape[1:]} videos.")
    idx = np.arange(num) % len(videos)
    x = videos[idx, :count].astype(np.float32) / 127.5 - 1.0
    return x, (None if labels is None else np.asarray(labels)[idx].astype(np.int32))
  data_cfg = data_config if data_config is not None else tok_base.image_data_config(
      exp.config)
  spec = datasets.get_dataset(data_cfg)
  if source not in spec.splits:
    raise config_lib.ConfigError(f"--given-frames {source}: give a split of {spec.name} "
                                 f"({', '.join(sorted(spec.splits))}) or an .npz of videos.")
  if num > spec.splits[source]:
    raise config_lib.ConfigError(f"--given-frames {source}: {num} videos asked, the split "
                                 f"has {spec.splits[source]}.")
  from jaxgen.data import pipeline  # pylint: disable=g-import-not-at-top
  xs, ys, done = [], [], 0
  for batch in pipeline.eval_dataset(spec, split=source, pp=data_cfg.pp,
                                     batch_size=min(num, 256)):
    xs.append(np.asarray(batch["image"][:num - done, :count], np.float32))
    ys.append(np.asarray(batch["label"][:num - done], np.int32))
    done += len(xs[-1])
    if done >= num:
      break
  return np.concatenate(xs), np.concatenate(ys)


def check_finite(x: np.ndarray, *, done: int, num: int, step: Optional[int] = None
                 ) -> None:
  """Raises NonFiniteSamplesError if any sample (leading axis) of the float host array
  ``x`` holds NaN or inf; ``done`` samples (``x`` included) of ``num`` are sampled."""
  bad = int((~np.isfinite(x.reshape(len(x), -1)).all(axis=1)).sum())
  if not bad:
    return
  of = f"the {num}" if done >= num else f"the first {done} (of {num})"
  where = "" if step is None else f" from checkpoint step {step}"
  raise errors.NonFiniteSamplesError(
      f"{bad} of {of} samples{where} hold NaN or inf values; nothing was written. The "
      "weights or the sampler diverged: try another checkpoint, the raw weights "
      "(--params raw), or other sampler settings (fewer --steps, another --solver, a "
      "lower --cfg-scale).")


def sample_fn(exp, **sample_options):
  """``(params, rng, cond) -> images`` jitted, with the paradigm's frozen networks
  (tokenizer, text encoder) as arguments of the program (`jaxgen.frozen`), and the
  paradigm's sampling options overridden by ``sample_options`` (checked here, before
  anything compiles)."""
  options = exp.paradigm.sample_options(**sample_options)
  p = exp.paradigm

  def fn(params, rng, cond):
    if isinstance(cond, dict) and "frames" in cond:  # given first frames (`generate`)
      return p.sample_from_frames(params, rng, cond["label"], cond["frames"], options)
    return p.sample(params, rng, cond, options)

  return exp.frozen.jit(fn)


def _sample_in_chunks(exp, params, cond, *, num, seed, batch_size, progress,
                      step=None, **sample_kwargs):
  """``exp.paradigm.sample`` over ``cond`` (labels, or a dict of arrays, leading axis
  ``num``) in chunks of ``batch_size`` as uint8 images. Chunk ``i`` uses the key
  ``fold_in(PRNGKey(seed), i)``; the last chunk is padded with copies of its first row
  to keep one compiled shape. Stops at the first chunk with a non-finite sample
  (`check_finite`).

  The progress bar ticks once per sampler step (a host callback from the shared
  sampler loop, `loop.report_steps`): ``chunks x steps`` in all, with the images done
  beside it. The chunk is the unit of randomness, so its default
  (``config.sample.batch_size``) is not shrunk for the bar's sake: that would change
  every seed's samples.
  """
  batch_size = min(batch_size, num)
  chunks = -(-num // batch_size)
  key = jax.random.PRNGKey(seed)
  out = []
  with tqdm(total=None, desc="sample", unit="step", disable=not progress) as bar:
    if needs_micro_batch(exp, batch_size, sample_kwargs, cond):
      first = jax.tree.map(lambda v: np.asarray(v[:batch_size]), cond)
      bar.set_postfix_str("measuring the fastest rows per network call")
      rows, report = pick_micro_batch(exp, params, first, **sample_kwargs)
      sample_kwargs = {**sample_kwargs, "micro_batch": rows}
      if progress:
        bar.write(f"sample: {rows} rows per network call of the {batch_size}-image "
                  f"chunks ({report}); set --sample.micro_batch to choose")
    ticker = _StepTicker(bar, chunks)
    bar.set_postfix_str(f"0/{num} images, {batch_size} per call; the first compiles")
    with loop_lib.report_steps(ticker if progress else None):
      fn = sample_fn(exp, **sample_kwargs)
      for i, start in enumerate(range(0, num, batch_size)):
        c = jax.tree.map(lambda v: np.asarray(v[start:start + batch_size]), cond)
        n = jax.tree.leaves(c)[0].shape[0]
        if n < batch_size:
          c = jax.tree.map(lambda v: np.concatenate([v, np.repeat(v[:1], batch_size - n, 0)]),
                           c)
        ticker.chunk = i
        with mesh_lib.activate(exp.mesh):
          x = fn(params, jax.random.fold_in(key, i), jax.tree.map(jnp.asarray, c))
        x = np.asarray(mesh_lib.to_host(x), np.float32)[:n]
        check_finite(x, done=start + n, num=num, step=step)
        out.append(images_lib.to_uint8(x))
        ticker.chunk_done()
        bar.set_postfix_str(f"{start + n}/{num} images", refresh=True)
  return np.concatenate(out)


def needs_micro_batch(exp, batch_size: int, sample_kwargs, cond=None) -> bool:
  """Whether `pick_micro_batch` should choose the rows per network call: the sampler
  takes ``micro_batch`` (`samplers.microbatch`), it is 0 (not chosen) and the chunk has
  more rows than the smallest candidate."""
  options_cls = getattr(exp.paradigm, "Options", None)
  if options_cls is None or "micro_batch" not in options_cls.names():
    return False
  if isinstance(cond, dict) and "frames" in cond:  # one call: the frames' closure
    return False
  options = exp.paradigm.sample_options(**sample_kwargs)
  return options.micro_batch == 0 and batch_size >= MICRO_BATCH_MIN_CHUNK


MICRO_BATCH_SMALLEST = 8    # the smallest rows per call worth measuring
MICRO_BATCH_MIN_CHUNK = 64  # smaller chunks run in one call without measuring
MICRO_BATCH_TIMED_ROWS = 100  # a candidate is timed on this many rows (or its own)


def _available_bytes(device) -> Optional[int]:
  """Free memory of ``device``: an accelerator's allocator limit less what is in use;
  on CPU the host's MemAvailable; None when unknown."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def pick_micro_batch(exp, params, cond, **sample_kwargs):
  """``(rows, report)``: the rows per network call (`samplers.microbatch`) that run one
  sampler step over the chunk ``cond`` fastest here, among `candidate_rows` (ascending;
  stopping once two in a row are slower than the best) whose program fits in the free
  device memory (the smallest if none is known to fit). The samples do not depend on
  it up to float rounding (bitwise: the same ``micro_batch``; the choice is printed,
  ``--sample.micro_batch`` fixes it). A multi-process run does not measure (one call
  on the whole chunk: each process would stop at its own candidates).

  A candidate's speed is a property of its calls, not of the chunk: it is timed on the
  first ``k * rows`` rows of the chunk (``k`` calls, about `MICRO_BATCH_TIMED_ROWS`
  rows, or one call of a larger candidate) and scaled to the chunk, so measuring costs
  a few calls per candidate rather than two steps of the whole chunk (which took 30-60
  s here before, a third of a 10-step quickstart sampling); its memory is the timed
  program's scaled to the chunk (an upper bound)."""
  from jaxgen.samplers import microbatch  # pylint: disable=g-import-not-at-top
  batch = jax.tree.leaves(cond)[0].shape[0]
  if jax.process_count() > 1:
    # Each process would time (and stop at) its own candidates: a sharded program one
    # process runs and another does not would hang. One call on the whole chunk.
    return batch, "several processes: not measured"
  base = exp.paradigm.sample_options(**sample_kwargs)
  key = jax.random.PRNGKey(0)
  free = _available_bytes(jax.local_devices()[0])
  times, worse = {}, 0
  # The network calls only: a latent run's decoder is not split, and compiling it for
  # every candidate cost minutes.
  undecoded = getattr(exp.paradigm, "undecoded", contextlib.nullcontext)
  for rows in microbatch.candidate_rows(batch, MICRO_BATCH_SMALLEST):
    if worse >= 2:  # slower twice in a row than the best so far: larger is not faster
      break
    timed = rows * min(max(1, -(-MICRO_BATCH_TIMED_ROWS // rows)), batch // rows)
    options = base.replace(exp.config.paradigm.name, steps=1, micro_batch=rows)
    fn = exp.frozen.jit(lambda p, r, c, o=options: exp.paradigm.sample(p, r, c, o))
    c = jax.tree.map(lambda v: jnp.asarray(v[:timed]), cond)
    with mesh_lib.activate(exp.mesh), undecoded():
      compiled = fn.lower(params, key, c).compile()
      mem = compiled.memory_analysis()
      need = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
      if free is not None and need * batch / timed > free and times:
        continue
      jax.block_until_ready(compiled(params, key, c))  # warm
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(params, key, c))
      times[rows] = (time.perf_counter() - t0) * batch / timed
      worse = worse + 1 if times[rows] > 1.05 * min(times.values()) else 0
  rows = min(times, key=times.get)
  report = ", ".join(f"{r}: {1e3 * t:.0f} ms" for r, t in sorted(times.items()))
  return rows, f"one step of the chunk takes {report}"


class _StepTicker:
  """The sampler loop's per-step host callback: one tick per (chunk, loop, step), also
  when a sharded program calls it once per device; the bar's total (chunks x steps per
  chunk) is known after the first chunk."""

  def __init__(self, bar, chunks: int):
    self.bar, self.chunks, self.chunk = bar, chunks, 0
    self._seen = set()
    self._per_chunk = 0

  def __call__(self, i, num_steps: int) -> None:
    key = (self.chunk, num_steps, int(i))
    if key in self._seen:
      return
    self._seen.add(key)
    if self.chunk == 0:
      self._per_chunk += 1
    self.bar.update(1)

  def chunk_done(self) -> None:
    if self.chunk == 0 and self._per_chunk:
      self.bar.total = self._per_chunk * self.chunks
      self.bar.refresh()


def _generate_text(exp, params, *, num, seed, labels, prompts, batch_size, progress,
                   step=None, **sample_kwargs):
  """`generate` for a text-conditioned run: the prompts are encoded once, then sampled
  in chunks of ``batch_size`` (the last one padded to keep one compiled shape)."""
  cond_fn = exp.paradigm.conditioner
  if getattr(cond_fn, "kind", "label") != "text":
    raise ValueError("Prompts given, but this run is not text-conditioned (no "
                     "config.text.encoder); sample it with labels.")
  prompts = list(prompts)
  if len(prompts) != num:
    raise ValueError(f"{len(prompts)} prompts for {num} samples.")
  nc = exp.paradigm.num_classes
  labels = np.full(num, nc, np.int32) if labels is None else np.asarray(labels, np.int32)
  cond = cond_fn.encode(prompts)
  images = _sample_in_chunks(exp, params, cond, num=num, seed=seed, batch_size=batch_size,
                             progress=progress, step=step, **sample_kwargs)
  return images, labels


def read_prompts(path: str):
  """Prompts from a text file, one per line (blank lines = the null text "")."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Prompts file {path} does not exist.")
  with open(path, encoding="utf-8") as f:
    prompts = [line.rstrip("\n") for line in f]
  while prompts and not prompts[-1].strip():
    prompts.pop()
  if not prompts:
    raise ValueError(f"{path} holds no prompts (one per line).")
  return prompts


def adm_target(config):
  """``(native_shape, pp)`` of the images behind a run of ``config`` (a token or latent
  run's: its tokenizer's), for `adm_images`; described, not read."""
  image_cfg = tok_base.image_data_config(config)
  return datasets.describe(image_cfg).image_shape, image_cfg.get("pp", "")


def grid_columns(num: int, num_classes: int, prompts=None) -> Optional[int]:
  """Columns of a samples grid: a column per class when every class has a row; a
  column per prompt when the prompts cycle evenly (<= 16 of them); 10 of one prompt."""
  if prompts is None:
    return num_classes if num >= num_classes * num_classes else None
  k = len(dict.fromkeys(prompts))
  return min(num, 10) if k == 1 else (k if num % k == 0 and k <= 16 else None)


def adm_images(images_uint8: np.ndarray, native_shape, pp: str = "") -> np.ndarray:
  """Samples in the layout the ADM evaluator (openai/guided-diffusion ``evaluations``,
  used by DiT, VAR, ...) reads: uint8 NHWC RGB at the dataset's stored size.

  It reads ``arr_0`` in batches into an Inception graph with a 3-channel input, so
  grey samples are repeated to RGB, and the model's resolution is mapped back to the
  dataset's with `evaluate.to_native` (padding cropped, else resized), as `jaxgen eval`
  does before it scores samples.

  Args:
    images_uint8: samples as `generate` returns them (the model's resolution).
    native_shape: the image dataset's (H, W, C) as stored; a latent dataset's shape
      (neither 1 nor 3 channels) keeps the decoded size.
    pp: the run's preprocessing string (``config.data.pp``), which says whether the
      pipeline padded.

  Returns:
    uint8 (N, H, W, 3), C-contiguous.
  """
  from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
  images = np.asarray(images_uint8)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"ADM layout needs uint8 NHWC grey or RGB images, got {images.dtype} "
                     f"{images.shape}.")
  if native_shape[-1] in (1, 3):
    images = evaluate.to_native(images, native_shape, pp)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return np.ascontiguousarray(images)


def save_samples(path: str, images_uint8: np.ndarray, labels: np.ndarray,
                 grid: int = 100, ncols: Optional[int] = None, prompts=None) -> str:
  """Writes ``path`` (.npz: arr_0 uint8 NHWC, or (N, T, H, W, C) for videos, labels,
  and ``prompts`` (str array) for text-conditioned samples) and a grid beside it: a PNG,
  for videos an animated GIF (`images.save_gif`). Returns the grid's path.

  ``arr_0`` is written as given: jaxgen's layout (the model's resolution and channels)
  as `generate` returns it, or the ADM evaluator's after `adm_images`. Both read back
  with `jaxgen.eval.evaluate.load_samples` (images only, so far)."""
  path = fileio.absolute(path)  # a local path or a gs://-style URI (jaxgen.fileio)
  extra = {} if prompts is None else {"prompts": np.asarray(list(prompts), dtype=str)}
  fileio.save_with(path, lambda f: np.savez(f, arr_0=images_uint8, labels=labels, **extra))
  if np.ndim(images_uint8) == 5:
    gif = os.path.splitext(path)[0] + ".gif"
    images_lib.save_gif(gif, images_uint8[:grid], ncols=ncols)
    return gif
  png = os.path.splitext(path)[0] + ".png"
  images_lib.save_grid(png, images_uint8[:grid], ncols=ncols)
  return png
