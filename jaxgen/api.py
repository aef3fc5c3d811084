"""The Python API: a trained run, loaded from its workdir, to sample or tokenize with.

  import jaxgen
  run = jaxgen.load("runs/qs")                     # newest checkpoint, EMA weights
  images, labels = run.sample(num=16, seed=0)      # uint8 NHWC, each class in turn
  images, labels = run.sample(labels=[3] * 8, steps=10, solver="euler")
  run.save("runs/qs/mine.npz", images, labels)     # .npz + a PNG grid beside it

A tokenizer run (or a token model, through its tokenizer) encodes and decodes:
``codes = run.encode(images)``, ``images = run.decode(codes)``. Nothing reads the
training data (`generate.load_run` with ``data=False``), so a copied workdir suffices.
``import jaxgen`` stays light: this module (and JAX) load on the first ``jaxgen.load``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from jaxgen import generate
from jaxgen import images as images_lib


class Run:
  """A trained run: its config, checkpoint step and weights, and what it can do.

  Attributes:
    workdir: the run's directory.
    experiment: what `train.loop.build` made of its config (paradigm, mesh, ...).
    state: the restored train state.
    step: the checkpoint step restored.
    params_name: "ema" or "raw", the weights `sample` and `tokenizer` use.
  """

  def __init__(self, workdir: str, *, step: Optional[int] = None,
               params: Optional[str] = None, overrides: Sequence[Tuple[str, str]] = (),
               devices=None):
    """Loads ``workdir``'s newest (or ``step``) intact checkpoint.

    Args:
      workdir: a directory ``jaxgen train`` wrote.
      step: a checkpoint step; None = the newest intact one.
      params: "ema" or "raw"; None = the paradigm's default (EMA for generators, the
        trained weights for tokenizers).
      overrides: ``(field, value)`` pairs applied to the stored config, as the command
        line's ``--config.field=value``.
      devices: the devices to load onto; None = all.
    """
    if params not in (None, "ema", "raw"):
      raise ValueError(f"params={params!r}; use 'ema' or 'raw'.")
    self.workdir = workdir
    self.experiment, self.state, self.step = generate.load_run(
        workdir, overrides, step=step, devices=devices, data=False)
    self.params_name = params or self.paradigm.default_params
    self._tokenizer = None

  def __repr__(self) -> str:
    c = self.config
    return (f"Run({self.workdir!r}, step={self.step}, {c.paradigm.name} "
            f"{c.model.name} {c.model.get('variant', '') or ''}".rstrip() + ")")

  # -- what the run is ---------------------------------------------------------------
  @property
  def config(self):
    """The run's config (the stored ``config.json`` with any overrides)."""
    return self.experiment.config

  @property
  def paradigm(self):
    return self.experiment.paradigm

  @property
  def num_classes(self) -> int:
    """Classes of the run's data; label ``num_classes`` is the unconditional one."""
    return self.paradigm.num_classes

  @property
  def image_shape(self) -> Tuple[int, ...]:
    """(H, W, C) of the images the run generates or reconstructs."""
    return tuple(self.paradigm.image_shape)

  @property
  def params(self) -> Any:
    """The weights in use (``params_name``)."""
    return self.state.ema_params if self.params_name == "ema" else self.state.params

  # -- sampling ----------------------------------------------------------------------
  def sample(self, num: Optional[int] = None, labels=None, prompts=None, seed: int = 0,
             batch_size: Optional[int] = None, progress: bool = False,
             **sampler_options) -> Tuple[np.ndarray, np.ndarray]:
    """Generates images; the same arguments give the same images.

    Args:
      num: how many; None = one per label or prompt given, else 16.
      labels: one class label per sample, or one label for all; None = each class in
        turn (text runs: the null label).
      prompts: text runs: a prompt, or prompts cycled to ``num``.
      seed: the random seed (chunk ``i`` of ``batch_size`` uses ``fold_in(seed, i)``).
      batch_size: samples per compiled call; None = ``config.sample.batch_size``.
      progress: show a progress bar.
      **sampler_options: the paradigm's sampler settings (``steps``, ``cfg_scale``,
        ``solver``, ``shift``, ...); unset ones come from ``config.sample``.

    Returns:
      ``(images, labels)``: uint8 (num, H, W, C) and int32 (num,).
    """
    self.paradigm.require("samples", "Run.sample (a tokenizer run: encode / decode)",
                          self.config, self.workdir)
    if isinstance(prompts, str):
      prompts = [prompts]
    if labels is not None and np.ndim(labels) == 0:
      labels = [int(labels)] * (num or 16)
    if num is None:
      num = len(labels) if labels is not None else len(prompts) if prompts else 16
    if prompts is not None:
      prompts = [prompts[i % len(prompts)] for i in range(num)]
    return generate.generate(
        self.experiment, self.params, num=num, seed=seed, labels=labels, prompts=prompts,
        batch_size=batch_size or self.config.sample.batch_size, progress=progress,
        step=self.step, **sampler_options)

  def save(self, path: str, images: np.ndarray, labels: Optional[np.ndarray] = None,
           ncols: Optional[int] = None, prompts=None) -> str:
    """Writes ``images`` (uint8 NHWC) to ``path`` (.npz, as ``jaxgen sample``: what
    ``jaxgen eval --samples`` reads) and a PNG grid beside it; returns the PNG's path."""
    if labels is None:
      labels = np.full(len(images), self.num_classes, np.int32)
    return generate.save_samples(path, np.asarray(images), np.asarray(labels),
                                 ncols=ncols, prompts=prompts)

  # -- tokenizers --------------------------------------------------------------------
  @property
  def tokenizer(self):
    """The run's `jaxgen.tokenizers.base.Tokenizer`: the run itself for a tokenizer run,
    the frozen one a token model decodes with, else None."""
    if self._tokenizer is None:
      if self.paradigm.can("reconstructs", self.config):
        from jaxgen.tokenizers import base  # pylint: disable=g-import-not-at-top
        self._tokenizer = base.Tokenizer.from_run(self.experiment, self.state,
                                                  self.workdir, self.params_name)
      else:
        self._tokenizer = getattr(self.paradigm, "tokenizer", None)
    return self._tokenizer

  def _need_tokenizer(self):
    if self.tokenizer is None:
      raise ValueError(f"{self.workdir} holds a {self.config.paradigm.name!r} run, which "
                       "has no tokenizer to encode or decode with.")
    return self.tokenizer

  def encode(self, images: Union[np.ndarray, jax.Array]):
    """Codes (or scaled latents) of ``images``: uint8 [0, 255] or float [-1, 1], NHWC
    of `image_shape` (see `Tokenizer.encode` for the codes' layout)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 127.5 - 1.0
    return self._need_tokenizer().encode(images)

  def decode(self, codes) -> np.ndarray:
    """uint8 NHWC images decoded from ``codes`` (as `encode` returns them)."""
    return images_lib.to_uint8(self._need_tokenizer().decode(codes))


def load(workdir: str, **kwargs) -> Run:
  """`Run` of ``workdir`` (keyword arguments: ``step``, ``params``, ``overrides``,
  ``devices``)."""
  return Run(workdir, **kwargs)
