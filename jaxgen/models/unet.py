"""ADM-style U-Net (Dhariwal & Nichol 2021; Ho et al. 2020) as a Flax Linen module.

Residual blocks conditioned on time + class embeddings (scale-shift norm as in ADM, or
additive as in DDPM), multi-head self-attention at chosen resolutions, strided-conv
down-sampling and nearest + conv up-sampling, zero-initialised output convolutions.
The class table has a null row (label == num_classes) for classifier-free guidance.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.nn import layers

# Named sizes. "ddpm_cifar10" is the DDPM CIFAR-10 network (35.7M parameters in the
# paper); the small ones fit a laptop CPU.
SIZES = {
    "tiny": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attn_resolutions=(8,), head_channels=32),
    "small": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                  attn_resolutions=(8,), head_channels=32),
    "base": dict(channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                 attn_resolutions=(16, 8), head_channels=64),
    "ddpm_cifar10": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                         attn_resolutions=(16,), num_heads=1, head_channels=None,
                         scale_shift_norm=False, dropout=0.1),
}
registry.register_variants(["unet"], SIZES)


class ResBlock(nn.Module):
  """GN-SiLU-conv, embedding injection, GN-SiLU-dropout-conv(zero), skip."""
  out_channels: int
  scale_shift_norm: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb_bd, train: bool = False):
    h = layers.Conv(self.out_channels, dtype=self.dtype, name="conv1")(
        nn.silu(layers.GroupNorm(name="norm1")(x)))
    n = 2 * self.out_channels if self.scale_shift_norm else self.out_channels
    e = layers.Dense(n, ("embed", "conv_out"), dtype=self.dtype,
                     kernel_init=nn.initializers.lecun_normal(),
                     name="emb_proj")(nn.silu(emb_bd))[:, None, None, :]
    if self.scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = layers.GroupNorm(name="norm2")(h) * (1 + scale) + shift
    else:
      h = layers.GroupNorm(name="norm2")(h + e)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = layers.Conv(self.out_channels, kernel_init=layers.zeros, dtype=self.dtype,
                    name="conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = layers.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


class AttnBlock(nn.Module):
  """GroupNorm + multi-head self-attention over the H*W positions, residual."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = layers.GroupNorm(name="norm")(x).reshape(b, h * w, c)
    y = layers.Attention(self.num_heads, out_init=layers.zeros, impl=self.impl,
                         dtype=self.dtype, name="attn")(y)
    return x + y.reshape(b, h, w, c)


class Downsample(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return layers.Conv(x.shape[-1], strides=(2, 2), dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
    return layers.Conv(c, dtype=self.dtype, name="conv")(x)


class UNet(nn.Module):
  """Class- and time-conditional U-Net on NHWC inputs; output has ``out_channels``."""
  input_size: int = 32
  in_channels: int = 1
  out_channels: int = 1
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  num_heads: int = 4
  head_channels: Optional[int] = 64  # if set, heads = channels // head_channels
  scale_shift_norm: bool = True
  dropout: float = 0.0
  num_classes: int = 10
  attn_impl: str = "xla"  # or "cudnn" on NVIDIA GPUs
  dtype: jnp.dtype = jnp.float32

  def _heads(self, ch: int) -> int:
    return max(1, ch // self.head_channels) if self.head_channels else self.num_heads

  @nn.compact
  def __call__(self, x_bhwc, t_b, y_b, train: bool = False):
    emb_dim = 4 * self.channels
    emb = layers.TimestepEmbedder(emb_dim, frequency_size=self.channels,
                                  dtype=self.dtype, name="t_embedder")(t_b)
    emb = emb + layers.LabelEmbedder(self.num_classes, emb_dim, init_std=1.0,
                                     name="y_embedder")(y_b).astype(self.dtype)
    res = _res_factory(self)
    h = layers.Conv(self.channels, dtype=self.dtype, name="conv_in")(
        x_bhwc.astype(self.dtype))
    skips = [h]
    size = x_bhwc.shape[1]
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = res(mult * self.channels, name=f"down_{level}_{i}")(h, emb, train)
        if size in self.attn_resolutions:
          h = AttnBlock(self._heads(h.shape[-1]), self.dtype, self.attn_impl,
                        name=f"down_{level}_{i}_attn")(h)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = Downsample(self.dtype, name=f"down_{level}_resample")(h)
        size //= 2
        skips.append(h)
    h = res(h.shape[-1], name="mid_0")(h, emb, train)
    h = AttnBlock(self._heads(h.shape[-1]), self.dtype, self.attn_impl, name="mid_attn")(h)
    h = res(h.shape[-1], name="mid_1")(h, emb, train)
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(mult * self.channels, name=f"up_{level}_{i}")(h, emb, train)
        if size in self.attn_resolutions:
          h = AttnBlock(self._heads(h.shape[-1]), self.dtype, self.attn_impl,
                        name=f"up_{level}_{i}_attn")(h)
      if level != 0:
        h = Upsample(self.dtype, name=f"up_{level}_resample")(h)
        size *= 2
    h = nn.silu(layers.GroupNorm(name="norm_out")(h))
    h = layers.Conv(self.out_channels, kernel_init=layers.zeros, dtype=self.dtype,
                    name="conv_out")(h)
    return h.astype(jnp.float32)


def _res_factory(m: UNet):
  """ResBlock factory with the U-Net's shared settings bound."""
  def make(out_channels, name):
    return ResBlock(out_channels, m.scale_shift_norm, m.dropout, m.dtype, name=name)
  return make


@registry.MODELS.register("unet")
def build_unet(cfg: ml_collections.ConfigDict, *, image_shape, num_classes: int,
               dtype=jnp.float32) -> UNet:
  """Builds a U-Net from ``config.model`` (``variant`` picks a named size; explicit
  fields override it) for inputs of ``image_shape`` = (H, W, C)."""
  kw = dict(SIZES[cfg.variant]) if cfg.variant else {}
  for key in ("channels", "channel_mult", "num_res_blocks", "attn_resolutions",
              "num_heads", "head_channels", "scale_shift_norm", "dropout", "attn_impl"):
    if cfg.get(key) is not None:
      kw[key] = tuple(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"UNet expects square inputs, got {h}x{w}.")
  levels = len(kw.get("channel_mult", UNet.channel_mult))
  if h % 2 ** (levels - 1):
    raise ValueError(f"UNet: input size {h} is not divisible by 2**{levels - 1} "
                     f"for {levels} resolution levels.")
  return UNet(input_size=h, in_channels=c, out_channels=c, num_classes=num_classes,
              dtype=dtype, **kw)
