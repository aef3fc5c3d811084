"""Makes tests/data/dit_diffusion_reference.npz from the official DiT code (run once).

Reads facebookresearch/DiT's ``diffusion/`` package from a local checkout (its NumPy
tables need no torch: a stub module stands in for the import) and saves the tables of
the processes jaxgen's diffusion tests compare with: the linear and the squared-cosine
schedule over 1000 steps, respaced to 250 and 50 sampling steps (``timestep_map``
included). Nothing of the official code is committed, only these numbers.

Used: facebookresearch/DiT at commit ed81ce2229091fd4ecc9a223645f95cf379d582b (the
snapshot fetched on 2026-11-30), NumPy 2.x, Python 3.11.

  python3 tests/data/make_dit_diffusion_reference.py /path/to/DiT
"""

import os
import sys
import types

import numpy as np


def main(dit_dir):
  sys.modules.setdefault("torch", types.ModuleType("torch"))  # tables are NumPy only
  sys.path.insert(0, dit_dir)
  from diffusion import gaussian_diffusion as gd  # pylint: disable=import-outside-toplevel
  from diffusion.respace import SpacedDiffusion, space_timesteps  # pylint: disable=import-outside-toplevel
  out = {}
  for schedule, name in (("linear", "linear"), ("squaredcos_cap_v2", "cosine")):
    betas = gd.get_named_beta_schedule(schedule, 1000)
    for count in (1000, 250, 50):
      d = SpacedDiffusion(use_timesteps=space_timesteps(1000, str(count)), betas=betas,
                          model_mean_type=gd.ModelMeanType.EPSILON,
                          model_var_type=gd.ModelVarType.LEARNED_RANGE,
                          loss_type=gd.LossType.MSE)
      key = f"{name}_{count}"
      out[f"{key}_timestep_map"] = np.asarray(d.timestep_map, np.int64)
      for table in ("betas", "alphas_cumprod", "posterior_variance",
                    "posterior_log_variance_clipped", "posterior_mean_coef1",
                    "posterior_mean_coef2"):
        out[f"{key}_{table}"] = np.asarray(getattr(d, table), np.float64)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "dit_diffusion_reference.npz")
  np.savez_compressed(path, **out)
  print(f"wrote {path}: {len(out)} arrays")


if __name__ == "__main__":
  main(sys.argv[1])
