"""The T5 v1.1 / Flan-T5 encoder (Raffel et al. 2020; Chung et al. 2022) as Linen modules.

The encoder of the text-to-text transformer as Imagen, PixArt and SD3 use it for
conditioning: token embeddings (no scaling, no absolute positions), then ``num_layers``
pre-norm blocks of self-attention with a learned relative-position bias and a gated-GELU
feed-forward (``gelu_tanh(x W_i0) * (x W_i1) W_o``), then a final RMSNorm. Details that
match the published checkpoints (and Hugging Face's ``T5EncoderModel``):

- RMSNorm without mean subtraction or bias, ``x / sqrt(mean(x^2) + 1e-6) * scale``, in
  float32.
- Attention logits are ``q . k`` without the ``1/sqrt(d_kv)`` factor (folded into the
  initialisation of q in T5); linear layers have no biases.
- One relative-position bias table, (num_buckets, num_heads), computed in the first
  block and shared by all blocks; positions are bucketed by `relative_position_bucket`
  (bidirectional, 32 buckets, log-spaced up to distance 128).

`SIZES` holds the named sizes; their parameter counts equal the published encoders'
(checked in tests/test_text_encoders.py). Flan-T5 shares the v1.1 architecture and
shapes. Checkpoint import lives in `jaxgen.convert.hf_t5`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import layers


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 encoder (names as in the published config.json)."""
  d_model: int = 512
  d_kv: int = 64
  num_heads: int = 6
  d_ff: int = 1024
  num_layers: int = 8
  vocab_size: int = 32128
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6


_V1_1 = {
    "small": T5Config(d_model=512, d_kv=64, num_heads=6, d_ff=1024, num_layers=8),
    "base": T5Config(d_model=768, d_kv=64, num_heads=12, d_ff=2048, num_layers=12),
    "large": T5Config(d_model=1024, d_kv=64, num_heads=16, d_ff=2816, num_layers=24),
    "xl": T5Config(d_model=2048, d_kv=64, num_heads=32, d_ff=5120, num_layers=24),
    "xxl": T5Config(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24),
}
# Named sizes -> config. Flan-T5 checkpoints have the v1.1 shapes at every size.
SIZES = {**{f"t5_v1_1_{k}": v for k, v in _V1_1.items()},
         **{f"flan_t5_{k}": v for k, v in _V1_1.items()}}
# Named size -> the Hugging Face repository that publishes it.
HF_REPOS = {**{f"t5_v1_1_{k}": f"google/t5-v1_1-{k}" for k in _V1_1},
            **{f"flan_t5_{k}": f"google/flan-t5-{k}" for k in _V1_1}}


def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128):
  """T5's bucket of each relative position ``key_pos - query_pos`` (int32 array).

  Bidirectional: half the buckets for keys after the query, half for keys before (or
  at) it. In each half, the first ``n/2`` buckets hold distances 0..n/2-1 exactly, the
  rest are log-spaced up to ``max_distance``; farther positions share the last bucket.
  """
  rel = jnp.asarray(relative_position, jnp.int32)
  buckets = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  is_small = rel < max_exact
  # max(rel, 1) keeps log() finite where the small branch is taken anyway.
  log_ratio = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
  large = max_exact + (log_ratio / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, rel, large)


class Linear(nn.Module):
  """Bias-optional linear layer with a ``kernel`` (in, out) carrying logical axes.

  Parameters are named ``kernel`` / ``bias`` directly under the module (no inner
  ``Dense_0``), so checkpoint key maps stay one line per tensor.
  """
  features: int
  axes: tuple = ("embed", "mlp")
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                        (x.shape[-1], self.features))
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype),
                   precision=self.precision)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(layers.zeros, self.axes[-1:]),
                        (self.features,))
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, computed in float32."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


