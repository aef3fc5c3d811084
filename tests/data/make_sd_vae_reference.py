"""Makes tests/data/sd_vae_tiny/ (a diffusers ``AutoencoderKL`` saved as the published
Stable Diffusion VAEs are: ``diffusion_pytorch_model.safetensors`` + ``config.json``)
and tests/data/sd_vae_tiny_outputs.npz, its outputs on fixed inputs (run once, in a
throw-away venv with torch, diffusers and safetensors; the test suite needs none).

Builds ``diffusers.AutoencoderKL`` with the layout of stabilityai/sd-vae-ft-mse (and
-ft-ema: DownEncoderBlock2D / UpDecoderBlock2D, a mid block with one single-head
attention, 1x1 quant_conv / post_quant_conv, SiLU, GroupNorm eps 1e-6) at a tiny size:
block_out_channels (4, 12, 12), layers_per_block 1, norm_num_groups 4 (jaxgen's
GroupNorm takes gcd(32, C) groups, 4 for both widths, as 32 for SD's 128/256/512),
latent_channels 4, 16x16 RGB images (f4), scaling_factor 0.18215. Adds N(0, 0.02) noise
to every parameter (zero or one initialised layers would otherwise hide a wrong map),
saves it with ``save_pretrained`` (safetensors) and saves the encoder's posterior
``latent_dist.mean`` and ``latent_dist.logvar`` of fixed images and ``decode(z).sample``
of fixed latents. Nothing of diffusers is committed, only these weights and numbers.

Used: diffusers 0.42.1, torch 2.14.1, safetensors 0.8.0, numpy 2.4.6, Python 3.11.7.

  python tests/data/make_sd_vae_reference.py
"""

import os

import numpy as np

SIZE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(4, 12, 12),
            layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=4,
            sample_size=16, scaling_factor=0.18215)


def main():
  import diffusers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(**SIZE).eval()
  with torch.no_grad():
    for p in vae.parameters():
      p.add_(0.02 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)
  z = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  with torch.no_grad():
    post = vae.encode(torch.from_numpy(x)).latent_dist
    mean, logvar = post.mean.numpy(), post.logvar.numpy()
    decoded = vae.decode(torch.from_numpy(z)).sample.numpy()
  here = os.path.dirname(os.path.abspath(__file__))
  vae.save_pretrained(os.path.join(here, "sd_vae_tiny"), safe_serialization=True)
  np.savez(os.path.join(here, "sd_vae_tiny_outputs.npz"), x=x, mean=mean, logvar=logvar,
           z=z, decoded=decoded, diffusers=np.array(diffusers.__version__),
           torch=np.array(torch.__version__))
  print(sum(p.numel() for p in vae.parameters()), "parameters;", mean.shape, decoded.shape,
        float(np.abs(mean).mean()), float(np.abs(decoded).mean()))


if __name__ == "__main__":
  main()
