"""Bidirectional token transformer (MaskGIT, Chang et al. 2022) as a Flax Linen module.

Input: a flattened token grid (B, N) with codes in ``[0, codebook_size)`` and the
[MASK] id ``codebook_size``, and the condition: class labels (B,) (label
``num_classes`` is the null class, for classifier-free guidance), which become
``num_class_tokens`` prefix tokens, or, for a text-to-image model (``text_length`` > 0),
the text dict of `jaxgen.conditioning` whose encoder tokens, projected to the model
width (``text_projection``), are the prefix, their padding masked as keys (the null
text "" is the unconditional input; Muse conditions on T5 tokens by cross-attention,
here they share the self-attention as in LlamaGen's prefix). Learned position
embeddings over prefix and tokens, an embedding LayerNorm and dropout (BERT's
embedding layer), pre-LN blocks, and BERT's masked-token head whose output weights
are tied to the token embedding (``tie_output``), as in the official model.
Output: logits (B, N, codebook_size) over the codes (never over [MASK]).

Video token grids (``grid_shape`` (T', h, w), the codes of a causal video tokenizer,
flattened t-major: frame by frame, each in raster order): with ``video_positions``
"factorized" (the default) the learned positions are factorised, a spatial table
over the prefix and the h x w grid (``position_embedding``, shared by every latent
frame) plus a temporal table over the T' frames (``temporal_embedding``); "full" keeps
one learned table over all T' h w positions, which makes the model the image model
of a flattened grid. Image grids (2 axes) always have the one table, unchanged.

``layout`` "bert" is the official model's block layout (google-research/maskgit
``maskgit/nets/maskgit_transformer.py``, a BERT): post-LN blocks without a final
LayerNorm, every LayerNorm with eps 1e-12, a tanh-GELU head; with it, the weights of the
released checkpoints give the official logits (`jaxgen.convert.maskgit`, which puts the
official single vocabulary, codes + class tokens + [MASK], into ``token_embedding`` and
``class_embedding``). The default "pre_ln" is jaxgen's (pre-LN blocks, a final
LayerNorm, eps 1e-6, exact-GELU head). The official model also drops attention
probabilities in training (jaxgen does not).

Named sizes: ``maskgit_imagenet`` is the paper's ImageNet model (24 layers, 768 wide,
3072 MLP, 16 heads in the official config) with 16x16 tokens and 1024 codes; the
converted official checkpoint is it with ``layout="bert"``.
"""

from __future__ import annotations

import math
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.nn import layers

# depth, hidden_size, num_heads, mlp_dim
SIZES = {
    "maskgit_imagenet": (24, 768, 16, 3072),  # maskgit/configs/maskgit_class_cond_config.py
    "fmnist_small": (6, 256, 8, 1024),
    "fmnist_tiny": (4, 128, 4, 512),
}
registry.register_variants(["maskgit_transformer"], SIZES)

# How a video grid's (T', h, w) positions are embedded (`factorized_positions`).
VIDEO_POSITIONS = ("factorized", "full")
registry.register_model_fields(["maskgit_transformer", "ar_transformer"], dict(
    video_positions="factorized",  # (T', h, w) grids: factorized (space + time) | full
))
# Block layouts of the MaskGIT transformer (see the module docstring).
LAYOUTS = ("pre_ln", "bert")
registry.register_model_fields(["maskgit_transformer"], dict(
    layout="pre_ln",  # pre_ln (jaxgen) | bert (the official MaskGIT's post-LN BERT)
))


def uses_factorized_positions(grid_shape: Tuple[int, ...], video_positions: str) -> bool:
  """Whether a model over ``grid_shape`` embeds positions factorised (space + time):
  video grids (3 axes) with ``video_positions="factorized"``; never image grids.
  An unknown ``video_positions`` is a ValueError."""
  if video_positions not in VIDEO_POSITIONS:
    raise ValueError(f"video_positions={video_positions!r}; use one of "
                     f"{', '.join(VIDEO_POSITIONS)}.")
  return len(grid_shape) == 3 and video_positions == "factorized"


