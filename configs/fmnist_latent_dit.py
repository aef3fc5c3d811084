"""Class-conditional DiT on the 8x8x4 latents of the Fashion-MNIST KL-VAE
(``configs/fmnist_vae.py``), with rectified flow (default) or DDPM (``:objective=ddpm``,
DiT's own recipe: linear betas over 1000 steps, epsilon prediction with a learned
variance, the hybrid loss, ancestral sampling). The same network, batch and steps for
both, so the README's steps table compares the objectives alone. Samples, preview
grids and ``jaxgen eval`` are images: the run decodes through the tokenizer that wrote
the latents.

  jaxgen train    --config configs/fmnist_vae.py --workdir runs/vae
  jaxgen tokenize --workdir runs/vae --out runs/vae_latents      # fits the latent scale
  jaxgen train    --config configs/fmnist_latent_dit.py --workdir runs/latent_flow \\
      --config.data.data_dir=runs/vae_latents
  jaxgen train    --config configs/fmnist_latent_dit.py:objective=ddpm \\
      --workdir runs/latent_ddpm --config.data.data_dir=runs/vae_latents
  jaxgen sample   --workdir runs/latent_flow --num 1000 --steps 10 --out s.npz
  jaxgen eval     --workdir runs/latent_flow --samples s.npz

``:variant=WxDxH/P`` picks the DiT size as in ``fmnist_flow_dit.py`` (default
"256x8x4/2": 256 wide, 8 blocks, 4 heads, patch 2 = 16 tokens of the 8x8 latents).
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.base_config()
  c.data = common.ml_collections.ConfigDict(dict(
      name="tokens", data_dir="runs/vae_latents", source_dataset="fashion_mnist",
      code_shape=(8, 8, 4), pp="", train_split="train", eval_split="test"))
  c.tokenizer = common.tokenizer_section()  # "" = the KL-VAE that wrote the latents
  c.model = common.sized_dit(arg.get("variant", "256x8x4/2"))
  c.train.num_steps = 6000
  c.train.batch_size = 16
  c.train.sample_every = 1000
  c.train.sample_grid = 50
  c.train.ckpt_every = 500
  c.optim.lr = 5e-4
  c.optim.ema_decay = 0.999
  c.sample.steps = 10
  c.sample.solver = "euler"
  c.sample.cfg_scale = 1.5
  objective = arg.get("objective", "flow")
  if objective == "ddpm":
    c.paradigm = common.diffusion_paradigm(schedule="linear", num_timesteps=1000,
                                           prediction="eps", vlb_weight=1.0)
    c.model.learn_sigma = True
    c.sample.solver = "ddpm"
  elif objective != "flow":
    raise ValueError(f"objective={objective!r}; use flow or ddpm.")
  if arg.get("runlocal"):
    c.train.num_steps = 20
    c.train.sample_every = 10
  return c
