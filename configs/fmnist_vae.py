"""KL-VAE tokenizer on Fashion-MNIST (f4 -> 8x8x4 continuous latents), CPU-sized, for
latent flow / diffusion. The latent scale factor (1 / std of training latents) is fitted
by ``jaxgen tokenize`` and stored in the workdir.

  jaxgen train --config configs/fmnist_vae.py --workdir runs/vae
  jaxgen eval --workdir runs/vae
  jaxgen tokenize --workdir runs/vae --out runs/vae_latents
  jaxgen train --config configs/quickstart.py --workdir runs/latent_flow \\
      --config.data.name=tokens --config.data.data_dir=runs/vae_latents --config.data.pp=""

``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.tokenizer_config()
  c.model = common.ml_collections.ConfigDict(dict(
      name="kl_vae", variant="fmnist_kl_tiny", bottleneck="kl", embed_dim=4))
  c.paradigm.bottleneck_weight = 1e-4   # the KL weight (LDM: 1e-6 at 256px; more here)
  return common.fmnist_tokenizer(c, num_steps=2000, sample_every=500,
                                 runlocal=arg.get("runlocal", False))
