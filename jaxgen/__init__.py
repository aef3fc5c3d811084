"""jaxgen: generative image and video models in JAX/Flax, one design for all paradigms.

Import the sub-packages you need; `jaxgen.registry` maps config names to factories.
``jaxgen.load(workdir)`` returns a trained run to sample from (`jaxgen.api.Run`); it
and ``jaxgen.Run`` are imported on first use, so ``import jaxgen`` stays light.
"""

__version__ = "0.1.0"

_LAZY = ("load", "Run")


def __getattr__(name):
  if name in _LAZY:
    from jaxgen import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'jaxgen' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
