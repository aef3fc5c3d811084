"""Makes tests/data/maskgit_decode_reference.json from the official MaskGIT decoder
(run once; the test suite never needs the official code).

Runs ``maskgit/libml/parallel_decode.py`` (``decode``) with its ``mask_schedule.py``
from a local checkout of google-research/maskgit, for every schedule it has (uniform,
cosine, pow0.5, pow2, pow2.5, log, exp), grids of 16, 64, 256 and 1024 tokens, 4, 8,
12 and 16 steps, all-[MASK] starts and starts with given tokens (inpainting: a
different number known in each row), and records:

* ``counts``: how many tokens are [MASK] when the model is called at each step (what
  the schedule, the float32 flooring and the clamping of the official code give);
* ``masks``: which positions are still [MASK] after each step but the last (SHA-256
  of the boolean (B, N) arrays, steps concatenated), with the draws made
  deterministic: ``jax.random.categorical`` replaced by argmax and
  ``choice_temperature=0`` (so only the model's confidences order the tokens);
* and checks that a run with the official draws (real categorical sampling, Gumbel
  choice noise of temperature 4.5) gives the same ``counts``: they do not depend on
  the draws, so any sampler with the official arithmetic must give them.

The decode loop runs under ``jax.disable_jit()`` (its ``lax.while_loop`` is then a
Python loop and ``tokens_to_logits`` sees concrete arrays). The logits are a fixed
table the test rebuilds (`logits_table`): per position one code with a logit in
[0.5, 2.5), well separated between positions, the others 0. One shim for current JAX:
``jnp.DeviceArray`` (an annotation in ``parallel_decode.State``) is aliased to
``jax.Array``. Nothing of the official code is committed, only these numbers.

Used: google-research/maskgit at commit 1db2359 (the snapshot fetched on 2026-11-30),
jax 0.10.2, NumPy 2.x, Python 3.11.

  python3 tests/data/make_maskgit_decode_reference.py /path/to/maskgit
"""

import hashlib
import json
import os
import sys

import numpy as np

SCHEDULES = ("uniform", "cosine", "pow0.5", "pow2", "pow2.5", "log", "exp")
SIZES = (16, 64, 256, 1024)
STEPS = (4, 8, 12, 16)
CODES = 8
MASK_ID = CODES  # [MASK] is the id after the codebook, as in jaxgen


def logits_table(n: int) -> np.ndarray:
  """(2, n, CODES) float32: row b, position p: code c[b, p] at 0.5 + 2 rank / n (a
  random permutation of ranks), every other code 0."""
  rng = np.random.default_rng(n)
  out = np.zeros((2, n, CODES), np.float32)
  for b in range(2):
    codes = rng.integers(0, CODES, n)
    level = 0.5 + 2.0 * rng.permutation(n) / n
    out[b, np.arange(n), codes] = level
  return out


def start_tokens(n: int, given: bool) -> np.ndarray:
  """(2, n) int32: all [MASK], or row 0 with a quarter and row 1 with 3/5 of its
  positions given (code 0 there), chosen at random."""
  tokens = np.full((2, n), MASK_ID, np.int32)
  if given:
    rng = np.random.default_rng(1000 + n)
    for b, frac in ((0, 0.25), (1, 0.6)):
      known = rng.permutation(n)[:int(frac * n)]
      tokens[b, known] = 0
  return tokens


def _digest(masks) -> str:
  return hashlib.sha256(b"".join(np.asarray(m, np.bool_).tobytes() for m in masks)
                        ).hexdigest()


def main(maskgit_dir):
  sys.path.insert(0, maskgit_dir)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  jnp.DeviceArray = jax.Array  # removed from JAX; parallel_decode uses it as a type
  from maskgit.libml import parallel_decode  # pylint: disable=import-outside-toplevel

  def run(table, start, steps, schedule, deterministic):
    seen = []

    def tokens_to_logits(ids):
      seen.append(np.asarray(ids))
      return jnp.asarray(table)

    categorical = jax.random.categorical
    if deterministic:
      jax.random.categorical = lambda key, logits, *a, **k: jnp.argmax(logits, axis=-1)
    try:
      with jax.disable_jit():
        final = parallel_decode.decode(
            jnp.asarray(start), jax.random.PRNGKey(0), tokens_to_logits,
            mask_token_id=MASK_ID, num_iter=steps,
            choice_temperature=0.0 if deterministic else 4.5,
            mask_scheduling_method=schedule)
    finally:
      jax.random.categorical = categorical
    counts = [[int(c) for c in (s == MASK_ID).sum(-1)] for s in seen]
    return counts, [s == MASK_ID for s in seen[1:]], np.asarray(final)[:, -1]

  cases = []
  for n in SIZES:
    table = logits_table(n)
    for given in (False, True):
      start = start_tokens(n, given)
      for steps in STEPS:
        for schedule in SCHEDULES:
          counts, masks, final = run(table, start, steps, schedule, True)
          counts_random, _, _ = run(table, start, steps, schedule, False)
          assert counts_random == counts, (n, given, steps, schedule)
          cases.append(dict(tokens=n, given=given, steps=steps, schedule=schedule,
                            counts=counts, masks=_digest(masks),
                            final=hashlib.sha256(final.astype(np.int32).tobytes()).hexdigest()))
  out = dict(source="google-research/maskgit@1db2359 maskgit/libml/parallel_decode.py",
             jax=jax.__version__, numpy=np.__version__, mask_id=MASK_ID, codes=CODES,
             cases=cases)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "maskgit_decode_reference.json")
  with open(path, "w") as f:
    json.dump(out, f, separators=(",", ":"))
  print(f"{len(cases)} cases -> {path}")


if __name__ == "__main__":
  main(sys.argv[1])
