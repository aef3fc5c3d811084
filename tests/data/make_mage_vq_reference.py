"""Makes tests/data/mage_vq_tiny_official.ckpt (a checkpoint of LTH14/mage's own VQGAN,
``taming.models.vqgan.VQModel`` of the MAGE repository, at a tiny size with random
weights, in the layout of the published ``vqgan_jax_strongaug.ckpt``) and
tests/data/mage_vq_tiny_outputs.npz (its outputs on fixed inputs), for
tests/test_convert_mage_vq.py. Run once, in a throw-away venv with torch and einops,
with the MAGE sources on the path (the test suite needs none of them):

  git clone https://github.com/LTH14/mage /tmp/mage
  MAGE=/tmp/mage python tests/data/make_mage_vq_reference.py
  MAGE=/tmp/mage python tests/data/make_mage_vq_reference.py --count   # official size

The model is MAGE's PyTorch port of MaskGIT's VQGAN, unmodified: ``VQModel`` of
``taming/models/vqgan.py``, ``Encoder`` / ``Decoder`` of ``taming/modules/
diffusionmodules/model.py`` (MAGE's copy: bias-free ResNet convs and encoder conv_in,
average-pool downsampling, two mid blocks, ``num_res_blocks`` decoder blocks per level,
a 1x1 encoder conv_out, the 1x1 shortcut applied to the block's output h, no attention
although ``attn_resolutions`` is passed, GroupNorm(32, eps 1e-6)) and
``VectorQuantizer2`` of ``taming/modules/vqvae/quantize.py``. Only
``pytorch_lightning`` (which vqgan.py imports for its base class) is replaced by a stub:
``LightningModule`` is ``torch.nn.Module``. ddconfig: ch 32, ch_mult (1, 2) (f2: widths
32 and 64, so a width change and the shortcut, 1 and 2 channels per GroupNorm group),
num_res_blocks 2 (the official number; the port's two mid blocks are then the MaskGIT
layout's ``num_res_blocks``), z_channels 8, resolution 16, embed_dim 8, n_embed 16.

Weights: random, nothing left at its init (zero biases, unit norms would hide a wrong
map). To keep the file small every tensor is a view at its own random offset into one of
a few shared storages (torch.save writes a storage once): distinct values per tensor.
The codebook is drawn from encoder outputs of the inputs plus noise (the draw farthest
from a tie of 200), so many codes are used. The file is ``torch.save`` of the plain
``state_dict()`` (MAGE's ``VQModel.init_from_ckpt`` loads it strictly, and takes a
``{"state_dict": ...}`` file too; jaxgen reads both).

Outputs (NCHW, float32, images in [0, 1] as MAGE feeds its VQGAN: ``ToTensor()``, no
normalisation): ``x`` (2, 3, 16, 16) -> ``indices`` (2, 8, 8) (``VQModel.encode``'s
``min_encoding_indices``, what MAGE's ``forward_encoder`` takes as tokens) and ``rec``
(``VQModel.forward``'s reconstruction); ``codes`` (2, 8, 8) random -> ``decoded`` (as
``gen_img_uncond.py`` decodes: ``vqgan.decode(quantize.get_codebook_entry(codes,
(b, h, w, c)))``). ``margin``: the smallest gap between the nearest and second-nearest
squared code distance over the positions encoded (how far the indices are from a tie);
``fp32_error``: ``rec`` against the same model in float64. ``--count``: the official
VQModel at MAGE's ``config/vqgan.yaml`` size has 54,515,587 parameters (the same as
MaskGIT's Flax VQVAE at its released size).

Used: LTH14/mage 1becb14475354fc40df35ba7c7c7bf418a137cd3 (2023-03-10), torch 2.14.1
(CPU), einops 0.8.2, numpy 2.4.6, Python 3.11.7.
"""

import collections
import copy
import os
import sys
import types

import numpy as np

DDCONFIG = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3,
                ch=32, ch_mult=[1, 2], num_res_blocks=2, attn_resolutions=[8], dropout=0.0)
EMBED_DIM, N_EMBED = 8, 16
# MAGE's config/vqgan.yaml (the size of vqgan_jax_strongaug.ckpt).
OFFICIAL = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3,
                ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                dropout=0.0)
SEED = 0


def _build(ddconfig, n_embed, embed_dim):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.environ.get("MAGE", "/tmp/mage"))
  pl = types.ModuleType("pytorch_lightning")
  pl.LightningModule = torch.nn.Module
  sys.modules["pytorch_lightning"] = pl
  from taming.models.vqgan import VQModel  # pylint: disable=import-outside-toplevel
  return VQModel(ddconfig=ddconfig, n_embed=n_embed, embed_dim=embed_dim).eval()


