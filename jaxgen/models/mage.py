"""MAGE (Li et al. 2023): a masked token encoder-decoder that both generates and learns
representations, as a Flax Linen module.

Input tokens (B, N) with the [MASK] id ``codebook_size`` at masked positions, class
labels (B,) (``num_classes`` = the null / "fake" class of unconditional MAGE), and a
``drop_mask`` (B, N) of positions the encoder does not see (a subset of the masked
ones; MAE-style). ``buffer_size`` buffer tokens carrying the class embedding are
prepended and never dropped. Text-to-image (``text_length`` > 0): the condition is the
text dict of `jaxgen.conditioning`; the buffer tokens carry the projected pooled text and
the projected encoder tokens follow them as a prefix the encoder attends to (padding
masked; never dropped); the decoder sees the buffer and the image positions only, so
it reads the text through the encoder.

Encoder: token + learned position embeddings, embedding LayerNorm and dropout, pre-LN
blocks over the buffer and the kept tokens only. The kept tokens are gathered into
``num_keep`` slots (a static number, so shapes are fixed under jit; training drops a
fixed ``ceil(N * mask_ratio_min)`` tokens as the official code does, generation and
feature extraction keep all N); slots beyond an example's kept count are padding that
no query attends to, which makes the result equal to dropping them.
Decoder: a linear map to the decoder width, dropped and masked positions filled with
the first buffer token's output (the official ``pad_with_cls_token``), learned
positions, pre-LN blocks, and the MLM head tied to the (stop-gradient) encoder token
embedding. Output: logits (B, N, codebook_size) and the encoder output.

Named sizes follow the official ``mage_vit_base_patch16`` / ``mage_vit_large_patch16``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.models import token_transformer
from jaxgen.nn import layers

# depth, hidden, heads, decoder depth, decoder hidden, decoder heads (mlp ratio 4).
SIZES = {
    "vit_base": (12, 768, 12, 8, 768, 16),
    "vit_large": (24, 1024, 16, 8, 1024, 16),
    "fmnist_small": (6, 256, 8, 4, 256, 8),
    "fmnist_tiny": (4, 128, 4, 2, 128, 4),
}
registry.register_variants(["mage"], SIZES)


class MAGE(nn.Module):
  """See the module docstring."""
  num_tokens: int
  codebook_size: int
  num_classes: int
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  decoder_hidden_size: int = 768
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  mlp_ratio: float = 4.0
  buffer_size: int = 1
  dropout: float = 0.1
  attn_impl: str = "xla"
  text_length: int = 0
  dtype: jnp.dtype = jnp.float32

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  @property
  def num_prefix(self) -> int:
    """Encoder positions before the image tokens: the buffer and any text tokens."""
    return self.buffer_size + self.text_length

  def setup(self):
    d, nb = self.hidden_size, self.buffer_size
    self.token_embedding = layers.embedding_table(self, "token_embedding",
                                                  self.codebook_size + 1, d)
    if self.text_length:
      self.text_projection = layers.Mlp(d, d, dtype=self.dtype)
      self.pooled_projection = layers.Dense(d, ("embed_in", "embed"), dtype=self.dtype)
    else:
      self.class_embedding = layers.LabelEmbedder(self.num_classes, d,
                                                  name="class_embedding")
    self.position_embedding = layers.embedding_table(self, "position_embedding",
                                                     self.num_prefix + self.num_tokens, d)
    self.embedding_norm = layers.LayerNorm()
    self.encoder = layers.Transformer(self.depth, self.num_heads,
                                      int(d * self.mlp_ratio), self.dropout,
                                      self.attn_impl, self.dtype)
    dd = self.decoder_hidden_size
    self.decoder_embed = layers.Dense(dd, ("embed", "mlp"), dtype=self.dtype)
    self.decoder_position_embedding = layers.embedding_table(
        self, "decoder_position_embedding", nb + self.num_tokens, dd)
    self.decoder = layers.Transformer(self.decoder_depth, self.decoder_num_heads,
                                      int(dd * self.mlp_ratio), self.dropout,
                                      self.attn_impl, self.dtype)
    self.head = layers.MlmHead(self.dtype)
    self.embed_dropout = nn.Dropout(self.dropout)

  def _prefix(self, cond, b: int):
    """Buffer tokens (B, nb + L, D) (text: followed by the L text tokens) and their
    attention mask (B, nb + L)."""
    nb, d = self.buffer_size, self.hidden_size
    if self.text_length:
      text, text_mask = layers.condition_prefix(cond, text_projection=self.text_projection,
                                                text_length=self.text_length)
      buf = self.pooled_projection(cond["text_pooled"].astype(self.dtype))
      buf = jnp.broadcast_to(buf[:, None], (b, nb, d))
      return (jnp.concatenate([buf, text.astype(buf.dtype)], axis=1),
              jnp.concatenate([jnp.ones((b, nb), bool), text_mask], axis=1))
    cls, _ = layers.condition_prefix(cond, class_embedding=self.class_embedding)
    return jnp.broadcast_to(cls, (b, nb, d)), jnp.ones((b, nb), bool)

  def encode(self, tokens_bn, labels_b, drop_mask_bn=None, num_keep=None,
             train: bool = False):
    """Encoder output (B, num_prefix + num_keep, D), the gathered positions (B,
    num_keep) and whether each slot holds a kept token (B, num_keep). ``labels_b``:
    labels or the text condition dict."""
    b, n = tokens_bn.shape
    if n != self.num_tokens:
      raise ValueError(f"MAGE: {n} tokens per example, the model was built for "
                       f"{self.num_tokens}.")
    npre = self.num_prefix
    num_keep = n if num_keep is None else num_keep
    if drop_mask_bn is None:
      drop_mask_bn = jnp.zeros((b, n), bool)
    x = jnp.take(self.token_embedding, tokens_bn, axis=0)
    prefix, prefix_mask = self._prefix(labels_b, b)
    x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1) + self.position_embedding[None]
    x = self.embedding_norm(x).astype(self.dtype)
    x = self.embed_dropout(x, deterministic=not train)
    # Kept positions first, in their original order (a stable sort on the drop flag).
    order = jnp.argsort(drop_mask_bn.astype(jnp.int32), axis=1, stable=True)[:, :num_keep]
    valid = ~jnp.take_along_axis(drop_mask_bn, order, axis=1)
    kept = jnp.take_along_axis(x[:, npre:], order[..., None], axis=1)
    x = jnp.concatenate([x[:, :npre], kept], axis=1)
    attend = jnp.concatenate([prefix_mask, valid], axis=1)
    x = self.encoder(x, attend[:, None, None, :], train)
    return x, order, valid

  def decode(self, enc_out, order, valid, mask_bn, train: bool = False):
    """Logits (B, N, codebook_size) for every position from the encoder output."""
    b, n = mask_bn.shape
    nb = self.buffer_size
    h = self.decoder_embed(enc_out)
    pad = h[:, :1]
    full = jnp.broadcast_to(pad, (b, n, h.shape[-1]))
    rows = jnp.arange(b)[:, None]
    slots = jnp.where(valid[..., None], h[:, self.num_prefix:], pad)
    full = full.at[rows, order].set(slots)  # padding slots write the pad value
    full = jnp.where(mask_bn[..., None], pad, full)
    x = jnp.concatenate([h[:, :nb], full], axis=1) + self.decoder_position_embedding[None]
    x = self.decoder(x.astype(self.dtype), None, train)
    table = jax.lax.stop_gradient(self.token_embedding[:self.codebook_size])
    return self.head(x[:, nb:], table)

  def __call__(self, tokens_bn, labels_b, drop_mask_bn=None, num_keep=None,
               train: bool = False):
    enc, order, valid = self.encode(tokens_bn, labels_b, drop_mask_bn, num_keep, train)
    logits = self.decode(enc, order, valid, tokens_bn == self.mask_id, train)
    return logits, enc

  def features(self, tokens_bn, labels_b, train: bool = False):
    """Representation for linear probing: the encoder output averaged over the image
    tokens, with nothing masked or dropped (B, D)."""
    enc, _, _ = self.encode(tokens_bn, labels_b, train=train)
    return jnp.mean(enc[:, self.num_prefix:].astype(jnp.float32), axis=1)


@registry.MODELS.register("mage")
def build_mage(cfg: ml_collections.ConfigDict, *, num_tokens: int, codebook_size: int,
               num_classes: int, dtype=jnp.float32, text_length: int = 0,
               grid_shape=()) -> MAGE:
  """From ``config.model``: ``variant`` (a SIZES name) fills the sizes; explicit fields
  override it. ``text_length`` > 0: text-conditioned. ``grid_shape`` (a video grid
  (T', h, w)) changes nothing: MAGE learns one position per token of any grid."""
  del grid_shape
  names = ("depth", "hidden_size", "num_heads", "decoder_depth", "decoder_hidden_size",
           "decoder_num_heads")
  kw = token_transformer.sized_kwargs(
      cfg, SIZES, names, ("mlp_ratio", "buffer_size", "dropout", "attn_impl"), "MAGE")
  return MAGE(num_tokens=num_tokens, codebook_size=codebook_size, num_classes=num_classes,
              dtype=dtype, text_length=text_length, **kw)
