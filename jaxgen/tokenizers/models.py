"""Registered tokenizer models: ``config.model.name`` in {vqgan, vit_vqgan, kl_vae}.

``config.model`` fields: ``variant`` (a named size of ``jaxgen.tokenizers.nets``) and any
of its fields as overrides (``channels``, ``channel_mult``, ``z_channels``, ...), plus
the bottleneck: ``bottleneck`` ("vq" | "msvq" | "kl"), ``embed_dim``, and for VQ
``codebook_size``, ``code_dim``, ``beta``, ``l2_normalize``, ``factorized``,
``ema_codebook``, ``ema_decay``, ``restart_dead``, ``dead_threshold``; for "msvq"
``scales``, ``num_phi``, ``phi_ratio``.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxgen import registry
from jaxgen.tokenizers import autoencoder, nets

# config.model fields that are not network sizes
_BOTTLENECK_FIELDS = ("name", "variant", "bottleneck", "embed_dim", "codebook_size",
                      "code_dim", "beta", "l2_normalize", "factorized", "ema_codebook",
                      "ema_decay", "restart_dead", "dead_threshold", "scales", "num_phi",
                      "phi_ratio", "usage_decay")


def build_autoencoder(cfg, *, image_shape, num_classes: int = 0, dtype=jnp.float32
                      ) -> autoencoder.Autoencoder:
  del num_classes
  sizes = nets.autoencoder_variant(cfg.variant) if cfg.variant else {}
  sizes.update({k: v for k, v in cfg.items() if k not in _BOTTLENECK_FIELDS})
  if cfg.bottleneck == "kl":
    sizes["double_z"] = True
  sizes.pop("codebook_size", None)
  sizes.pop("embed_dim", None)
  encoder, decoder = nets.build_nets(sizes, image_channels=image_shape[-1], dtype=dtype)
  embed_dim = cfg.embed_dim or sizes["z_channels"]
  return autoencoder.Autoencoder(
      encoder=encoder, decoder=decoder, bottleneck=cfg.bottleneck, embed_dim=embed_dim,
      z_channels=sizes["z_channels"], quantizer=autoencoder.vq_from_config(cfg, cfg.bottleneck),
      dtype=dtype)


for _name in ("vqgan", "vit_vqgan", "kl_vae"):
  registry.MODELS.register(_name)(build_autoencoder)
registry.register_variants(["vqgan", "vit_vqgan", "kl_vae"], nets.VARIANTS)
registry.register_model_fields(["vqgan", "vit_vqgan", "kl_vae"], dict(
    embed_dim=None,             # code / latent width; None = z_channels
    beta=0.25,                  # commitment weight
    l2_normalize=False,         # ViT-VQGAN's l2-normalised codes (cosine lookup)
    factorized=False,           # ViT-VQGAN's factorised (low-dimensional) lookup
    ema_codebook=False,         # codebook updated by EMA instead of gradients
    ema_decay=0.99,
    restart_dead=False,         # re-seed codes unused for a while from the batch
    dead_threshold=1e-3,        # usage (EMA of assignments) under which a code is dead
    num_phi=4,                  # multi-scale VQ: shared refinement convs (VAR's phi)
    phi_ratio=0.5,              # multi-scale VQ: residual ratio of phi
))
