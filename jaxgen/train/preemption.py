"""SIGTERM / SIGINT handling: the loop saves a checkpoint and exits cleanly."""

from __future__ import annotations

import signal
import threading

import jax


class PreemptionGuard:
  """Sets a flag on SIGTERM/SIGINT (a second SIGINT interrupts at once).

  In multi-host runs the decision is taken at JAX's preemption sync point, so that
  every process saves the same step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False

  def _handle(self, signum, frame):
    del frame
    if self._flag.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except RuntimeError:  # preemption service not enabled
        pass
    return self._flag.is_set()
