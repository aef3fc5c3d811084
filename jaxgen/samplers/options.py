"""Typed sampling options: each paradigm declares the options its sampler takes.

A paradigm's ``Options`` is a frozen dataclass (a subclass of `SampleOptions`) whose
fields are its options with their defaults, declared once: ``configs/common.py``
builds ``config.sample`` from them (`config.sample_section`), the config's values fill them
(`SampleOptions.from_config`), and a caller overrides them by name (``jaxgen sample
--sample.NAME=VALUE``, ``jaxgen.load(...).sample(NAME=VALUE)``, ``paradigm.sample(...,
NAME=VALUE)``). An option the paradigm does not have is an error naming the paradigm
and the options it has; a bad value is an error naming the option.

Fields shared by several paradigms are declared in small dataclasses here
(`Guided`, `Scheduled`, `Categorical`) and combined by inheritance, so that
``cfg_scale`` means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Dict, Sequence, Tuple

import jax

from jaxgen.errors import ConfigError
from jaxgen.samplers import cfg


def concrete(value) -> bool:
  """False for traced values (an option passed as a jit argument is checked by the
  caller that made it)."""
  try:
    bool(value == value)  # needs a concrete value
    return True
  except jax.errors.ConcretizationTypeError:
    return False


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """Base of every paradigm's options (none: a sampler with no choices, e.g. a GAN's
  one generator pass)."""

  # ``config.sample`` fields that are not options: read by the sampling driver
  # (``batch_size``), or ``ignored`` because a shared preset section also carries a
  # sibling paradigm's options (flow and diffusion share one).
  NOT_OPTIONS: ClassVar[Tuple[str, ...]] = ("batch_size",)
  ignored: ClassVar[Tuple[str, ...]] = ()

  @classmethod
  def names(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def defaults(cls) -> Dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}

  @classmethod
  def from_config(cls, sample_cfg, owner: str, where: str = "config.sample"
                  ) -> "SampleOptions":
    """The options ``sample_cfg`` (``config.sample``) sets, over the declared defaults;
    a field that is none of them (nor ``NOT_OPTIONS`` or ``ignored``) is an error."""
    given = dict(sample_cfg or {})
    for name in cls.NOT_OPTIONS + cls.ignored:
      given.pop(name, None)
    return cls().replace(owner, where=where, **given)

  def replace(self, owner: str, where: str = "sample", **overrides) -> "SampleOptions":
    """These options with ``overrides`` (None = keep), type-converted (the CLI gives
    strings) and checked. ``owner`` names the paradigm in errors, ``where`` the
    options' origin (``config.sample`` or the ``sample`` flags)."""
    unknown = [k for k in overrides if k not in self.names()]
    if unknown:
      has = (f"its options are {', '.join(self.names())}" if self.names()
             else "it takes no sampling options")
      raise ConfigError(f"{where}.{unknown[0]}: the {owner!r} paradigm has no sampling "
                        f"option {unknown[0]!r}; {has}.")
    hints = typing.get_type_hints(type(self))
    given = {k: _convert(f"{where}.{k}", v, hints[k]) for k, v in overrides.items()
             if v is not None}
    out = dataclasses.replace(self, **given)
    out.check(where)
    return out

  def check(self, where: str) -> None:
    """Raises `ConfigError` for a bad value (``where``: the prefix to name it by)."""


def _convert(name: str, value, kind):
  if not concrete(value) or isinstance(value, jax.Array):
    return value
  if kind is bool:
    if isinstance(value, str):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"{name}={value!r} must be true or false.")
      return value.lower() in ("true", "1")
    return bool(value)
  try:
    if kind is int and isinstance(value, float) and not value.is_integer():
      raise ValueError
    return kind(value)
  except (TypeError, ValueError):
    raise ConfigError(f"{name}={value!r} must be a {kind.__name__}.") from None


def choose(where: str, name: str, value, choices: Sequence[str]) -> None:
  """Raises `ConfigError` unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ConfigError(f"{where}.{name}={value!r}; use one of {', '.join(choices)}.")


def at_least(where: str, name: str, value, low, note: str = "") -> None:
  """Raises `ConfigError` when a concrete ``value`` is below ``low``."""
  if concrete(value) and value < low:
    raise ConfigError(f"{where}.{name}={value} must be >= {low}{note}.")


@dataclasses.dataclass(frozen=True)
class Guided(SampleOptions):
  """Classifier-free guidance: ``cfg_scale`` 1 = the conditional model alone."""
  cfg_scale: float = 1.0

  def check(self, where: str) -> None:
    super().check(where)
    at_least(where, "cfg_scale", self.cfg_scale, 0.0)


@dataclasses.dataclass(frozen=True)
class Scheduled(Guided):
  """Guidance whose scale follows `cfg.guidance_scale` over the sampler's steps."""
  cfg_schedule: str = "constant"

  def check(self, where: str) -> None:
    super().check(where)
    choose(where, "cfg_schedule", self.cfg_schedule, cfg.CFG_SCHEDULES)


@dataclasses.dataclass(frozen=True)
class MicroBatched(SampleOptions):
  """``micro_batch``: rows of a sampling chunk per network call inside the sampler
  (`jaxgen.samplers.microbatch`); the chunk stays the unit of randomness, so the
  samples are the same for any value (up to float rounding). 0: the whole chunk in
  one call, except in `jaxgen sample`, which picks the fastest that fits in memory
  (`jaxgen.generate.pick_micro_batch`)."""
  micro_batch: int = 0

  def check(self, where: str) -> None:
    super().check(where)
    at_least(where, "micro_batch", self.micro_batch, 0, " (0 = the whole chunk)")


@dataclasses.dataclass(frozen=True)
class Categorical(SampleOptions):
  """Drawing discrete codes from logits: temperature (0 = argmax), top-k (0 = off) and
  top-p (1 = off)."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def check(self, where: str) -> None:
    super().check(where)
    at_least(where, "temperature", self.temperature, 0.0)
    at_least(where, "top_k", self.top_k, 0, " (0 = off)")
    if concrete(self.top_p) and not 0.0 < self.top_p <= 1.0:
      raise ConfigError(f"{where}.top_p={self.top_p} must be in (0, 1] (1 = off).")

  def sampling(self) -> Dict[str, Any]:
    """The keyword arguments of `autoregressive.sample_logits`."""
    return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)



@dataclasses.dataclass(frozen=True)
class NoOptions(SampleOptions):
  """A sampler with no choices (a GAN's one generator pass, a tokenizer's
  reconstruction). Runs written before the paradigms had their own preset sections
  carry the denoisers' fields in ``config.sample``: they are not read."""
  ignored = ("steps", "solver", "cfg_scale", "shift", "eta", "cfg_channels",
             "clip_denoised")
