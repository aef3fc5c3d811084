"""The autoencoder every tokenizer is: encoder -> bottleneck -> decoder.

One Linen module composes any registered encoder/decoder pair (conv VQGAN, ViT-VQGAN,
causal 3D conv) with one of four bottlenecks:

  "vq"    vector quantizer (plain, factorised and/or l2-normalised, EMA codebook):
          codes are int32 grids ``x.shape[1:-1] / factor``.
  "msvq"  VAR's multi-scale residual quantizer: codes are a list of (N, s, s) grids.
  "lfq"   lookup-free quantizer (MAGVIT-v2): codes are int32 grids like "vq"'s, from
          the signs of ``embed_dim = log2(codebook_size)`` channels (no codebook).
  "kl"    diagonal Gaussian (KL-VAE): continuous latents (N, h, w, embed_dim).

On videos (N, T, H, W, C) through the causal 3D nets the grids gain a leading time
axis: codes (N, T', h, w), latents (N, T', h, w, embed_dim).

Linear 1x1 projections ("quant_conv" / "post_quant_conv" in taming) map the encoder's
channels to the bottleneck and back; they act on the last axis only, so nothing here
assumes two spatial dimensions (the quantizers do not either, except "msvq").
``use_quant_proj=False`` (``config.model.quant_proj``) leaves them out (MaskGIT's
VQGAN quantizes the encoder's output itself): ``embed_dim`` must then equal
``z_channels``.

Images are in [-1, 1] at this module's interface. ``unit_range=True``: the nets compute
on images in [0, 1], as MaskGIT's tokenizer was trained (the encoder sees (x + 1) / 2,
the decoder's output y is returned as 2 y - 1).
``quant_kernel=3`` makes them (when present) 3x3 convolutions ("SAME" padding) over the last two
spatial axes instead, as VAR's VQVAE has them (``quant_conv_ks=3``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.losses import kl as kl_lib
from jaxgen.nn import layers
from jaxgen.tokenizers import quantizers

BOTTLENECKS = ("vq", "msvq", "lfq", "kl")


class Autoencoder(nn.Module):
  """``__call__(x, train, rng) -> (reconstruction, aux)``.

  ``aux`` holds ``"loss"`` (the bottleneck's own loss: codebook + beta * commitment for
  VQ, the KL term for "kl"), ``"indices"`` (VQ), and metrics (perplexity, usage).
  """
  encoder: nn.Module
  decoder: nn.Module
  bottleneck: str
  embed_dim: int                          # width of the bottleneck (codes / latents)
  z_channels: int                         # encoder output / decoder input width
  quantizer: Optional[nn.Module] = None   # "vq" / "msvq" / "lfq"
  use_quant_proj: bool = True             # the 1x1 projections around the bottleneck
  unit_range: bool = False                # the nets compute on images in [0, 1]
  dtype: Any = jnp.float32
  quant_kernel: int = 1                   # 1: linear projections; 3: VAR's 3x3 convs

  def setup(self):
    width = 2 * self.embed_dim if self.bottleneck == "kl" else self.embed_dim
    if self.quant_kernel == 1:
      proj = lambda n: layers.Dense(n, ("embed", "embed_out"), dtype=self.dtype)
    elif self.quant_kernel == 3:
      proj = lambda n: layers.Conv(n, (3, 3), dtype=self.dtype)
    else:
      raise ValueError(f"quant_kernel={self.quant_kernel}: the bottleneck projections are "
                       "1 (linear, taming / LDM) or 3 (3x3 convs, VAR's VQVAE).")
    if self.use_quant_proj:
      self.quant_proj = proj(width)
      self.post_quant_proj = proj(self.z_channels)
    elif self.embed_dim != self.z_channels:
      raise ValueError(f"Autoencoder: without quant projections embed_dim "
                       f"({self.embed_dim}) must equal z_channels ({self.z_channels}).")

  # -- the two halves ---------------------------------------------------------------
  def encode_features(self, x):
    """Pre-bottleneck features (N, ..., width): for "kl" the Gaussian's moments."""
    if self.unit_range:
      x = (x + 1.0) / 2.0
    h = self.encoder(x).astype(jnp.float32)
    return self.quant_proj(h) if self.use_quant_proj else h

  def decode(self, z):
    """Images from bottleneck-space vectors (quantized codes or latents)."""
    y = self.decoder(self.post_quant_proj(z) if self.use_quant_proj else z)
    return 2.0 * y - 1.0 if self.unit_range else y

  def bottleneck_forward(self, h, train: bool, rng: Optional[jax.Array]
                         ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    if self.bottleneck == "kl":
      post = kl_lib.DiagonalGaussian.from_moments(h)
      z = post.sample(rng) if (train and rng is not None) else post.mode()
      kl = jnp.mean(post.kl())
      return z, {"loss": kl, "kl": kl, "latent_std": jnp.std(post.mean)}
    return self.quantizer(h, train=train)

  def __call__(self, x, train: bool = False, rng: Optional[jax.Array] = None):
    z, aux = self.bottleneck_forward(self.encode_features(x), train, rng)
    return self.decode(z), aux

  # -- the Tokenizer interface (used frozen) ----------------------------------------
  def encode(self, x):
    """Codes (int32 grid, or list of grids for "msvq") or latent means ("kl")."""
    h = self.encode_features(x)
    if self.bottleneck == "kl":
      return kl_lib.DiagonalGaussian.from_moments(h).mode()
    if self.bottleneck == "msvq":
      return self.quantizer.features_to_indices(h)
    _, aux = self.quantizer(h, train=False)
    return aux["indices"]

  def codes_to_embeddings(self, codes):
    """Bottleneck-space vectors of ``codes`` (latents pass through)."""
    if self.bottleneck == "kl":
      return codes
    if self.bottleneck == "msvq":
      return self.quantizer.indices_to_features(codes)
    return self.quantizer.embed(codes)

  def decode_codes(self, codes):
    return self.decode(self.codes_to_embeddings(codes))


def vq_from_config(cfg, bottleneck: str) -> Optional[nn.Module]:
  """The quantizer for ``config.model`` fields (codebook_size, code_dim, ...); None for
  "kl". "lfq" reads the ``entropy_*`` and ``lfq_*`` fields (`LookupFreeQuantizer`)."""
  if bottleneck == "vq":
    return quantizers.VectorQuantizer(
        codebook_size=cfg.codebook_size, code_dim=cfg.code_dim, beta=cfg.beta,
        l2_normalize=cfg.l2_normalize, factorized=cfg.factorized, use_ema=cfg.ema_codebook,
        ema_decay=cfg.ema_decay, restart_dead=cfg.restart_dead,
        dead_threshold=cfg.dead_threshold)
  if bottleneck == "msvq":
    return quantizers.MultiScaleResidualQuantizer(
        codebook_size=cfg.codebook_size, code_dim=cfg.code_dim,
        scales=tuple(cfg.scales), beta=cfg.beta, num_phi=cfg.num_phi,
        phi_ratio=cfg.phi_ratio, l2_normalize=cfg.l2_normalize,
        restart_dead=cfg.restart_dead, dead_threshold=cfg.dead_threshold)
  if bottleneck == "lfq":
    return quantizers.LookupFreeQuantizer(
        codebook_size=cfg.codebook_size, code_dim=cfg.get("code_dim"), beta=cfg.beta,
        entropy_weight=cfg.entropy_weight,
        codebook_entropy_weight=cfg.codebook_entropy_weight,
        entropy_temperature=cfg.entropy_temperature, entropy_form=cfg.entropy_form,
        entropy_anneal_steps=cfg.entropy_anneal_steps,
        entropy_anneal_factor=cfg.entropy_anneal_factor, scale=cfg.lfq_scale,
        norm=cfg.lfq_norm, dead_threshold=cfg.dead_threshold)
  return None
