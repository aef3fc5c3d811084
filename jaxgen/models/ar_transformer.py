"""Causal (decoder-only) transformer over a flattened token grid, as in the second stage
of VQGAN (Esser et al. 2021) and ViT-VQGAN (Yu et al. 2022), as a Flax Linen module.

Sequence: a prefix of ``k`` condition tokens, then the codes in raster order. The
prefix is ``num_class_tokens`` class tokens (label ``num_classes`` is the null class,
for classifier-free guidance) or, for text-to-image (``text_length`` > 0; LlamaGen's
layout), the ``text_length`` encoder tokens of the text dict of `jaxgen.conditioning`
projected to the model width, their padding masked as keys everywhere, then one
learned start token that predicts the first code (so no prediction is read at a
padding position; the null text "" is the unconditional input). Position ``p`` holds
prefix token ``p`` for ``p < k`` and code ``p - k`` after; the output at position ``p``
predicts code ``p - k + 1``, so the inputs are ``prefix + codes[:-1]`` (length
``k + N - 1``) and the outputs from position ``k - 1`` on are the N code logits
(teacher forcing). Learned positions, embedding dropout, pre-LN causal blocks, a final
LN, and a linear head (or one tied to the token embedding, ``tie_output``).

Video grids (``grid_shape`` (T', h, w)): the codes in t-major raster order (frame by
frame, VideoGPT's order), so a frame's codes see every earlier frame; with
``video_positions`` "factorized" (the default) a spatial table over the prefix and h x w
plus a temporal table over T' (`token_transformer.factorized_positions`), "full" one
table over every position as for images.

Cached decoding: ``init_cache(batch)`` gives one KV cache per block
(``jaxgen.nn.layers.init_kv_cache``); ``decode(tokens, labels, cache)`` runs ``l`` new
inputs at the cache's positions ``index .. index + l - 1`` and returns their logits and
the new cache; ``decode_step`` is the one-token case. The cache is explicit (in and
out), so it lives in the sampler loop's carry.

Named sizes: ``base`` is GPT-2 small's shape (12 layers, 768 wide, 12 heads); the
``fmnist_*`` sizes match MaskGIT's of the same name (jaxgen.models.token_transformer).
"""

from __future__ import annotations

import math
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.models import token_transformer
from jaxgen.nn import layers

# depth, hidden_size, num_heads, mlp_dim
SIZES = {
    "base": (12, 768, 12, 3072),
    "fmnist_small": (6, 256, 8, 1024),
    "fmnist_tiny": (4, 128, 4, 512),
}
registry.register_variants(["ar_transformer"], SIZES)


