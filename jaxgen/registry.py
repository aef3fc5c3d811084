"""Name -> factory registries for models, paradigms and preprocessing ops.

Configs name things by string (``config.model.name = "dit"``); the registry turns the
string into the class or function. Modules register themselves on import, and
``import_all()`` imports every module that registers something, so a lookup never
depends on import order.
"""

from __future__ import annotations

import difflib
import importlib
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
PARADIGMS = Registry("paradigm")
PREPROCESS_OPS = Registry("preprocessing op")
DATASETS = Registry("dataset")
TEXT_ENCODERS = Registry("text encoder")

# Every module that registers something; imported lazily by `import_all`.
_REGISTERING_MODULES = (
    "jaxgen.models.dit",
    "jaxgen.models.unet",
    "jaxgen.models.gan",
    "jaxgen.models.token_transformer",
    "jaxgen.models.mage",
    "jaxgen.models.ar_transformer",
    "jaxgen.models.var",
    "jaxgen.text_encoders",
    "jaxgen.paradigms.flow",
    "jaxgen.paradigms.diffusion",
    "jaxgen.paradigms.maskgit",
    "jaxgen.paradigms.mage",
    "jaxgen.paradigms.autoregressive",
    "jaxgen.paradigms.var",
    "jaxgen.paradigms.tokenizer",
    "jaxgen.paradigms.gan",
    "jaxgen.tokenizers.models",
    "jaxgen.tokenizers.precompute",
    "jaxgen.data.preprocess",
    "jaxgen.data.datasets",
    "jaxgen.data.folder",
    "jaxgen.data.captions",
    "jaxgen.data.caption_embeddings",
    "jaxgen.conditioning",
)
_imported = False


def register_variants(model_names: Sequence[str], variants: Sequence[str]) -> None:
  """Declares the named sizes (``config.model.variant``) of the models ``model_names``."""
  for name in model_names:
    _MODEL_VARIANTS[name] = tuple(variants)


def model_variants(model_name: str) -> Optional[Sequence[str]]:
  """The named sizes of model ``model_name``; None if it declares none."""
  import_all()
  return _MODEL_VARIANTS.get(model_name)


def import_all() -> None:
  global _imported
  if _imported:
    return
  _imported = True
  for module in _REGISTERING_MODULES:
    importlib.import_module(module)
