"""BigGAN-lite: a class-conditional residual generator and projection discriminator.

Generator (after BigGAN, Brock et al. 2019): z -> dense -> 4x4 map -> residual blocks,
each doubling the resolution (nearest up-sampling + 3x3 convs) up to the image size ->
norm, ReLU, 3x3 conv, tanh. Conditioning is **conditional GroupNorm**: each norm is a
bare GroupNorm followed by a per-example scale and shift projected from
``[z, class embedding]`` (zero-initialised, so training starts from plain GroupNorm).
BigGAN's conditional BatchNorm would need batch statistics, running averages in the
train state and cross-device reductions; GroupNorm is per example, so the generator
has no state and shards over the batch like every other model here.

Discriminator (projection discriminator, Miyato & Koyama 2018): residual blocks that
halve the resolution down to 4x4 (no normalisation, so each example's logit depends on
that example only, which R1 needs), one more residual block, leaky ReLU, spatial mean,
then ``logit = w . h + embed(y) . h``.

``BigGAN`` holds the pair, so its parameters are ``{"generator": ..., "discriminator":
...}``; ``generator`` and ``discriminator`` are also usable alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.nn import layers

# Named sizes (explicit config fields override them). Widths are per block: the
# generator's from 4x4 up, the discriminator's from the image down.
SIZES = {
    "tiny": dict(latent_dim=64, embed_dim=32, g_channels=(128, 64, 32),
                 d_channels=(32, 64, 128)),
    "small": dict(latent_dim=128, embed_dim=64, g_channels=(256, 128, 64),
                  d_channels=(64, 128, 256)),
    "cifar": dict(latent_dim=128, embed_dim=128, g_channels=(256, 256, 256),
                  d_channels=(128, 128, 128)),
}
registry.register_variants(["biggan"], SIZES)


def _up(x):
  """Nearest-neighbour 2x up-sampling of NHWC maps."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _down(x):
  """2x2 average pooling of NHWC maps."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ConditionalGroupNorm(nn.Module):
  """Bare GroupNorm, then ``h * (1 + scale(c)) + shift(c)`` from a condition vector."""
  num_groups: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc, cond_bd):
    c = x_bhwc.shape[-1]
    groups = math.gcd(self.num_groups, c)
    h = nn.GroupNorm(num_groups=groups, use_scale=False, use_bias=False, epsilon=1e-5,
                     dtype=jnp.float32)(x_bhwc).astype(x_bhwc.dtype)
    mod = layers.Dense(2 * c, ("embed", "conv_out"), kernel_init=layers.zeros,
                       dtype=self.dtype, name="modulation")(cond_bd)
    scale, shift = jnp.split(mod[:, None, None, :], 2, axis=-1)
    return h * (1 + scale) + shift


class GBlock(nn.Module):
  """cGN-ReLU-up-conv3, cGN-ReLU-conv3, plus up-sampled (1x1-projected) skip."""
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond_bd):
    h = nn.relu(ConditionalGroupNorm(dtype=self.dtype, name="norm1")(x, cond_bd))
    h = layers.Conv(self.out_channels, dtype=self.dtype, name="conv1")(_up(h))
    h = nn.relu(ConditionalGroupNorm(dtype=self.dtype, name="norm2")(h, cond_bd))
    h = layers.Conv(self.out_channels, dtype=self.dtype, name="conv2")(h)
    skip = _up(x)
    if x.shape[-1] != self.out_channels:
      skip = layers.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="skip")(skip)
    return skip + h


class Generator(nn.Module):
  """``(z_bd, labels_b) -> images`` in [-1, 1], NHWC of ``image_size`` x ``channels``."""
  image_size: int
  out_channels: int
  num_classes: int
  latent_dim: int = 64
  embed_dim: int = 32
  g_channels: Sequence[int] = (128, 64, 32)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_bd, labels_b):
    table = self.param("class_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")), (self.num_classes, self.embed_dim))
    cond = jnp.concatenate([z_bd, jnp.take(table, labels_b, axis=0)], axis=-1)
    cond = cond.astype(self.dtype)
    c0 = self.g_channels[0]
    h = layers.Dense(16 * c0, ("embed", "conv_out"), kernel_init=nn.initializers.lecun_normal(),
                     dtype=self.dtype, name="latent_proj")(z_bd.astype(self.dtype))
    h = h.reshape(z_bd.shape[0], 4, 4, c0)
    for i, ch in enumerate(self.g_channels):
      h = GBlock(ch, dtype=self.dtype, name=f"block_{i}")(h, cond)
    h = nn.relu(layers.GroupNorm(16, name="norm_out")(h))
    h = layers.Conv(self.out_channels, dtype=self.dtype, name="conv_out")(h)
    return jnp.tanh(h.astype(jnp.float32))


class DBlock(nn.Module):
  """(lReLU)-conv3-lReLU-conv3-(pool), plus a (1x1-projected, pooled) skip."""
  out_channels: int
  downsample: bool = True
  preactivate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(x, 0.2) if self.preactivate else x
    h = layers.Conv(self.out_channels, dtype=self.dtype, name="conv1")(h)
    h = layers.Conv(self.out_channels, dtype=self.dtype, name="conv2")(nn.leaky_relu(h, 0.2))
    skip = x
    if x.shape[-1] != self.out_channels:
      skip = layers.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="skip")(skip)
    if self.downsample:
      h, skip = _down(h), _down(skip)
    return skip + h


class Discriminator(nn.Module):
  """``(images, labels_b) -> logits_b`` (float32): projection discriminator."""
  num_classes: int
  d_channels: Sequence[int] = (32, 64, 128)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc, labels_b):
    h = x_bhwc.astype(self.dtype)
    for i, ch in enumerate(self.d_channels):
      h = DBlock(ch, preactivate=i > 0, dtype=self.dtype, name=f"block_{i}")(h)
    h = DBlock(self.d_channels[-1], downsample=False, dtype=self.dtype, name="block_final")(h)
    h_bd = jnp.mean(nn.leaky_relu(h, 0.2), axis=(1, 2))
    h_bd = h_bd.astype(jnp.promote_types(h_bd.dtype, jnp.float32))  # logits in >= f32
    out = layers.Dense(1, ("embed", "vocab"), dtype=h_bd.dtype, name="linear")(h_bd)[:, 0]
    table = self.param("class_embedding", nn.with_logical_partitioning(
        layers.xavier, ("vocab", "embed")), (self.num_classes, h_bd.shape[-1]))
    return out + jnp.sum(jnp.take(table, labels_b, axis=0) * h_bd, axis=-1)


class BigGAN(nn.Module):
  """The generator and discriminator as one module (parameters under their names)."""
  generator: Generator
  discriminator: Discriminator

  def generate(self, z_bd, labels_b):
    return self.generator(z_bd, labels_b)

  def discriminate(self, x_bhwc, labels_b):
    return self.discriminator(x_bhwc, labels_b)

  def __call__(self, z_bd, labels_b):
    return self.discriminate(self.generate(z_bd, labels_b), labels_b)


def num_blocks(image_size: int) -> int:
  """Resolution-doubling blocks from 4x4 to ``image_size`` (a power of two >= 8)."""
  n = 0
  while 4 * 2 ** n < image_size:
    n += 1
  if 4 * 2 ** n != image_size or n == 0:
    raise ValueError(f"BigGAN needs a square image of size 4 * 2**k (8, 16, 32, ...); "
                     f"got {image_size}.")
  return n


@registry.MODELS.register("biggan")
def build_biggan(cfg: ml_collections.ConfigDict, *, image_shape, num_classes: int,
                 dtype=jnp.float32) -> BigGAN:
  """BigGAN-lite pair from ``config.model`` (``variant`` names a size; the fields
  latent_dim, embed_dim, g_channels, d_channels override it) for ``image_shape``."""
  kw = dict(SIZES[cfg.variant]) if cfg.variant else {}
  for key in ("latent_dim", "embed_dim", "g_channels", "d_channels"):
    if cfg.get(key) is not None:
      kw[key] = tuple(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]
  missing = [k for k in ("latent_dim", "embed_dim", "g_channels", "d_channels") if k not in kw]
  if missing:
    raise ValueError(f"config.model needs {', '.join(missing)} (or a variant: "
                     f"{', '.join(SIZES)}).")
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"BigGAN expects square images, got {h}x{w}.")
  n = num_blocks(h)
  for key in ("g_channels", "d_channels"):
    if len(kw[key]) != n:
      raise ValueError(f"config.model.{key}={kw[key]} has {len(kw[key])} widths; "
                       f"{h}x{w} images need {n} (one per block between 4x4 and {h}x{w}).")
  nc = max(num_classes, 1)
  gen = Generator(image_size=h, out_channels=c, num_classes=nc, latent_dim=kw["latent_dim"],
                  embed_dim=kw["embed_dim"], g_channels=kw["g_channels"], dtype=dtype)
  disc = Discriminator(num_classes=nc, d_channels=kw["d_channels"], dtype=dtype)
  return BigGAN(generator=gen, discriminator=disc)
