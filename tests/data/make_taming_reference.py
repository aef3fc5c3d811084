"""Makes tests/data/taming_tiny_official.ckpt (a PyTorch Lightning checkpoint of the
official taming-transformers ``VQModel`` at a tiny size, random weights) and
tests/data/taming_tiny_outputs.npz (its outputs on fixed inputs). Run once, in a
throw-away venv with torch and einops, with the taming-transformers sources on the path
(the test suite needs none of them):

  git clone https://github.com/CompVis/taming-transformers /tmp/taming
  TAMING=/tmp/taming python tests/data/make_taming_reference.py
  TAMING=/tmp/taming python tests/data/make_taming_reference.py --count   # official sizes

The model is the official ``taming.models.vqgan.VQModel`` (``Encoder`` / ``Decoder`` of
``taming/modules/diffusionmodules/model.py``, ``VectorQuantizer2`` of
``taming/modules/vqvae/quantize.py``, 1x1 ``quant_conv`` / ``post_quant_conv``);
``pytorch_lightning`` and taming's ``main`` (which the module imports) are replaced by
stubs: ``LightningModule`` is ``torch.nn.Module`` and ``instantiate_from_config`` builds
the loss, here taming's ``NLayerDiscriminator`` (ndf 8, one layer) as ``loss.
discriminator`` so the checkpoint has ``loss.*`` tensors as the published ones (which
also hold LPIPS). ddconfig: ch 32, ch_mult (1, 2), 2 levels (f2), num_res_blocks 1,
attn_resolutions [8] with resolution 16 (level 1 attends), z_channels 8, embed_dim 4,
n_embed 16: every kind of block of the published f16 VQGANs (attention inside a level
and in the mid block, a nin_shortcut, 2 channels per group, down/upsampling, quant
convs of different widths).

Weights: random, nothing left at its init (zero biases, unit norms would hide a wrong
map). To keep the file small (190 KB) every tensor is a view at its own random offset
into one of a few shared storages (torch.save writes a storage once): distinct values
per tensor, and a test of the reader's views and offsets. The file is saved as
Lightning writes one: ``state_dict`` beside ``epoch``, ``global_step``,
``pytorch-lightning_version``, ``callbacks`` keyed by the (stub) class
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` and
``optimizer_states``, which jaxgen's reader must skip without running anything.

Outputs (NCHW, float32): ``x`` (2 images, 16x16 = resolution) -> ``h`` (quant_conv
features), ``indices`` (2, 8, 8), ``rec`` (VQModel.forward's reconstruction);
``x_tall`` (1 image, 32x16: another size; taming still attends at level 1, by its fixed
resolution, where the feature map is 16 high) -> ``indices_tall``, ``rec_tall``;
``codes`` (2, 8, 8) ->
``decoded`` (``decode(quantize.get_codebook_entry(codes))``). ``margin``: the smallest
gap between the nearest and second-nearest code distance over all the positions
encoded (how far the indices are from a tie: 2.9e-4, ~100x what fp32 can move);
``fp32_error``: ``rec_tall`` against the same model in float64 (4.5e-6: the outputs are
well conditioned). ``--count``: the official VQModel at the published sizes has
72,141,699 (f16_1024) and 76,073,859 (f16_16384) parameters without its loss.

Used: taming-transformers 3ba01b241669f5ade541ce990f7650a3b8f65318 (2022-11-07),
torch 2.14.1 (CPU), einops 0.8.2, numpy 2.4.6, Python 3.11.7.
"""

import collections
import copy
import os
import sys
import types

import numpy as np

DDCONFIG = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3,
                ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
EMBED_DIM, N_EMBED = 4, 16
# The published imagenet_vqgan.yaml (vqgan_imagenet_f16_1024 / _16384).
OFFICIAL = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3,
                ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                dropout=0.0)
SEED = 0


class ModelCheckpoint:
  """Stand-in for Lightning's callback class, pickled by reference as Lightning does."""


def _stub_modules():
  """pytorch_lightning and taming's main, enough for VQModel to be built."""
  import importlib  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  pl = types.ModuleType("pytorch_lightning")
  pl.LightningModule = torch.nn.Module
  pl.__version__ = "1.0.8"
  callbacks = types.ModuleType("pytorch_lightning.callbacks")
  mc = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
  ModelCheckpoint.__module__ = mc.__name__
  mc.ModelCheckpoint = ModelCheckpoint
  pl.callbacks, callbacks.model_checkpoint = callbacks, mc
  main = types.ModuleType("main")

  def instantiate_from_config(config):
    module, name = config["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**config.get("params", {}))

  main.instantiate_from_config = instantiate_from_config
  sys.modules.update({"pytorch_lightning": pl, "pytorch_lightning.callbacks": callbacks,
                      mc.__name__: mc, "main": main})


def _build(ddconfig, n_embed, embed_dim, loss):
  sys.path.insert(0, os.environ.get("TAMING", "/tmp/taming"))
  _stub_modules()
  from taming.models.vqgan import VQModel  # pylint: disable=import-outside-toplevel
  return VQModel(ddconfig, loss, n_embed=n_embed, embed_dim=embed_dim).eval()


def count():
  """The official VQModel's parameters without its loss (the published f16 sizes)."""
  for n_embed in (1024, 16384):
    model = _build(OFFICIAL, n_embed, 256,
                   {"target": "taming.modules.losses.vqperceptual.DummyLoss"})
    n = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("loss."))
    print(f"vqgan_imagenet_f16_{n_embed}: {n:,} parameters (encoder, decoder, quant convs, "
          "codebook)")


