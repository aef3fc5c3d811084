"""The errors a user can cause or fix: one base class, one line each at the command line.

Every ``JaxgenError`` carries a message that says what is wrong and what to do; the
``jaxgen`` command prints it as one ``jaxgen: error: ...`` line and exits with the
error's ``exit_code`` (2: a bad input or argument, fix it and rerun; 1: the run itself
failed, e.g. it diverged or a checkpoint could not be written). Library callers catch
``JaxgenError`` or the specific class. This module imports nothing from jaxgen, so every
layer may raise these.
"""

from __future__ import annotations

import importlib


class JaxgenError(Exception):
  """Base of jaxgen's user-facing errors; the message is the whole explanation."""
  exit_code = 2


class ConfigError(JaxgenError, ValueError):
  """A config or argument that cannot work: names the field and says how to fix it."""


class DataError(JaxgenError, RuntimeError):
  """Missing or malformed data: the message says what is wrong and how to fix it."""


class CheckpointError(JaxgenError, RuntimeError):
  """A workdir's checkpoints cannot be used as asked."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint in a workdir belongs to another model or config shape."""


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (disk full, permissions): the run stopped at once."""
  exit_code = 1


class WorkdirLockedError(JaxgenError, RuntimeError):
  """Another training run holds the workdir."""


class DivergedError(JaxgenError, FloatingPointError):
  """The loss, parameters or EMA became non-finite; nothing non-finite was saved."""
  exit_code = 1


class NonFiniteSamplesError(JaxgenError, FloatingPointError):
  """A sampler produced NaN/inf images; nothing was written."""
  exit_code = 1


class MissingDependencyError(JaxgenError, ImportError):
  """An optional dependency is not installed: the message names the pip extra."""


def import_optional(module: str, extra: str):
  """Imports ``module`` of the optional extra ``jaxgen[extra]``.

  Args:
    module: the module to import, e.g. ``"sentencepiece"``.
    extra: the setup.py extra that installs it, e.g. ``"text"``.

  Returns:
    The module.

  Raises:
    MissingDependencyError: it is not installed; the message says what to install.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingDependencyError(
        f"{module} is not installed ({e}); it comes with jaxgen's {extra!r} extra: "
        f"pip install 'jaxgen[{extra}]' (or pip install -e '.[{extra}]' in a clone).") from e
