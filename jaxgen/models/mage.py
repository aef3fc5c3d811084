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

Named sizes follow the official ``mage_vit_base_patch16`` / ``mage_vit_large_patch16``,
whose layout (`OFFICIAL_LAYOUT`) they also take, so that the published checkpoints load
(`jaxgen.convert.mage`); explicit fields override it:

* ``vocab_classes`` > 0 (official: 1000): one embedding table of ``codebook_size +
  vocab_classes + 1`` rows (the codes, the class rows, [MASK] last: the official
  ``BertEmbeddings`` vocabulary) shared by the codes, the buffer token and the MLM head
  (logits against the whole table plus its bias, the codes' returned). The buffer token
  is the official "fake class" row ``codebook_size + 76`` (``codebook_size + 1100 -
  1024`` in ``models_mage.py``): the official models are unconditional and the label
  does not reach them. The input [MASK] stays ``codebook_size`` (the paradigms' id),
  looked up in the last row. 0: codes and [MASK] only, a separate class table.
* ``approximate_gelu``: the blocks' MLP GELU (official: the exact erf one of timm).
* ``head_epsilon``: the MLM head's LayerNorm epsilon (official: PyTorch's 1e-5).
* ``feature_pool``: the representation ``features`` returns. "normed_mean": the
  encoder output (final LayerNorm included) averaged over the image tokens;
  "mean_norm": the official linear probe (``models_vit_mage`` with ``--global_pool``):
  the last block's output (no final norm) averaged over the image tokens, then a
  LayerNorm without affine (the probe's fresh, frozen ``fc_norm``).
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

# The official models' layout (see the module docstring): the named official sizes'.
OFFICIAL_LAYOUT = dict(vocab_classes=1000, approximate_gelu=False, head_epsilon=1e-5,
                       feature_pool="mean_norm")
VARIANT_LAYOUT = {"vit_base": OFFICIAL_LAYOUT, "vit_large": OFFICIAL_LAYOUT}
LAYOUT_DEFAULTS = dict(vocab_classes=0, approximate_gelu=True, head_epsilon=1e-6,
                       feature_pool="normed_mean")
FEATURE_POOLS = ("normed_mean", "mean_norm")
# models_mage.py: fake_class_label = codebook_size + 1100 - 1024
FAKE_CLASS_OFFSET = 76
registry.register_model_fields(["mage"], {k: None for k in LAYOUT_DEFAULTS})


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
  vocab_classes: int = 0
  approximate_gelu: bool = True
  head_epsilon: float = 1e-6
  feature_pool: str = "normed_mean"
  dtype: jnp.dtype = jnp.float32

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  @property
  def vocab_rows(self) -> int:
    """Rows of the token embedding table (see ``vocab_classes``)."""
    return self.codebook_size + self.vocab_classes + 1

  @property
  def num_prefix(self) -> int:
    """Encoder positions before the image tokens: the buffer and any text tokens."""
    return self.buffer_size + self.text_length

  def setup(self):
    d, nb = self.hidden_size, self.buffer_size
    if self.feature_pool not in FEATURE_POOLS:
      raise ValueError(f"MAGE: feature_pool={self.feature_pool!r}; use one of "
                       f"{', '.join(FEATURE_POOLS)}.")
    if self.vocab_classes and self.text_length:
      raise ValueError("MAGE: vocab_classes > 0 (the official unconditional layout) "
                       "cannot be text-conditioned; set vocab_classes=0.")
    if self.vocab_classes and self.vocab_classes <= FAKE_CLASS_OFFSET:
      raise ValueError(f"MAGE: vocab_classes={self.vocab_classes} has no row for the "
                       f"official fake class (offset {FAKE_CLASS_OFFSET}).")
    self.token_embedding = layers.embedding_table(self, "token_embedding",
                                                  self.vocab_rows, d)
    if self.text_length:
      self.text_projection = layers.Mlp(d, d, dtype=self.dtype)
      self.pooled_projection = layers.Dense(d, ("embed_in", "embed"), dtype=self.dtype)
    elif not self.vocab_classes:  # (official layout: the buffer is a token row)
      self.class_embedding = layers.LabelEmbedder(self.num_classes, d,
                                                  name="class_embedding")
    self.position_embedding = layers.embedding_table(self, "position_embedding",
                                                     self.num_prefix + self.num_tokens, d)
    self.embedding_norm = layers.LayerNorm()
    self.encoder = layers.Transformer(self.depth, self.num_heads,
                                      int(d * self.mlp_ratio), self.dropout,
                                      self.attn_impl, self.dtype, self.approximate_gelu)
    dd = self.decoder_hidden_size
    self.decoder_embed = layers.Dense(dd, ("embed", "mlp"), dtype=self.dtype)
    self.decoder_position_embedding = layers.embedding_table(
        self, "decoder_position_embedding", nb + self.num_tokens, dd)
    self.decoder = layers.Transformer(self.decoder_depth, self.decoder_num_heads,
                                      int(dd * self.mlp_ratio), self.dropout,
                                      self.attn_impl, self.dtype, self.approximate_gelu)
    self.head = layers.MlmHead(self.dtype, self.head_epsilon)
    self.embed_dropout = nn.Dropout(self.dropout)

  def _prefix(self, cond, b: int):
    """Buffer tokens (B, nb + L, D) (text: followed by the L text tokens) and their
    attention mask (B, nb + L)."""
    nb, d = self.buffer_size, self.hidden_size
    if self.vocab_classes:  # unconditional: the fake class row, whatever the label
      fake = self.token_embedding[self.codebook_size + FAKE_CLASS_OFFSET]
      return jnp.broadcast_to(fake, (b, nb, d)), jnp.ones((b, nb), bool)
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
             train: bool = False, final_norm: bool = True):
    """Encoder output (B, num_prefix + num_keep, D), the gathered positions (B,
    num_keep) and whether each slot holds a kept token (B, num_keep). ``labels_b``:
    labels or the text condition dict. ``final_norm=False``: the last block's output."""
    b, n = tokens_bn.shape
    if n != self.num_tokens:
      raise ValueError(f"MAGE: {n} tokens per example, the model was built for "
                       f"{self.num_tokens}.")
    npre = self.num_prefix
    num_keep = n if num_keep is None else num_keep
    if drop_mask_bn is None:
      drop_mask_bn = jnp.zeros((b, n), bool)
    ids = tokens_bn
    if self.vocab_classes:  # [MASK] is the table's last row
      ids = jnp.where(tokens_bn == self.mask_id, self.vocab_rows - 1, tokens_bn)
    x = jnp.take(self.token_embedding, ids, axis=0)
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
    x = self.encoder(x, attend[:, None, None, :], train, final_norm=final_norm)
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
    if self.vocab_classes:  # the official head: logits over the whole vocabulary
      table = jax.lax.stop_gradient(self.token_embedding)
      return self.head(x[:, nb:], table)[..., :self.codebook_size]
    table = jax.lax.stop_gradient(self.token_embedding[:self.codebook_size])
    return self.head(x[:, nb:], table)

  def __call__(self, tokens_bn, labels_b, drop_mask_bn=None, num_keep=None,
               train: bool = False):
    enc, order, valid = self.encode(tokens_bn, labels_b, drop_mask_bn, num_keep, train)
    logits = self.decode(enc, order, valid, tokens_bn == self.mask_id, train)
    return logits, enc

  def features(self, tokens_bn, labels_b, train: bool = False):
    """Representation for linear probing (B, D), nothing masked or dropped: the image
    tokens' encoder output pooled as ``feature_pool`` says."""
    official = self.feature_pool == "mean_norm"
    enc, _, _ = self.encode(tokens_bn, labels_b, train=train, final_norm=not official)
    pooled = jnp.mean(enc[:, self.num_prefix:].astype(jnp.float32), axis=1)
    if official:
      mu = jnp.mean(pooled, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(pooled - mu), axis=-1, keepdims=True)
      pooled = (pooled - mu) * jax.lax.rsqrt(var + 1e-6)
    return pooled


@registry.MODELS.register("mage")
def build_mage(cfg: ml_collections.ConfigDict, *, num_tokens: int, codebook_size: int,
               num_classes: int, dtype=jnp.float32, text_length: int = 0,
               grid_shape=()) -> MAGE:
  """From ``config.model``: ``variant`` (a SIZES name) fills the sizes and, for the
  official sizes, the official layout (`VARIANT_LAYOUT`); explicit fields override
  them. ``text_length`` > 0: text-conditioned. ``grid_shape`` (a video grid (T', h, w))
  changes nothing: MAGE learns one position per token of any grid."""
  del grid_shape
  names = ("depth", "hidden_size", "num_heads", "decoder_depth", "decoder_hidden_size",
           "decoder_num_heads")
  kw = dict(LAYOUT_DEFAULTS, **VARIANT_LAYOUT.get(cfg.get("variant"), {}))
  kw.update(token_transformer.sized_kwargs(
      cfg, SIZES, names, ("mlp_ratio", "buffer_size", "dropout", "attn_impl")
      + tuple(LAYOUT_DEFAULTS), "MAGE"))
  return MAGE(num_tokens=num_tokens, codebook_size=codebook_size, num_classes=num_classes,
              dtype=dtype, text_length=text_length, **kw)
