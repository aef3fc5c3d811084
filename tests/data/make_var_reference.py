"""Makes tests/data/var_tiny_vae.pth, var_tiny_d2.pth and var_tiny_outputs.npz: VAR's
multi-scale VQVAE and VAR transformer built by the OFFICIAL code at a tiny size with
random weights, saved as the published ``vae_ch160v4096z32.pth`` / ``var_d16.pth`` are
(bare ``state_dict``s, buffers included), and their outputs on fixed inputs (run once,
in a throw-away venv with torch; the test suite needs neither torch nor VAR's code).

The official code is FoundationVision/VAR at commit
78b95394fc5896192e3a003e4b295f8ea743c48f (``models/vqvae.py``, ``models/quant.py``,
``models/basic_vae.py``, ``models/var.py``, ``models/basic_var.py``, ``dist.py``),
taken with ``git archive`` into a directory given as ``VAR_REPO`` (default
/tmp/var_off); nothing of it is committed.

Sizes. The VQVAE is ``models.vqvae.VQVAE`` (vocab 32, Cvae 8, 3x3 quant convs, 4
partially shared phi convs with ratio 0.5, scales (1, 2, 3, 4, 6, 8)) whose encoder and
decoder are the official ``Encoder`` / ``Decoder`` with ch 4, ch_mult (1, 2), one
res block per level, attention at the last level and in the mid blocks (VQVAE
hard-codes ch_mult (1, 1, 2, 2, 4) and 2 blocks; the nets are rebuilt smaller to keep
the file small). The official ``Normalize`` is GroupNorm(32 groups), which needs widths
that are multiples of 32; here it is patched to gcd(32, C) groups, what jaxgen's
GroupNorm takes (equal to 32 for the official widths 160 / 320 / 640). Images 16x16 ->
8x8 features. The transformer is ``models.var.VAR`` (10 classes, depth 2, width 16, 2
heads, l2-normalised attention, no shared adaLN, as ``build_vae_var``), with
``cond_drop_rate`` 0 (its forward drops labels even in eval) and no drop-path.
Seed 5 (its nearest codes win by >= 3.6e-3 in squared distance, 1..11 codes per scale).
Every parameter gets N(0, 0.02) noise after the official init (VAR's 1e-5 gates and
zero biases would otherwise hide a wrong map; the codebook keeps its N(0, 1) init).

Saved: ``x`` images (2, 3, 16, 16); ``f`` = quant_conv(encoder(x)); ``idx`` the
multi-scale indices of ``img_to_idxBl`` concatenated (2, 130); ``f_hat`` =
``embed_to_fhat`` of them (last scale); ``rec`` = decoder(post_quant_conv(f_hat)) (not
clamped); ``tf`` = ``idxBl_to_var_input`` (2, 129, 8); ``labels`` (one real, one the
null class 10) and ``logits`` = VAR(labels, tf) (2, 130, 32); and one sampling step of
``autoregressive_infer_cfg`` (B=2, cfg 1.5, top-k 0, top-p 0) with the draw replaced by
the argmax of fixed Gumbel noise ``gumbel`` added to the guided logits (scales 0 and 1;
``step_logits_k`` the guided logits, ``step_idx_k`` the draws, ``step_fhat`` f_hat
after scale 1).

Used: torch 2.14.1 (CPU), numpy 2.4.6, huggingface_hub 2.4.0, Python 3.11.7.

  VAR_REPO=/tmp/var_off python tests/data/make_var_reference.py
"""

import math
import os
import sys

import numpy as np

SEED = 5
SCALES = (1, 2, 3, 4, 6, 8)
VOCAB, CVAE, CH = 32, 8, 4
NETS = dict(ch=CH, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0, in_channels=3,
            z_channels=CVAE, using_sa=True, using_mid_sa=True)
VAR_SIZE = dict(num_classes=10, depth=2, embed_dim=16, num_heads=2, mlp_ratio=4.0)


