"""Parameter counts and forward FLOPs from shapes alone (``jaxgen info``).

Nothing is allocated, read or trained: the config is validated and its paradigm built
inside `base.shapes_only` on the dataset's description, so a token model takes its
code grid and vocabulary from ``config.model`` (no tokenizer or ``tokens.json`` needed)
and a tokenizer builds no perceptual network. Parameters come from ``jax.eval_shape``
of ``init`` and FLOPs from XLA's cost analysis of the lowered forward pass. GFLOPs are
reported as the DiT paper counts them (multiply-adds, i.e. XLA flops / 2) and as raw
FLOPs.
"""

from __future__ import annotations

from typing import Any, Dict, List

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import config as config_lib
from jaxgen import registry
from jaxgen.paradigms import base


def _abstract_paradigm(config):
  """The validated config's paradigm on the dataset's description (`base.shapes_only`:
  nothing read, loaded or trained)."""
  from jaxgen.data import datasets  # pylint: disable=g-import-not-at-top
  with base.shapes_only():
    config_lib.validate(config)
    spec = datasets.describe(config.data)
    return registry.PARADIGMS.get(config.paradigm.name).build(config, spec)


def _notes(config, paradigm) -> List[str]:
  """What the figures of a token model rest on instead of its tokenizer and codes."""
  if not hasattr(paradigm, "codebook_size"):
    return []
  from jaxgen.paradigms import tokens  # pylint: disable=g-import-not-at-top
  notes = [f"codes of config.model: {paradigm.num_tokens} tokens of "
           f"{paradigm.codebook_size} (the tokenizer is not loaded)"]
  if config.data.name == "tokens" and tokens.tokens_meta(config, required=False) is None:
    notes.append(f"no tokens.json in config.data.data_dir={config.data.data_dir!r}: "
                 f"{paradigm.num_classes} classes of config.data.source_dataset="
                 f"{config.data.get('source_dataset')!r}")
  return notes


def model_info(config, batch: int = 1) -> Dict[str, Any]:
  """Parameter count and forward FLOPs per example of ``config``'s main network.

  Args:
    config: an experiment config; validated here.
    batch: the batch the forward pass is lowered at (FLOPs are divided by it).

  Returns:
    ``model``, ``variant``, ``image_shape`` (what the network sees: for a token model
    the code grid), ``params``, ``fixed_params``, ``flops_per_example``,
    ``gmacs_per_example`` and ``notes`` (lines on what the figures rest on).
  """
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
              image_shape=getattr(paradigm, "grid_shape", paradigm.image_shape), params=n,
              fixed_params=int(summary.get("fixed_params", 0)),
              flops_per_example=flops, gmacs_per_example=flops / 2e9,
              notes=_notes(config, paradigm))


def format_info(info: Dict[str, Any]) -> str:
  lines = [f"model       {info['model']} {info['variant']} on {info['image_shape']}",
           f"parameters  {info['params'] / 1e6:.2f}M trainable"]
  if info["fixed_params"]:
    total = info["params"] + info["fixed_params"]
    lines[-1] += (f" + {info['fixed_params'] / 1e6:.2f}M fixed (sin-cos positions) = "
                  f"{total / 1e6:.2f}M as the paper counts")
  lines.append(f"forward     {info['gmacs_per_example']:.2f} GFLOPs/example as papers count "
               f"(multiply-adds); {info['flops_per_example'] / 1e9:.2f} GFLOP raw")
  lines += [f"note        {n}" for n in info.get("notes", ())]
  return "\n".join(lines)
