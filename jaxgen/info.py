"""Parameter counts and forward FLOPs from shapes alone (``jaxgen info``).

Nothing is allocated: parameters come from ``jax.eval_shape`` of ``init`` and FLOPs
from XLA's cost analysis of the lowered forward pass. GFLOPs are reported as the
DiT paper counts them (multiply-adds, i.e. XLA flops / 2) and as raw FLOPs.
"""

from __future__ import annotations

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import registry


def _abstract_paradigm(config):
  """Paradigm without preparing data: a DatasetSpec stub from the config's data."""
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  spec = datasets.describe(config.data)
  return registry.PARADIGMS.get(config.paradigm.name)(config, spec)


def model_info(config, batch: int = 1) -> Dict[str, Any]:
  paradigm = _abstract_paradigm(config)
  summary = paradigm.model_summary()
  module: nn.Module = summary["module"]
  if getattr(module, "scan_blocks", False):
    # XLA's cost analysis counts a scanned body once; count the unrolled network.
    module = module.clone(scan_blocks=False)
  inputs = jax.tree.map(lambda x: jnp.zeros((batch,) + x.shape[1:], x.dtype),
                        tuple(summary["inputs"]))  # a condition may be a dict (text)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), *inputs)))
  params = abstract["params"]
  n = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
  lowered = jax.jit(lambda v, *a: module.apply(v, *a)).lower(abstract, *inputs)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) / batch
  return dict(model=config.model.name, variant=config.model.get("variant", ""),
              image_shape=paradigm.image_shape, params=n,
              fixed_params=int(summary.get("fixed_params", 0)),
              flops_per_example=flops, gmacs_per_example=flops / 2e9)


def format_info(info: Dict[str, Any]) -> str:
  lines = [f"model       {info['model']} {info['variant']} on {info['image_shape']}",
           f"parameters  {info['params'] / 1e6:.2f}M trainable"]
  if info["fixed_params"]:
    total = info["params"] + info["fixed_params"]
    lines[-1] += (f" + {info['fixed_params'] / 1e6:.2f}M fixed (sin-cos positions) = "
                  f"{total / 1e6:.2f}M as the paper counts")
  lines.append(f"forward     {info['gmacs_per_example']:.2f} GFLOPs/example as papers count "
               f"(multiply-adds); {info['flops_per_example'] / 1e9:.2f} GFLOP raw")
  return "\n".join(lines)
