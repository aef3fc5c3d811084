"""Makes tests/data/dit_sampling_reference.npz from the official DiT code (run once, in a
throw-away venv with torch and timm; the test suite needs neither).

Runs facebookresearch/DiT's own sampling path, as its ``sample.py`` does, on the tiny
random-weight DiT of ``make_dit_forward_reference.py`` (``dit_tiny_official.pt``):
``create_diffusion("10")`` (the linear schedule over 1000 steps respaced to 10, learned
sigma), the batch doubled with the null class, ``model.forward_with_cfg`` at
cfg_scale 1.5 (the first 3 channels guided), ``p_sample_loop(..., clip_denoised=False)``
(ancestral DDPM) and ``ddim_sample_loop`` (eta 0). ``torch.randn_like``, the only draw
inside the loops, is replaced by a recorder that hands out fixed NumPy normals, so the
test can give jaxgen's sampler the same draws. Saved: the initial noise, every step's
draw, the final samples of both loops. Nothing of the official code is committed, only
these numbers.

Used: facebookresearch/DiT at commit ed81ce2229091fd4ecc9a223645f95cf379d582b (the
snapshot fetched on 2026-11-30), torch 2.14.1, timm 1.0.31, Python 3.11.

  python tests/data/make_dit_sampling_reference.py /path/to/DiT
"""

import os
import sys

import numpy as np

SIZE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
STEPS, CFG, LABELS = 10, 1.5, (3, 7)


def main(dit_dir):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, dit_dir)
  from diffusion import create_diffusion  # pylint: disable=import-outside-toplevel
  from models import DiT  # pylint: disable=import-outside-toplevel
  here = os.path.dirname(os.path.abspath(__file__))
  model = DiT(**SIZE).eval()
  model.load_state_dict(torch.load(os.path.join(here, "dit_tiny_official.pt")))
  rng = np.random.default_rng(1)
  n = len(LABELS)
  z = rng.normal(size=(n, 4, 8, 8)).astype(np.float32)
  draws = []

  def recorded_randn_like(x):
    d = rng.normal(size=tuple(x.shape)).astype(np.float32)
    draws.append(d)
    return torch.from_numpy(d)

  torch.randn_like = recorded_randn_like
  diffusion = create_diffusion(str(STEPS))
  y = torch.tensor(list(LABELS) + [SIZE["num_classes"]] * n)  # sample.py: null = num_classes
  zz = torch.cat([torch.from_numpy(z)] * 2, 0)
  kwargs = dict(y=y, cfg_scale=CFG)
  with torch.no_grad():
    ddpm = diffusion.p_sample_loop(model.forward_with_cfg, zz.shape, zz, clip_denoised=False,
                                   model_kwargs=kwargs, progress=False, device="cpu")
    assert len(draws) == STEPS, len(draws)
    ddim = diffusion.ddim_sample_loop(model.forward_with_cfg, zz.shape, zz,
                                      clip_denoised=False, model_kwargs=kwargs,
                                      progress=False, device="cpu", eta=0.0)
  np.savez(os.path.join(here, "dit_sampling_reference.npz"), z=z,
           labels=np.array(LABELS), cfg_scale=np.float32(CFG), steps=np.int64(STEPS),
           draws=np.stack([d[:n] for d in draws[:STEPS]]),  # the guided half's draws
           ddpm=ddpm[:n].numpy(), ddim=ddim[:n].numpy(), torch=np.array(torch.__version__))
  print(float(np.abs(ddpm[:n].numpy()).mean()), float(np.abs(ddim[:n].numpy()).mean()))


if __name__ == "__main__":
  main(sys.argv[1])