def factorized_positions(spatial, temporal, positions, num_prefix: int,
                         grid_shape: Tuple[int, ...]):
  """(L, D) position embeddings of the sequence ``positions`` (L,): a prefix of
  ``num_prefix`` positions, then the codes of a (T', h, w) grid in t-major raster
  order. Prefix position ``p`` gets ``spatial[p]``; the code at frame ``t`` and
  spatial index ``s`` (position ``num_prefix + t h w + s``) gets
  ``spatial[num_prefix + s] + temporal[t]``. ``spatial``: (num_prefix + h w, D),
  ``temporal``: (T', D)."""
  hw = math.prod(grid_shape[1:])
  positions = jnp.asarray(positions, jnp.int32)
  code = jnp.maximum(positions - num_prefix, 0)
  is_code = (positions >= num_prefix)[:, None]
  space = jnp.take(spatial, jnp.where(positions >= num_prefix, num_prefix + code % hw,
                                      positions), axis=0)
  time = jnp.take(temporal, jnp.minimum(code // hw, grid_shape[0] - 1), axis=0)
  return space + jnp.where(is_code, time, jnp.zeros_like(time))


class MaskGITTransformer(nn.Module):
  """See the module docstring."""
  num_tokens: int
  codebook_size: int
  num_classes: int
  hidden_size: int = 768
  depth: int = 24
  num_heads: int = 16
  mlp_dim: int = 3072
  num_class_tokens: int = 1
  dropout: float = 0.1
  tie_output: bool = True
  attn_impl: str = "xla"
  text_length: int = 0
  grid_shape: Tuple[int, ...] = ()   # (T', h, w) for video grids; () or (h, w): image
  video_positions: str = "factorized"
  layout: str = "pre_ln"
  dtype: jnp.dtype = jnp.float32

  @property
  def factorized(self) -> bool:
    """Whether positions are factorised over a video grid's space and time."""
    return uses_factorized_positions(self.grid_shape, self.video_positions)

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  @property
  def prefix_len(self) -> int:
    return self.text_length or self.num_class_tokens

  @nn.compact
  def __call__(self, tokens_bn, labels_b, train: bool = False):
    """Logits (B, N, codebook_size); ``labels_b``: labels or the text condition dict."""
    b, n = tokens_bn.shape
    if n != self.num_tokens:
      raise ValueError(f"MaskGIT: {n} tokens per example, the model was built for "
                       f"{self.num_tokens}.")
    if self.layout not in LAYOUTS:
      raise ValueError(f"MaskGIT: layout={self.layout!r}; use one of {', '.join(LAYOUTS)}.")
    bert = self.layout == "bert"
    eps = 1e-12 if bert else 1e-6
    d, k = self.hidden_size, self.prefix_len
    table = layers.embedding_table(self, "token_embedding", self.codebook_size + 1, d)
    x = jnp.take(table, tokens_bn, axis=0)
    if self.text_length:
      proj = dict(text_projection=layers.Mlp(d, d, dtype=self.dtype, name="text_projection"))
    else:
      proj = dict(class_embedding=layers.LabelEmbedder(self.num_classes, d * k,
                                                       name="class_embedding"))
    prefix, prefix_mask = layers.condition_prefix(labels_b, num_class_tokens=k,
                                                  text_length=self.text_length, **proj)
    x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
    if self.factorized:
      spatial = layers.embedding_table(self, "position_embedding",
                                       k + math.prod(self.grid_shape[1:]), d)
      temporal = layers.embedding_table(self, "temporal_embedding", self.grid_shape[0], d)
      x = x + factorized_positions(spatial, temporal, jnp.arange(k + n), k,
                                   self.grid_shape)[None]
    else:
      x = x + layers.embedding_table(self, "position_embedding", k + n, d)[None]
    x = layers.LayerNorm(epsilon=eps, name="embedding_norm")(x).astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, self.dropout,
                           self.attn_impl, self.dtype, post_ln=bert, ln_eps=eps,
                           name="transformer")(x, layers.key_mask(prefix_mask, n), train)
    x = x[:, k:]
    if self.tie_output:
      return layers.MlmHead(self.dtype, epsilon=eps, approximate_gelu=bert, name="head")(
          x, table[:self.codebook_size])
    return layers.Dense(self.codebook_size, ("embed", "vocab"), dtype=self.dtype,
                        name="head")(x).astype(jnp.float32)


def sized_kwargs(cfg: ml_collections.ConfigDict, sizes: dict, size_fields, extra_fields,
                 what: str) -> dict:
  """Constructor kwargs of a token model from ``config.model``: ``variant`` (a ``sizes``
  name) fills ``size_fields``; any non-None field of ``size_fields + extra_fields``
  overrides. Shared by MaskGIT, MAGE and the autoregressive transformer."""
  kw = {}
  if cfg.variant:
    if cfg.variant not in sizes:
      raise ValueError(f"Unknown {what} size {cfg.variant!r}; use one of "
                       f"{', '.join(sizes)} or set {'/'.join(size_fields)}.")
    kw = dict(zip(size_fields, sizes[cfg.variant]))
  for key in tuple(size_fields) + tuple(extra_fields):
    if cfg.get(key) is not None:
      kw[key] = cfg[key]
  return kw


@registry.MODELS.register("maskgit_transformer")
def build_maskgit_transformer(cfg: ml_collections.ConfigDict, *, num_tokens: int,
                              codebook_size: int, num_classes: int, dtype=jnp.float32,
                              text_length: int = 0, grid_shape: Tuple[int, ...] = ()
                              ) -> MaskGITTransformer:
  """From ``config.model``: ``variant`` (a SIZES name) fills depth/width/heads/MLP;
  explicit fields override it. ``text_length`` > 0: text-conditioned (prefix of that
  many encoder tokens). ``grid_shape``: a video grid (T', h, w), whose positions
  ``config.model.video_positions`` embeds."""
  kw = sized_kwargs(cfg, SIZES, ("depth", "hidden_size", "num_heads", "mlp_dim"),
                    ("num_class_tokens", "dropout", "tie_output", "attn_impl",
                     "video_positions", "layout"), "MaskGIT")
  return MaskGITTransformer(num_tokens=num_tokens, codebook_size=codebook_size,
                            num_classes=num_classes, dtype=dtype, text_length=text_length,
                            grid_shape=tuple(grid_shape), **kw)