def count():
  """The official VQModel's parameters at MAGE's config/vqgan.yaml size."""
  model = _build(OFFICIAL, 1024, 256)
  n = sum(p.numel() for p in model.parameters())
  print(f"MAGE VQGAN (config/vqgan.yaml): {n:,} parameters (encoder, decoder, codebook)")


def _margin(flat, codebook):
  """Smallest gap between the nearest and second-nearest squared code distance."""
  import torch  # pylint: disable=import-outside-toplevel
  d = torch.cdist(flat.double(), codebook.double()) ** 2
  return float(d.sort(dim=1).values[:, :2].diff(dim=1).min())


def _pick_codebook(model, x, storage, g, trials=200):
  """Codes near the features the inputs give (so that many are used): of ``trials``
  draws of features + noise, the one farthest from a tie (largest `_margin`), written
  into the codebook's shared storage and the model."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    flat = model.encoder(torch.from_numpy(x)).permute(0, 2, 3, 1).reshape(-1, EMBED_DIM)
    best = None
    for _ in range(trials):
      rows = flat[torch.randperm(flat.shape[0], generator=g)[:N_EMBED]]
      book = rows + 0.1 * flat.std() * torch.randn(rows.shape, generator=g)
      margin = _margin(flat, book)
      if best is None or margin > best[0]:
        best = (margin, book)
    storage.copy_(best[1].reshape(-1))
    model.quantize.embedding.weight.copy_(best[1])


def main():
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(SEED)
  model = _build(DDCONFIG, N_EMBED, EMBED_DIM)
  g = torch.Generator().manual_seed(SEED)
  bases = {"weight": 0.08 * torch.randn(40_000, generator=g),
           "bias": 0.1 * torch.randn(1_000, generator=g),
           "norm": 1.0 + 0.2 * torch.randn(1_000, generator=g),
           "code": torch.zeros(N_EMBED * EMBED_DIM)}  # filled by `_pick_codebook`
  state = collections.OrderedDict()
  for key, value in model.state_dict().items():
    kind = ("code" if key == "quantize.embedding.weight" else
            "norm" if value.ndim == 1 and "norm" in key and key.endswith("weight")
            else "bias" if value.ndim == 1 else "weight")
    base = bases[kind]
    start = int(torch.randint(0, base.numel() - value.numel() + 1, (1,), generator=g))
    state[key] = base[start:start + value.numel()].view(value.shape)
  model.load_state_dict(state)
  rng = np.random.default_rng(SEED)
  x = rng.uniform(0, 1, size=(2, 3, 16, 16)).astype(np.float32)
  codes = rng.integers(0, N_EMBED, size=(2, 8, 8))
  _pick_codebook(model, x, bases["code"], g)
  with torch.no_grad():
    h = model.encoder(torch.from_numpy(x))
    _, _, (_, _, ind) = model.encode(torch.from_numpy(x))
    indices = ind.reshape(h.shape[0], *h.shape[2:]).numpy()
    margin = _margin(h.permute(0, 2, 3, 1).reshape(-1, EMBED_DIM),
                     model.quantize.embedding.weight)
    rec = model(torch.from_numpy(x))[0].numpy()
    rec64 = copy.deepcopy(model).double()(torch.from_numpy(x).double())[0].numpy()
    z_q = model.quantize.get_codebook_entry(torch.from_numpy(codes).reshape(-1),
                                            shape=(2, 8, 8, EMBED_DIM))
    decoded = model.decode(z_q).numpy()
  fp32_error = float(np.abs(rec64 - rec).max())
  here = os.path.dirname(os.path.abspath(__file__))
  torch.save(state, os.path.join(here, "mage_vq_tiny_official.ckpt"))
  np.savez(os.path.join(here, "mage_vq_tiny_outputs.npz"), x=x, indices=indices, rec=rec,
           codes=codes, decoded=decoded, margin=np.float32(margin),
           fp32_error=np.float32(fp32_error), torch=np.array(torch.__version__))
  n = sum(v.numel() for v in state.values())
  print(f"{n} parameters in {len(state)} tensors; margin {margin:.3g}; fp32 error "
        f"{fp32_error:.2g}; codes used {len(np.unique(indices))}; |rec| "
        f"{np.abs(rec).mean():.3f} (std {rec.std():.3f}); |decoded| "
        f"{np.abs(decoded).mean():.3f} (std {decoded.std():.3f})")


if __name__ == "__main__":
  count() if "--count" in sys.argv else main()
