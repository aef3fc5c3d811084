"""Multi-host initialisation: `jax.distributed.initialize()` when a cluster is found."""

from __future__ import annotations

import logging
import os

import jax

_initialized = False


def cluster_detected() -> bool:
  """True when running under a multi-process launcher JAX can read (explicit env,
  SLURM with several tasks, Open MPI, or a multi-host TPU slice)."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return bool(env.get("TPU_WORKER_HOSTNAMES", "").count(","))


def maybe_initialize_distributed() -> None:
  """Calls ``jax.distributed.initialize`` once if a cluster is detected.

  Explicit set-up (e.g. two CPU processes on one machine) uses the environment
  variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
  On CPU, cross-process collectives use gloo.
  """
  global _initialized
  if _initialized or not cluster_detected():
    return
  env = os.environ
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env["JAX_PROCESS_ID"]))
  if env.get("JAX_PLATFORMS", "").startswith("cpu") or env.get("JAXGEN_CPU_COLLECTIVES"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  _initialized = True
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