class T5Attention(nn.Module):
  """Unscaled multi-head self-attention with an additive bias (position bias + mask)."""
  num_heads: int
  d_kv: int
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None

  @nn.compact
  def __call__(self, x_bld, bias_bhqk):
    b, l, d = x_bld.shape
    inner = self.num_heads * self.d_kv
    proj = lambda name: Linear(inner, ("embed", "heads"), dtype=self.dtype,  # noqa: E731
                               precision=self.precision, name=name)(x_bld)
    q, k, v = (proj(n).reshape(b, l, self.num_heads, self.d_kv) for n in "qkv")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision)
    logits = logits.astype(jnp.float32) + bias_bhqk
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=self.precision)
    return Linear(d, ("heads", "embed"), dtype=self.dtype, precision=self.precision,
                  name="o")(out.reshape(b, l, inner))


class T5GatedFeedForward(nn.Module):
  """``wo(gelu_tanh(wi_0 x) * wi_1 x)``: T5 v1.1's gated-GELU ("gated-gelu")."""
  d_ff: int
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None

  @nn.compact
  def __call__(self, x_bld):
    lin = lambda n, name, axes: Linear(n, axes, dtype=self.dtype,  # noqa: E731
                                       precision=self.precision, name=name)
    gate = jax.nn.gelu(lin(self.d_ff, "wi_0", ("embed", "mlp"))(x_bld), approximate=True)
    h = gate * lin(self.d_ff, "wi_1", ("embed", "mlp"))(x_bld)
    h = layers.constrain(h, ("batch", "length", "act_mlp"))
    return lin(x_bld.shape[-1], "wo", ("mlp", "embed"))(h)


class T5Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + ff(norm(x))."""
  config: T5Config
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None

  @nn.compact
  def __call__(self, x_bld, bias_bhqk):
    c = self.config
    h = RMSNorm(c.layer_norm_epsilon, name="attention_norm")(x_bld)
    x_bld = x_bld + T5Attention(c.num_heads, c.d_kv, self.dtype, self.precision,
                                name="attention")(h, bias_bhqk).astype(jnp.float32)
    h = RMSNorm(c.layer_norm_epsilon, name="mlp_norm")(x_bld)
    x_bld = x_bld + T5GatedFeedForward(c.d_ff, self.dtype, self.precision,
                                       name="mlp")(h).astype(jnp.float32)
    return layers.constrain(x_bld, ("batch", "length", "act_embed"))


class T5Encoder(nn.Module):
  """Token ids (N, L) and a boolean mask -> final hidden states (N, L, d_model) float32.

  Attributes:
    config: the sizes (`SIZES` or a custom `T5Config`).
    dtype: compute dtype of the matmuls (bfloat16 for large sizes on accelerators);
      norms, softmax and the residual stream stay float32.
    precision: matmul precision (``HIGHEST`` for float32 parity on GPUs/TPUs).
  """
  config: T5Config
  dtype: jnp.dtype = jnp.float32
  precision: Optional[jax.lax.Precision] = None

  @nn.compact
  def __call__(self, ids_bl, mask_bl):
    c = self.config
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")), (c.vocab_size, c.d_model))
    x_bld = jnp.take(table, ids_bl, axis=0).astype(jnp.float32)
    x_bld = layers.constrain(x_bld, ("batch", "length", "act_embed"))
    bias_bhqk = self.position_bias(ids_bl.shape[1])
    bias_bhqk = jnp.where(mask_bl[:, None, None, :], bias_bhqk,
                          jnp.finfo(jnp.float32).min)
    for i in range(c.num_layers):
      x_bld = T5Block(c, self.dtype, self.precision, name=f"block_{i}")(x_bld, bias_bhqk)
    return RMSNorm(c.layer_norm_epsilon, name="final_norm")(x_bld)

  def position_bias(self, length: int):
    """(1, heads, L, L) learned bias of each (query, key) pair's relative bucket."""
    c = self.config
    table = self.param("relative_attention_bias", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, "heads")),
        (c.relative_attention_num_buckets, c.num_heads))
    pos = jnp.arange(length)
    buckets = relative_position_bucket(
        pos[None, :] - pos[:, None], bidirectional=True,
        num_buckets=c.relative_attention_num_buckets,
        max_distance=c.relative_attention_max_distance)
    return jnp.take(table, buckets, axis=0).astype(jnp.float32).transpose(2, 0, 1)[None]
