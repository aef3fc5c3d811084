"""A BERT encoder (Devlin et al. 2019) as Linen modules, sized for MiniLM-L6-H384.

sentence-transformers' ``all-MiniLM-L6-v2`` is this network (6 layers, width 384, 12
heads, MLP 1536) followed by mean pooling over the attention mask and L2 normalisation
(`mean_pool`). Post-norm blocks as in BERT: ``x = LN(x + attn(x))``,
``x = LN(x + W2 gelu(W1 x))`` with the exact (erf) GELU, LayerNorm eps 1e-12; the
embedding is word + learned absolute position + token type 0, then LayerNorm. The BERT
pooler (tanh on [CLS]) is not used by sentence-transformers and is not built.
Checkpoint import lives in `jaxgen.convert.hf_bert`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.t5 import Linear
from jaxgen.nn import layers


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters (names as in the published config.json); defaults: MiniLM-L6-H384."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12


class BertLayerNorm(nn.Module):
  """LayerNorm with ``scale`` / ``bias`` named directly under the module, in float32."""
  epsilon: float = 1e-12

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm(
        epsilon=self.epsilon, dtype=jnp.float32, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(layers.zeros, ("norm",)),
        name="ln")(x.astype(jnp.float32))


class BertLayer(nn.Module):
  """Self-attention (with biases, 1/sqrt(d) scaling) and GELU MLP, each post-norm."""
  config: BertConfig
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None

  @nn.compact
  def __call__(self, x_bld, mask_bl):
    c = self.config
    b, l, d = x_bld.shape
    heads, hd = c.num_attention_heads, d // c.num_attention_heads
    lin = lambda n, axes, name: Linear(n, axes, use_bias=True, dtype=self.dtype,  # noqa: E731
                                       precision=self.precision, name=name)
    q, k, v = (lin(d, ("embed", "heads"), n)(x_bld).reshape(b, l, heads, hd)
               for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision)
    logits = logits.astype(jnp.float32) / math.sqrt(hd)
    logits = jnp.where(mask_bl[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=self.precision)
    attn = lin(d, ("heads", "embed"), "attention_out")(attn.reshape(b, l, d))
    x_bld = BertLayerNorm(c.layer_norm_eps, name="attention_norm")(x_bld + attn)
    h = jax.nn.gelu(lin(c.intermediate_size, ("embed", "mlp"), "intermediate")(x_bld),
                    approximate=False)
    h = lin(d, ("mlp", "embed"), "output")(h)
    return BertLayerNorm(c.layer_norm_eps, name="output_norm")(x_bld + h)


class BertEncoder(nn.Module):
  """Token ids (N, L) and a boolean mask -> last hidden states (N, L, hidden) float32."""
  config: BertConfig = BertConfig()
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None

  @nn.compact
  def __call__(self, ids_bl, mask_bl):
    c = self.config
    if ids_bl.shape[1] > c.max_position_embeddings:
      raise ValueError(f"sequence length {ids_bl.shape[1]} exceeds BERT's "
                       f"max_position_embeddings={c.max_position_embeddings}")
    table = lambda name, n, axes: self.param(  # noqa: E731
        name, nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        (n, c.hidden_size))
    word = table("word_embeddings", c.vocab_size, ("vocab", "embed"))
    pos = table("position_embeddings", c.max_position_embeddings, (None, "embed"))
    types = table("token_type_embeddings", c.type_vocab_size, (None, "embed"))
    x_bld = (jnp.take(word, ids_bl, axis=0) + pos[None, :ids_bl.shape[1]]
             + types[0][None, None]).astype(jnp.float32)
    x_bld = BertLayerNorm(c.layer_norm_eps, name="embeddings_norm")(x_bld)
    for i in range(c.num_hidden_layers):
      x_bld = BertLayer(c, self.dtype, self.precision, name=f"layer_{i}")(x_bld, mask_bl)
      x_bld = layers.constrain(x_bld, ("batch", "length", "act_embed"))
    return x_bld


def mean_pool(tokens_bld, mask_bl, normalize: bool = True):
  """sentence-transformers' pooling: mean over the mask, then (optionally) L2-normalised.

  Matches ``Pooling(mean)`` (sum / max(count, 1e-9)) and ``Normalize``
  (``x / max(||x||, 1e-12)``).
  """
  m = mask_bl.astype(jnp.float32)[..., None]
  pooled = jnp.sum(tokens_bld * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  if normalize:
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    pooled = pooled / jnp.maximum(norm, 1e-12)
  return pooled
