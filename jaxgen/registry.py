"""Name -> factory registries for models, paradigms and preprocessing ops.

Configs name things by string (``config.model.name = "dit"``); the registry turns the
string into the class or function. Modules register themselves on import, and
``import_all()`` imports every module that registers something, so a lookup never
depends on import order.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict


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
      raise KeyError(
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
    "jaxgen.models.text_encoders",
    "jaxgen.paradigms.flow",
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
    "jaxgen.data.captions",
    "jaxgen.data.caption_embeddings",
    "jaxgen.conditioning",
)
_imported = False


def import_all() -> None:
  global _imported
  if _imported:
    return
  _imported = True
  for module in _REGISTERING_MODULES:
    importlib.import_module(module)
