"""Makes tests/data/mage_tiny_official.pth and mage_tiny_official_outputs.npz from the
official MAGE model code (run once, in a throw-away venv with torch, timm, scipy and
omegaconf; the test suite needs none of them).

Builds ``models_mage.MaskedGenerativeEncoderViT`` of LTH14/mage at a tiny width (the
official 16x16 = 256 tokens, which its 257-row position table fixes; a 16-entry
codebook, so a 16 + 1000 + 1 row vocabulary; encoder 2 x 16 with 2 heads, decoder
2 x 24 with 3 heads), runs its own initialisation and then adds N(0, 0.02) noise to
every trained parameter (zero biases, unit LayerNorms and the MLM bias would otherwise
hide a wrong mapping), saves ``{"model": state_dict}`` with ``torch.save`` (the layout
of the published ``mage-vitb-1600.pth``) and the model's outputs on fixed codes:

* ``logits``: the official training forward (``forward_encoder`` with its random token
  drop and masking, seeded; the masks it drew are saved as ``drop`` / ``mask``) then
  ``forward_decoder``; the codes' logits (positions 1:, entries :codebook_size), which
  is what the loss and the generator read.
* ``gen_logits``: the generator's forward (``gen_img_uncond.gen_image``: nothing
  dropped, [MASK] seen by the encoder) on codes with a fixed mask ``gen_mask``.
* ``features``: the linear-probing representation, ``models_vit_mage.
  VisionTransformerMage(global_pool=True).forward_features`` after loading the
  checkpoint as ``main_linprobe.py`` does (its ``fc_norm`` is fresh and frozen).

The VQGAN is replaced by a stub returning the fixed codes (the tokenizer is converted
separately); ``.cuda()`` is made a no-op and the VQGAN config is given in memory. The
official code targets timm 0.3.2; with timm 1.x only the imports it uses are needed
(``PatchEmbed, DropPath, Mlp`` and ``VisionTransformer``, all still there), and NumPy 2
lacks the ``np.float`` alias its sin-cos table uses (restored). Nothing of
the official code is committed, only these numbers.

Used: LTH14/mage at commit 1becb14 (2023-03-10), torch 2.14.1+cu130 (on CPU), timm 1.0.31,
scipy 1.17.1, omegaconf 2.4.0, Python 3.11.

  python tests/data/make_mage_reference.py /path/to/mage
"""

import os
import sys
import types
from functools import partial

import numpy as np

CODEBOOK = 16
SIZE = dict(img_size=32, patch_size=2, in_chans=3, embed_dim=16, depth=2, num_heads=2,
            decoder_embed_dim=24, decoder_depth=2, decoder_num_heads=3, mlp_ratio=4.0)


def main(mage_dir):
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, mage_dir)

  class VQStub(nn.Module):
    """The VQGAN's place: ``encode`` returns the codes set in ``codes`` (B, N)."""
    codes = None

    def __init__(self, **kw):
      super().__init__()

    def encode(self, x):
      codes = VQStub.codes
      return torch.zeros(codes.shape[0], 1), None, (None, None, codes.reshape(-1).clone())

  taming = types.ModuleType("taming")
  taming.models = types.ModuleType("taming.models")
  taming.models.vqgan = types.ModuleType("taming.models.vqgan")
  taming.models.vqgan.VQModel = VQStub
  sys.modules.update({"taming": taming, "taming.models": taming.models,
                      "taming.models.vqgan": taming.models.vqgan})
  vq_config = OmegaConf.create({"model": {"params": {"n_embed": CODEBOOK, "embed_dim": 4,
                                                     "ddconfig": {}}}})
  OmegaConf.load = lambda path: vq_config
  torch.Tensor.cuda = lambda self, *a, **k: self  # CPU only
  np.float = float  # util/pos_embed.py uses the alias NumPy 1.24 removed
  import models_mage  # pylint: disable=import-outside-toplevel
  import models_vit_mage  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  norm = partial(nn.LayerNorm, eps=1e-6)
  model = models_mage.MaskedGenerativeEncoderViT(norm_layer=norm, **SIZE).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.requires_grad:
        p.add_(0.02 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  codes = rng.integers(0, CODEBOOK, size=(2, 256))
  imgs = torch.zeros(2, 3, 32, 32)
  VQStub.codes = torch.from_numpy(codes)

  torch.manual_seed(1)
  np.random.seed(1)  # the masking ratio (scipy's truncnorm draws from numpy)
  with torch.no_grad():
    latent, _, drop, mask = model.forward_encoder(imgs)
    logits = model.forward_decoder(latent, drop, mask)[:, 1:, :CODEBOOK].numpy()
  drop, mask = drop[:, 1:].bool().numpy(), mask[:, 1:].bool().numpy()

  # gen_img_uncond.gen_image's forward: nothing dropped, the encoder sees [MASK].
  gen_mask = rng.random((2, 256)) < 0.6
  ids = torch.from_numpy(np.where(gen_mask, model.mask_token_label, codes))
  ids = torch.cat([torch.full((2, 1), model.fake_class_label), ids], dim=1).long()
  with torch.no_grad():
    x = model.token_emb(ids)
    for blk in model.blocks:
      x = blk(x)
    x = model.norm(x)
    gen_logits = model.forward_decoder(x, torch.zeros_like(ids), ids == model.mask_token_label)
    gen_logits = gen_logits[:, 1:, :CODEBOOK].numpy()

  state = model.state_dict()
  probe = models_vit_mage.VisionTransformerMage(
      global_pool=True, img_size=32, patch_size=2, embed_dim=16, depth=2, num_heads=2,
      mlp_ratio=4, qkv_bias=True, norm_layer=norm, num_classes=10).eval()
  msg = probe.load_state_dict(state, strict=False)  # as main_linprobe.py
  assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight",
                                   "fc_norm.bias"}, msg.missing_keys
  with torch.no_grad():
    features = probe.forward_features(imgs).numpy()

  here = os.path.dirname(os.path.abspath(__file__))
  torch.save({"model": state}, os.path.join(here, "mage_tiny_official.pth"))
  np.savez(os.path.join(here, "mage_tiny_official_outputs.npz"), codes=codes, drop=drop,
           mask=mask, logits=logits, gen_mask=gen_mask, gen_logits=gen_logits,
           features=features, torch=np.array(torch.__version__))
  print(int(drop.sum()), int(mask.sum()), logits.shape, float(np.abs(logits).mean()),
        float(np.abs(gen_logits).mean()), features.shape, float(np.abs(features).mean()))


if __name__ == "__main__":
  main(sys.argv[1])