def _margin(flat, codebook):
  """Smallest gap between the nearest and second-nearest squared code distance."""
  import torch  # pylint: disable=import-outside-toplevel
  d = torch.cdist(flat.double(), codebook.double()) ** 2
  return float(d.sort(dim=1).values[:, :2].diff(dim=1).min())


def _pick_codebook(model, inputs, storage, g, trials=200):
  """Codes near the features the inputs give (so that many are used): of ``trials``
  draws of features + noise, the one farthest from a tie (largest `_margin`), written
  into the codebook's shared storage and the model."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    flat = torch.cat([model.quant_conv(model.encoder(torch.from_numpy(x)))
                      .permute(0, 2, 3, 1).reshape(-1, EMBED_DIM) for x in inputs])
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
  loss = {"target": "taming.modules.discriminator.model.NLayerDiscriminator",
          "params": dict(input_nc=3, ndf=8, n_layers=1)}
  model = _build(DDCONFIG, N_EMBED, EMBED_DIM, {"target": "torch.nn.Module"})
  model.loss.discriminator = _build(DDCONFIG, N_EMBED, EMBED_DIM, loss).loss
  # shared storages: conv / linear weights, biases, norm scales; the codebook's own
  g = torch.Generator().manual_seed(SEED)
  bases = {"weight": 0.05 * torch.randn(40_000, generator=g),
           "bias": 0.1 * torch.randn(1_000, generator=g),
           "norm": 1.0 + 0.2 * torch.randn(1_000, generator=g),
           "code": torch.zeros(N_EMBED * EMBED_DIM)}  # filled by `_pick_codebook`
  state = collections.OrderedDict()
  for key, value in model.state_dict().items():
    kind = ("code" if key == "quantize.embedding.weight" else
            "norm" if value.ndim == 1 and "norm" in key and key.endswith("weight")
            else "bias" if value.ndim == 1 else "weight")
    if not value.is_floating_point():
      state[key] = value  # BatchNorm's num_batches_tracked
      continue
    base = bases[kind]
    start = int(torch.randint(0, base.numel() - value.numel() + 1, (1,), generator=g))
    state[key] = base[start:start + value.numel()].view(value.shape)
  model.load_state_dict(state)
  rng = np.random.default_rng(SEED)
  x = rng.uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)
  x_tall = rng.uniform(-1, 1, size=(1, 3, 32, 16)).astype(np.float32)
  codes = rng.integers(0, N_EMBED, size=(2, 8, 8))
  _pick_codebook(model, [x, x_tall], bases["code"], g)
  margins = []

  def encode(images):
    with torch.no_grad():
      h = model.quant_conv(model.encoder(torch.from_numpy(images)))
      quant, _, (_, _, ind) = model.quantize(h)
      margins.append(_margin(h.permute(0, 2, 3, 1).reshape(-1, EMBED_DIM),
                             model.quantize.embedding.weight))
      rec, _ = model(torch.from_numpy(images))
    return h.numpy(), ind.reshape(h.shape[0], *h.shape[2:]).numpy(), rec.numpy()

  h, indices, rec = encode(x)
  _, indices_tall, rec_tall = encode(x_tall)
  with torch.no_grad():  # how well conditioned the outputs are: fp32 against fp64
    rec64, _ = copy.deepcopy(model).double()(torch.from_numpy(x_tall).double())
  fp32_error = float(np.abs(rec64.numpy() - rec_tall).max())
  with torch.no_grad():
    emb = model.quantize.get_codebook_entry(torch.from_numpy(codes).reshape(-1),
                                            (2, 8, 8, EMBED_DIM))
    decoded = model.decode(emb).numpy()
  here = os.path.dirname(os.path.abspath(__file__))
  torch.save({"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8",
              "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5),
                                              "best_model_path": "logs/last.ckpt"}},
              "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.ones(4)}},
                                    "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
              "lr_schedulers": [], "state_dict": state},
             os.path.join(here, "taming_tiny_official.ckpt"))
  np.savez(os.path.join(here, "taming_tiny_outputs.npz"), x=x, h=h, indices=indices,
           rec=rec, x_tall=x_tall, indices_tall=indices_tall, rec_tall=rec_tall,
           codes=codes, decoded=decoded, margin=np.float32(min(margins)),
           fp32_error=np.float32(fp32_error),
           torch=np.array(torch.__version__))
  n = sum(v.numel() for k, v in state.items() if not k.startswith("loss."))
  print(f"{n} parameters (+ {len([k for k in state if k.startswith('loss.')])} loss "
        f"tensors); margin {min(margins):.3g}; fp32 error {fp32_error:.2g}; codes used {len(np.unique(indices))}; "
        f"|rec| {np.abs(rec).mean():.3f} |decoded| {np.abs(decoded).mean():.3f}")


if __name__ == "__main__":
  count() if "--count" in sys.argv else main()