def main():
  sys.path.insert(0, os.environ.get("VAR_REPO", "/tmp/var_off"))
  import torch  # pylint: disable=import-outside-toplevel
  from models import basic_vae, var as var_module  # pylint: disable=import-outside-toplevel
  from models.var import VAR  # pylint: disable=import-outside-toplevel
  from models.vqvae import VQVAE  # pylint: disable=import-outside-toplevel

  basic_vae.Normalize = lambda c, num_groups=32: torch.nn.GroupNorm(
      math.gcd(num_groups, c), c, eps=1e-6, affine=True)
  torch.manual_seed(SEED)
  vae = VQVAE(vocab_size=VOCAB, z_channels=CVAE, ch=32, test_mode=True, share_quant_resi=4,
              v_patch_nums=SCALES)
  vae.encoder = basic_vae.Encoder(double_z=False, **NETS)
  vae.decoder = basic_vae.Decoder(**NETS)
  vae.eval()
  var = VAR(vae_local=vae, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
            norm_eps=1e-6, shared_aln=False, cond_drop_rate=0.0, attn_l2_norm=True,
            patch_nums=SCALES, flash_if_available=False, fused_if_available=False,
            **VAR_SIZE)
  var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
  var.eval()
  with torch.no_grad():
    for module in (vae, var):
      for name, p in module.named_parameters():
        if name != "quantize.embedding.weight":
          p.add_(0.02 * torch.randn_like(p))

  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)
  out = {"x": x}
  with torch.no_grad():
    xt = torch.from_numpy(x)
    f = vae.quant_conv(vae.encoder(xt))
    idx = vae.img_to_idxBl(xt)
    ms_h = [vae.quantize.embedding(i).transpose(1, 2).reshape(2, CVAE, s, s)
            for i, s in zip(idx, SCALES)]
    f_hat = vae.quantize.embed_to_fhat(ms_h, all_to_max_scale=True, last_one=True)
    rec = vae.decoder(vae.post_quant_conv(f_hat))
    tf = vae.quantize.idxBl_to_var_input(idx)
    labels = torch.tensor([3, VAR_SIZE["num_classes"]])
    logits = var(labels, tf)
    out.update(f=f.numpy(), idx=torch.cat(idx, 1).numpy().astype(np.int32),
               f_hat=f_hat.numpy(), rec=rec.numpy(), tf=tf.numpy(),
               labels=labels.numpy().astype(np.int32), logits=logits.numpy())
    _check_margins(vae, f, SCALES)

    # One scale step of autoregressive_infer_cfg with fixed draws: argmax(logits + g).
    steps = 2
    gumbel = rng.gumbel(size=(steps, 2, SCALES[steps - 1] ** 2, VOCAB)).astype(np.float32)
    seen = []

    def fixed_draw(logits_blv, rng=None, top_k=0, top_p=0.0, num_samples=1):
      del rng, top_k, top_p
      k = len(seen)
      if k >= steps:
        raise StopSampling
      g = torch.from_numpy(gumbel[k, :, :logits_blv.shape[1]])
      idx_bl = (logits_blv + g).argmax(-1)
      seen.append((logits_blv.clone(), idx_bl))
      return idx_bl[..., None].expand(-1, -1, num_samples)

    captured = {}
    original = vae.quantize.get_next_autoregressive_input

    def record(si, sn, f_hat_, h):
      got = original(si, sn, f_hat_, h)
      captured["f_hat"] = got[0].clone()
      return got

    var_module.sample_with_top_k_top_p_ = fixed_draw
    vae.quantize.get_next_autoregressive_input = record
    try:
      var.autoregressive_infer_cfg(B=2, label_B=torch.tensor([3, 7]), cfg=1.5, top_k=0,
                                   top_p=0.0)
    except StopSampling:
      pass
    for b in var.blocks:
      b.attn.kv_caching(False)
    out["gumbel"] = gumbel
    out["step_labels"] = np.array([3, 7], np.int32)
    for k, (lg, ix) in enumerate(seen):
      out[f"step_logits_{k}"] = lg.numpy()
      out[f"step_idx_{k}"] = ix.numpy().astype(np.int32)
    out["step_fhat"] = captured["f_hat"].numpy()

  here = os.path.dirname(os.path.abspath(__file__))
  torch.save(vae.state_dict(), os.path.join(here, "var_tiny_vae.pth"))
  torch.save(var.state_dict(), os.path.join(here, "var_tiny_d2.pth"))
  out["torch"] = np.array(torch.__version__)
  np.savez(os.path.join(here, "var_tiny_outputs.npz"), **out)
  count = lambda m: sum(p.numel() for p in m.parameters())
  print(count(vae), "VQVAE parameters;", count(var), "VAR parameters")
  print("indices per scale:", [len(np.unique(i.numpy())) for i in idx],
        "| |rec|", float(np.abs(out["rec"]).mean()), "| |logits|",
        float(np.abs(out["logits"]).mean()))


class StopSampling(Exception):
  pass


def _check_margins(vae, f, scales):
  """The nearest code at every position of every scale wins by a clear margin (a near
  tie could flip between float implementations)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  q = vae.quantize
  emb = q.embedding.weight
  rest = f.clone()
  h_size = f.shape[-1]
  worst = math.inf
  for si, s in enumerate(scales):
    z = F.interpolate(rest, size=(s, s), mode="area") if si != len(scales) - 1 else rest
    z = z.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    d = torch.cdist(z, emb) ** 2
    two = d.topk(2, largest=False).values
    worst = min(worst, float((two[:, 1] - two[:, 0]).min()))
    idx = d.argmin(1).view(f.shape[0], s, s)
    h = q.embedding(idx).permute(0, 3, 1, 2)
    if si != len(scales) - 1:
      h = F.interpolate(h, size=(h_size, h_size), mode="bicubic")
    rest = rest - q.quant_resi[si / (len(scales) - 1)](h)
  print(f"smallest nearest-code margin (squared distance): {worst:.3g}")
  assert worst > 1e-3, worst


if __name__ == "__main__":
  main()
