"""Registered tokenizer models: ``config.model.name`` in {vqgan, vit_vqgan, kl_vae,
causal_vqgan, causal_kl_vae} (one builder: the names say what a config trains; the
``causal_*`` ones are the video tokenizers, with a ``causal3d`` variant).

``config.model`` fields: ``variant`` (a named size of ``jaxgen.tokenizers.nets``) and any
of its fields as overrides (``channels``, ``channel_mult``, ``z_channels``, ...), plus
the bottleneck: ``bottleneck`` ("vq" | "msvq" | "lfq" | "kl"), ``embed_dim``, and for VQ
``codebook_size``, ``code_dim``, ``beta``, ``l2_normalize``, ``factorized``,
``ema_codebook``, ``ema_decay``, ``restart_dead``, ``dead_threshold``; for "msvq"
``scales``, ``num_phi``, ``phi_ratio``; for "lfq" ``codebook_size`` (2^embed_dim),
``beta``, ``entropy_weight``, ``codebook_entropy_weight``, ``entropy_temperature``,
``entropy_form``, ``entropy_anneal_steps``, ``entropy_anneal_factor``, ``lfq_scale``,
``lfq_norm``, ``dead_threshold`` (`quantizers.LookupFreeQuantizer`). ``quant_proj``
and ``unit_range``: `autoencoder.Autoencoder`'s (False and True for MaskGIT's VQGAN);
``quant_conv_kernel`` (1: linear bottleneck projections; 3: VAR's 3x3 convs). ``inflate_from``: a
trained 2D conv tokenizer run whose encoder/decoder initialise a causal 3D one
(`jaxgen.paradigms.tokenizer`, `jaxgen.tokenizers.inflation`).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxgen import registry
from jaxgen.tokenizers import autoencoder, nets

# config.model fields that are not network sizes
_BOTTLENECK_FIELDS = ("name", "variant", "bottleneck", "embed_dim", "codebook_size",
                      "code_dim", "beta", "l2_normalize", "factorized", "ema_codebook",
                      "ema_decay", "restart_dead", "dead_threshold", "scales", "num_phi",
                      "phi_ratio", "usage_decay", "entropy_weight",
                      "codebook_entropy_weight", "entropy_temperature", "entropy_form",
                      "entropy_anneal_steps", "entropy_anneal_factor", "lfq_scale",
                      "lfq_norm", "inflate_from", "quant_proj", "unit_range",
                      "quant_conv_kernel")
MODEL_NAMES = ("vqgan", "vit_vqgan", "kl_vae", "causal_vqgan", "causal_kl_vae")


def network_sizes(cfg):
  """The encoder/decoder fields of ``config.model``: its variant's, overridden by the
  model's own fields that are not bottleneck fields."""
  sizes = nets.autoencoder_variant(cfg.variant) if cfg.get("variant") else {}
  sizes.update({k: v for k, v in cfg.items() if k not in _BOTTLENECK_FIELDS})
  return sizes


def bottleneck_width(cfg) -> int:
  """The bottleneck's width: ``config.model.embed_dim``, else the nets' z_channels."""
  return int(cfg.get("embed_dim") or network_sizes(cfg)["z_channels"])


def build_autoencoder(cfg, *, image_shape, num_classes: int = 0, dtype=jnp.float32
                      ) -> autoencoder.Autoencoder:
  del num_classes
  sizes = network_sizes(cfg)
  if cfg.bottleneck == "kl":
    sizes["double_z"] = True
  sizes.pop("codebook_size", None)
  sizes.pop("embed_dim", None)
  encoder, decoder = nets.build_nets(sizes, image_channels=image_shape[-1], dtype=dtype)
  embed_dim = cfg.embed_dim or sizes["z_channels"]
  return autoencoder.Autoencoder(
      encoder=encoder, decoder=decoder, bottleneck=cfg.bottleneck, embed_dim=embed_dim,
      z_channels=sizes["z_channels"], quantizer=autoencoder.vq_from_config(cfg, cfg.bottleneck),
      use_quant_proj=cfg.quant_proj, unit_range=cfg.unit_range, dtype=dtype,
      quant_kernel=int(cfg.get("quant_conv_kernel") or 1))


for _name in MODEL_NAMES:
  registry.MODELS.register(_name)(build_autoencoder)
registry.register_variants(MODEL_NAMES, nets.VARIANTS)
registry.register_model_fields(MODEL_NAMES, dict(
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
    # lookup-free quantization (bottleneck="lfq"; MAGVIT-v2's loss, see LookupFreeQuantizer)
    entropy_weight=0.1,         # weight of the entropy loss (after annealing)
    codebook_entropy_weight=1.0,  # weight of the batch (codebook) entropy inside it
    entropy_temperature=0.01,   # softmax temperature of the code assignment
    entropy_form="auto",        # full (2^d table) | factorized (per bit) | auto
    entropy_anneal_steps=0,     # entropy weight from factor * w down to w over these steps
    entropy_anneal_factor=3.0,
    lfq_scale=1.0,              # codes are {-scale, +scale}^d
    lfq_norm="none",            # none | rms (normalise z onto the codes' sphere first)
    inflate_from="",            # a trained 2D conv tokenizer run to inflate (causal3d only)
    quant_proj=True,            # 1x1 projections around the bottleneck (MaskGIT's VQGAN: none)
    unit_range=False,           # the nets compute on images in [0, 1] (MaskGIT's VQGAN)
    quant_conv_kernel=1,        # bottleneck projections: 1 = linear, 3 = 3x3 convs (VAR)
))