class ARTransformer(nn.Module):
  """See the module docstring."""
  num_tokens: int
  codebook_size: int
  num_classes: int
  hidden_size: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int = 2048
  num_class_tokens: int = 1
  dropout: float = 0.1
  tie_output: bool = False
  attn_impl: str = "xla"
  text_length: int = 0
  grid_shape: Tuple[int, ...] = ()   # (T', h, w) for video grids; () or (h, w): image
  video_positions: str = "factorized"
  dtype: jnp.dtype = jnp.float32

  @property
  def factorized(self) -> bool:
    """Whether positions are factorised over a video grid's space and time."""
    return token_transformer.uses_factorized_positions(self.grid_shape,
                                                       self.video_positions)

  @property
  def prefix_len(self) -> int:
    """Condition tokens before the first code: text tokens + a start token, or class
    tokens."""
    return self.text_length + 1 if self.text_length else self.num_class_tokens

  @property
  def seq_len(self) -> int:
    """Positions the model has: the prefix and every code but the last."""
    return self.prefix_len + self.num_tokens - 1

  def setup(self):
    d, k = self.hidden_size, self.prefix_len
    if k < 1:
      raise ValueError(f"num_class_tokens={k}: the first code needs a prefix token.")
    self.token_embedding = layers.embedding_table(self, "token_embedding",
                                                  self.codebook_size, d)
    if self.text_length:
      self.text_projection = layers.Mlp(d, d, dtype=self.dtype)
      self.text_start = layers.embedding_table(self, "text_start", 1, d)
    else:
      self.class_embedding = layers.LabelEmbedder(self.num_classes, d * k)
    if self.factorized:
      self.position_embedding = layers.embedding_table(
          self, "position_embedding", k + math.prod(self.grid_shape[1:]), d)
      self.temporal_embedding = layers.embedding_table(self, "temporal_embedding",
                                                       self.grid_shape[0], d)
    else:
      self.position_embedding = layers.embedding_table(self, "position_embedding",
                                                       self.seq_len, d)
    self.embedding_dropout = nn.Dropout(self.dropout)
    self.transformer = layers.Transformer(self.depth, self.num_heads, self.mlp_dim,
                                          self.dropout, self.attn_impl, self.dtype)
    if not self.tie_output:
      self.head = layers.Dense(self.codebook_size, ("embed", "vocab"), dtype=self.dtype)

  def _prefix(self, cond):
    """(B, k, D) prefix tokens and their padding mask (None for class prefixes)."""
    if self.text_length:
      text, mask = layers.condition_prefix(cond, text_projection=self.text_projection,
                                           text_length=self.text_length)
      b, d = text.shape[0], self.hidden_size
      start = jnp.broadcast_to(self.text_start[None].astype(text.dtype), (b, 1, d))
      return (jnp.concatenate([text, start], axis=1),
              jnp.concatenate([mask, jnp.ones((b, 1), bool)], axis=1))
    return layers.condition_prefix(cond, class_embedding=self.class_embedding,
                                   num_class_tokens=self.prefix_len)

  def _embed(self, tokens_bl, cls_bkd, start):
    """Inputs at positions ``start .. start + l - 1``: prefix tokens below ``k``, the
    embedded ``tokens_bl`` (codes) from ``k`` on; plus learned positions."""
    l = tokens_bl.shape[1]
    k = self.prefix_len
    pos = start + jnp.arange(l, dtype=jnp.int32)
    cls_bld = jnp.take(cls_bkd.astype(self.dtype), jnp.clip(pos, 0, k - 1), axis=1)
    tok_bld = jnp.take(self.token_embedding, jnp.clip(tokens_bl, 0, self.codebook_size - 1),
                       axis=0)
    x = jnp.where((pos < k)[None, :, None], cls_bld, tok_bld)
    if self.factorized:
      x = x + token_transformer.factorized_positions(
          self.position_embedding, self.temporal_embedding, pos, k, self.grid_shape)[None]
    else:
      x = x + jax.lax.dynamic_slice_in_dim(self.position_embedding, start, l)[None]
    return layers.constrain(x.astype(self.dtype), ("batch", "length", "act_embed"))

  def _logits(self, x_bld):
    if self.tie_output:
      logits = jnp.einsum("bld,vd->blv", x_bld, self.token_embedding.astype(x_bld.dtype))
    else:
      logits = self.head(x_bld)
    return logits.astype(jnp.float32)

  def __call__(self, codes_bn, labels_b, train: bool = False):
    """Teacher-forced logits (B, N, codebook_size): entry ``i`` predicts code ``i`` from
    the prefix and codes ``< i``."""
    b, n = codes_bn.shape
    if n != self.num_tokens:
      raise ValueError(f"AR transformer: {n} tokens per example, the model was built for "
                       f"{self.num_tokens}.")
    k = self.prefix_len
    prefix, prefix_mask = self._prefix(labels_b)
    inputs = jnp.concatenate([jnp.zeros((b, k), jnp.int32), codes_bn[:, :-1]], axis=1)
    x = self.embedding_dropout(self._embed(inputs, prefix, 0), deterministic=not train)
    mask = layers.causal_mask(self.seq_len)
    keys = layers.key_mask(prefix_mask, self.seq_len - k)
    x = self.transformer(x, mask if keys is None else jnp.logical_and(mask, keys), train)
    return self._logits(x[:, k - 1:])

  def init_cache(self, batch: int, max_len: int = 0):
    """Empty KV caches (one per block) for ``max_len`` positions (default: all of them,
    ``seq_len``). Needs no parameters."""
    max_len = max_len or self.seq_len
    if max_len > self.seq_len:
      raise ValueError(f"A KV cache of {max_len} positions is longer than the model's "
                       f"{self.seq_len} positions ({self.prefix_len} prefix + "
                       f"{self.num_tokens} - 1 codes).")
    head_dim = self.hidden_size // self.num_heads
    return tuple(layers.init_kv_cache(batch, max_len, self.num_heads, head_dim, self.dtype)
                 for _ in range(self.depth))

  def decode(self, tokens_bl, labels_b, cache):
    """Cached forward of ``l`` new inputs at positions ``index .. index + l - 1`` (the
    tokens at prefix positions are ignored: the condition fills them). Returns logits
    (B, l, codebook_size), each predicting the code after its position, and the cache.
    Padded text-prefix positions stay masked as keys in every later call."""
    l, max_len = tokens_bl.shape[1], cache[0]["k"].shape[1]
    if max_len > self.seq_len:
      raise ValueError(f"KV cache of {max_len} positions > the model's {self.seq_len}.")
    layers.check_cache_room(cache[0]["index"], l, max_len)
    prefix, prefix_mask = self._prefix(labels_b)
    x = self._embed(tokens_bl, prefix, cache[0]["index"])
    x, cache = self.transformer(x, layers.key_mask(prefix_mask, max_len - self.prefix_len),
                                False, cache=cache)
    return self._logits(x), cache

  def decode_step(self, token_b, labels_b, cache):
    """One position: ``token_b`` (B,) in, next-code logits (B, V) and the cache out."""
    logits, cache = self.decode(token_b[:, None], labels_b, cache)
    return logits[:, 0], cache


@registry.MODELS.register("ar_transformer")
def build_ar_transformer(cfg: ml_collections.ConfigDict, *, num_tokens: int,
                         codebook_size: int, num_classes: int, dtype=jnp.float32,
                         text_length: int = 0, grid_shape: Tuple[int, ...] = ()
                         ) -> ARTransformer:
  """From ``config.model``: ``variant`` (a SIZES name) fills depth/width/heads/MLP;
  explicit fields override it. ``text_length`` > 0: a text prefix of that length.
  ``grid_shape``: a video grid (T', h, w), whose positions
  ``config.model.video_positions`` embeds."""
  kw = token_transformer.sized_kwargs(
      cfg, SIZES, ("depth", "hidden_size", "num_heads", "mlp_dim"),
      ("num_class_tokens", "dropout", "tie_output", "attn_impl", "video_positions"),
      "AR transformer")
  return ARTransformer(num_tokens=num_tokens, codebook_size=codebook_size,
                       num_classes=num_classes, dtype=dtype, text_length=text_length,
                       grid_shape=tuple(grid_shape), **kw)
