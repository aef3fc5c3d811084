"""The shared scan-based sampler loop and its step functions (ODE, later MaskGIT/AR)."""

from jaxgen.samplers.loop import run_loop, run_loop_python
