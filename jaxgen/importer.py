"""Published checkpoints as jaxgen runs (``jaxgen convert``).

`convert_dit` writes a workdir holding an official DiT checkpoint's weights
(`jaxgen.convert.dit`) as step 0 (parameters and EMA), the config of the paper's
recipe for it (``imagenet256_dit_xl2:objective=ddpm``: DDPM, linear schedule over 1000
steps, learned sigma, 250 sampling steps, CFG 1.5; the model's sizes from the
checkpoint) and its dataset's description, so ``jaxgen sample``, ``jaxgen eval`` and
``jaxgen.load`` use it as they use a trained run. DiT denoises KL-VAE latents: the
run decodes them through the tokenizer run ``tokenizer`` names (recorded in
``frozen_networks.json``); without one the workdir is written, ``jaxgen info`` works,
and sampling says which tokenizer it needs.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import jax
import ml_collections

from jaxgen import config as config_lib
from jaxgen import fileio
from jaxgen import frozen as frozen_lib
from jaxgen.convert import dit as dit_convert
from jaxgen.data import datasets
from jaxgen.paradigms import base as paradigm_base
from jaxgen.train import checkpoint, loop

DIT_RECIPE = "imagenet256_dit_xl2:objective=ddpm"


def dit_config(fields, *, tokenizer: str = "", source_dataset: str = "imagenet2012"
               ) -> ml_collections.ConfigDict:
  """The config of a converted DiT: the paper's DDPM recipe with the checkpoint's sizes,
  on ``source_dataset``'s latents of the checkpoint's shape, decoded by ``tokenizer``."""
  config = config_lib.load_config_file(DIT_RECIPE)
  config.model = ml_collections.ConfigDict(dict(
      name="dit", variant=None, hidden_size=fields["hidden_size"], depth=fields["depth"],
      num_heads=fields["num_heads"], patch_size=fields["patch_size"],
      mlp_ratio=fields["mlp_ratio"], learn_sigma=fields["learn_sigma"], scan_blocks=False,
      remat=False, attn_impl="xla", text_conditioning="none"))
  s, c = fields["input_size"], fields["in_channels"]
  config.data.source_dataset = source_dataset
  config.data.code_shape = (s, s, c)
  config.tokenizer.workdir = tokenizer
  config.train.compute_dtype = "float32"
  return config_lib.fill_defaults(config)


def convert_dit(ckpt: str, out: str, *, tokenizer: str = "",
                source_dataset: str = "imagenet2012", num_heads: Optional[int] = None,
                devices: Optional[Sequence[jax.Device]] = None) -> str:
  """Writes the run of the official DiT checkpoint ``ckpt`` to ``out``; returns it."""
  if os.path.exists(os.path.join(out, "checkpoints")):
    raise config_lib.ConfigError(f"{out} already holds checkpoints; convert into a new "
                                 "workdir.")
  fields, params = dit_convert.load_dit(ckpt, num_heads)
  config = dit_config(fields, tokenizer=tokenizer, source_dataset=source_dataset)
  spec = datasets.describe(config.data)
  if spec.num_classes != fields["num_classes"]:
    raise config_lib.ConfigError(
        f"{ckpt} has {fields['num_classes']} classes, {source_dataset} has "
        f"{spec.num_classes}; pass the dataset it was trained on (--source-dataset).")
  devices = list(devices or jax.devices())[:1]
  if tokenizer:
    exp = loop.build(config, devices, load_data=False, dataset=spec)
  else:  # no tokenizer to check the latents against: shapes from the config alone
    with paradigm_base.shapes_only():
      exp = loop.build(config, devices, load_data=False, dataset=spec)
  state = exp.init_state()
  if jax.tree.structure(state.params) != jax.tree.structure(params):
    raise ValueError("The converted parameters do not fit the run's DiT (a jaxgen bug).")
  state = state.replace(params=params, ema_params=params)
  ckpt_writer = checkpoint.Checkpointer(out, async_save=False)
  ckpt_writer.save(0, state, config=config, force=True)
  ckpt_writer.close()
  checkpoint.write_config(out, config)
  frozen_lib.write_record(out, exp.frozen.networks)
  fileio.write_text(os.path.join(out, datasets.SPEC_FILE),
                    json.dumps(datasets.spec_to_dict(spec)))
  return out
