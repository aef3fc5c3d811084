"""Makes tests/data/dit_tiny_official.pt and dit_tiny_official_outputs.npz from the
official DiT model code (run once, in a throw-away venv with torch and timm; the test
suite needs neither).

Builds ``models.DiT`` of facebookresearch/DiT at a tiny size (8x8x4 latents, patch 2,
width 32, depth 2, 2 heads, 10 classes, learned sigma), runs its own
``initialize_weights`` and then adds N(0, 0.02) noise to every parameter (its
zero-initialised adaLN and output layers would otherwise hide a wrong mapping), saves
the state dict with ``torch.save`` (the layout of the published checkpoints, which are
bare state dicts) and the model's outputs on fixed inputs (the null class included).
Nothing of the official code is committed, only these numbers.

Used: facebookresearch/DiT at commit ed81ce2 (the snapshot fetched on 2026-11-30),
torch 2.13.0+cpu, timm 1.0.31, Python 3.11.

  python tests/data/make_dit_forward_reference.py /path/to/DiT
"""

import os
import sys

import numpy as np

SIZE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)


def main(dit_dir):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, dit_dir)
  from models import DiT  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = DiT(**SIZE).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.requires_grad:
        p.add_(0.02 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 8, 8)).astype(np.float32)
  t = np.array([0, 417, 999], np.int64)
  y = np.array([3, 9, 10], np.int64)  # 10: the null class
  with torch.no_grad():
    out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
  here = os.path.dirname(os.path.abspath(__file__))
  torch.save(model.state_dict(), os.path.join(here, "dit_tiny_official.pt"))
  np.savez(os.path.join(here, "dit_tiny_official_outputs.npz"), x=x, t=t, y=y, out=out,
           torch=np.array(torch.__version__))
  print(out.shape, float(np.abs(out).mean()))


if __name__ == "__main__":
  main(sys.argv[1])
