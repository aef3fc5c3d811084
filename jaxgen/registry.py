"""Name -> factory registries for models, paradigms and preprocessing ops.

Configs name things by string (``config.model.name = "dit"``); the registry turns the
string into the class or function. Modules register themselves on import, and
``import_all()`` imports every module that registers something, so a lookup never
depends on import order.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable, Dict, Optional, Sequence

from jaxgen.errors import ConfigError


class UnknownNameError(ConfigError, KeyError):
  """A config names something no registry holds (a ConfigError, and a KeyError for
  callers that look names up); the message lists the known names."""
  __str__ = Exception.__str__  # the message as written, not KeyError's repr of it


class Registry:
  """A named table of factories with helpful errors for unknown names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._table: Dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    """Decorator that registers ``obj`` under ``name``."""

    def wrap(obj):
      if name in self._table and self._table[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._table[name] = obj
      return obj

    return wrap

  def get(self, name: str) -> Any:
    import_all()
    if name not in self._table:
      close = difflib.get_close_matches(name, self._table, n=3)
      hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
      raise UnknownNameError(
          f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._table))}."
      )
    return self._table[name]

  def names(self):
    import_all()
    return sorted(self._table)

  def __contains__(self, name: str) -> bool:
    import_all()
    return name in self._table


MODELS = Registry("model")
# model name -> the names ``config.model.variant`` may take (its named sizes), so that
# a config is checked before anything is built; filled by `register_variants`.
_MODEL_VARIANTS: Dict[str, Sequence[str]] = {}
_MODEL_FIELDS: Dict[str, Dict[str, Any]] = {}
PARADIGMS = Registry("paradigm")
PREPROCESS_OPS = Registry("preprocessing op")
DATASETS = Registry("dataset")
TEXT_ENCODERS = Registry("text encoder")

# Where registering modules live: every module of these packages (and the module
# ``jaxgen.text_encoders``) is imported by `import_all`, so a new model, paradigm,
# dataset or preprocessing op registers itself by being there, with no list to edit.
REGISTERING_PACKAGES = ("jaxgen.models", "jaxgen.paradigms", "jaxgen.tokenizers",
                        "jaxgen.data", "jaxgen.text_encoders")
_imported = False


def register_variants(model_names: Sequence[str], variants: Sequence[str]) -> None:
  """Declares the named sizes of the models ``model_names``: their field
  ``config.model.variant`` (default None: sizes given field by field)."""
  for name in model_names:
    _MODEL_VARIANTS[name] = tuple(variants)
    _MODEL_FIELDS.setdefault(name, {}).setdefault("variant", None)


def register_model_fields(model_names: Sequence[str], fields: Dict[str, Any]) -> None:
  """Declares the ``config.model`` fields (with defaults) the models ``model_names``
  read beyond their sizes; `jaxgen.config.fill_defaults` adds those a config lacks."""
  for name in model_names:
    _MODEL_FIELDS.setdefault(name, {}).update(fields)


def model_fields(model_name: str) -> Dict[str, Any]:
  """The declared ``config.model`` fields of model ``model_name`` (see
  `register_model_fields`)."""
  import_all()
  return dict(_MODEL_FIELDS.get(model_name, {}))


def model_variants(model_name: str) -> Optional[Sequence[str]]:
  """The named sizes of model ``model_name``; None if it declares none."""
  import_all()
  return _MODEL_VARIANTS.get(model_name)


def import_all() -> None:
  global _imported
  if _imported:
    return
  _imported = True
  for name in REGISTERING_PACKAGES:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(package, "__path__", ()), name + "."):
      importlib.import_module(info.name)
