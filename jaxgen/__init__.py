"""jaxgen: generative image and video models in JAX/Flax, one design for all paradigms.

Import the sub-packages you need; `jaxgen.registry` maps config names to factories.
"""

__version__ = "0.1.0"
