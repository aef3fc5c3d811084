"""Encoder / decoder / discriminator networks of the tokenizer family (architectures only).

* `ConvEncoder` / `ConvDecoder`: the VQGAN / LDM autoencoder (Esser et al. 2021, Rombach
  et al. 2022; taming-transformers ``diffusionmodules/model.py``): ResNet blocks
  (GroupNorm(32, eps 1e-6)-swish-conv3x3, twice; a 1x1 shortcut where the width changes),
  single-head self-attention at chosen feature-map sizes, a mid block (res, attn, res),
  downsampling by a stride-2 3x3 conv after zero padding (0, 1) on every spatial axis (as
  taming), nearest upsampling + conv3x3. The decoder has ``num_res_blocks + 1`` blocks per
  level. With the same sizes the parameter count equals the reference's exactly (tested).
  Convolutions read the number of spatial axes from the input (``x.shape[1:-1]``).
  ``layout="maskgit"`` (`LAYOUTS`) is the same net as google-research/maskgit's
  ``vqgan_tokenizer`` Encoder / Decoder, parameter for parameter (converted by
  `jaxgen.convert.maskgit`): bias-free convolutions in the ResNet blocks and the
  encoder's input conv, 2x2 average-pool downsampling, ``num_res_blocks`` plain blocks
  as the mid block, ``num_res_blocks`` decoder blocks per level, a 1x1 encoder output
  conv, and the official block's shortcut, a 1x1 conv of the block's *output* (its
  ``ResBlock`` reassigns ``x`` before ``residual = conv(x)``: ``h + W h``).
* `CausalConvEncoder3D` / `CausalConvDecoder3D` (arch "causal3d"): the same layout on
  videos (N, T, H, W, C), MAGVIT-v2 style (Yu et al. 2023): causal 3x3x3 convolutions
  (frames padded before the clip only), per-frame GroupNorm and attention, the first
  frame encoded alone (a one-frame video is an image), temporal downsampling by causal
  stride-2 convs (T = 1 + ft k -> 1 + k) and depth-to-time upsampling in the decoder.
  ``jaxgen.tokenizers.inflation`` initialises them from a trained 2D `ConvEncoder` /
  `ConvDecoder` (MAGVIT's 2D -> 3D inflation).
* `ViTEncoder` / `ViTDecoder`: ViT-VQGAN (Yu et al. 2022), see their docstrings.
* `PatchGANDiscriminator`: the pix2pix / taming ``NLayerDiscriminator`` with GroupNorm in
  place of BatchNorm, see its docstring.

Named sizes: `autoencoder_variant(name)` and `build_nets(name, image_channels)`; factors
`downsampling_factor` (space) and `temporal_downsampling_factor` (time).

The 1x1 ``quant_conv`` / ``post_quant_conv`` of taming's ``VQModel`` and LDM's
``AutoencoderKL`` (z_channels <-> embed_dim) belong to the tokenizer wrapper with the
quantizer, not to these networks.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models import dit
from jaxgen.nn import layers

# ----------------------------------------------------------------------------- sizes

# Named sizes. ``z_channels``: encoder output channels (before the quantizer's optional
# 1x1 projection to ``embed_dim``); ``codebook_size`` is informative for the quantizer.
VARIANTS: Dict[str, Dict[str, Any]] = {
    # taming-transformers configs/imagenet_vqgan.yaml (VQGAN ImageNet f16-1024) at
    # 256x256; attention where the feature map is 16 pixels at any input size.
    "vqgan_f16": dict(arch="conv", channels=128, channel_mult=(1, 1, 2, 2, 4),
                      num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
                      embed_dim=256, codebook_size=1024),
    # taming's published VQGAN ImageNet f16 nets exactly (vqgan_imagenet_f16_1024 and
    # _16384, the same nets with 1024 or 16384 codes; `jaxgen convert --from taming`):
    # ddconfig resolution 256, so the last level attends at any input size, as taming.
    "taming_f16_1024": dict(arch="conv", channels=128, channel_mult=(1, 1, 2, 2, 4),
                            num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                            z_channels=256, embed_dim=256, codebook_size=1024),
    "taming_f16_16384": dict(arch="conv", channels=128, channel_mult=(1, 1, 2, 2, 4),
                             num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                             z_channels=256, embed_dim=256, codebook_size=16384),
    # MaskGIT's VQGAN (maskgit/configs/vqgan_config.py, maskgit/nets/vqgan_tokenizer.py):
    # the official layout (weight-compatible with tokenizer_imagenet{256,512}_checkpoint;
    # its autoencoder has no quant convs and takes images in [0, 1]: `jaxgen.convert.
    # maskgit` sets quant_proj=False, unit_range=True).
    "maskgit_f16": dict(arch="conv", layout="maskgit", channels=128,
                        channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(),
                        mid_attn=False, z_channels=256, embed_dim=256, codebook_size=1024),
    # latent-diffusion models/first_stage_models/kl-f8/config.yaml (= Stable Diffusion VAE).
    "kl_f8": dict(arch="conv", channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                  attn_resolutions=(), z_channels=4, double_z=True, embed_dim=4),
    # ViT-VQGAN (Yu et al. 2022) encoder/decoder sizes S and B, patch 8; factorised codes
    # of dimension 32 with 8192 entries as in thuanz123/enhancing-transformers'
    # configs/imagenet_vitvq_{small,base}.yaml.
    "vitvq_small": dict(arch="vit", patch_size=8, hidden_size=512, depth=8, num_heads=8,
                        mlp_ratio=4.0, z_channels=32, embed_dim=32, codebook_size=8192),
    "vitvq_base": dict(arch="vit", patch_size=8, hidden_size=768, depth=12, num_heads=12,
                       mlp_ratio=4.0, z_channels=32, embed_dim=32, codebook_size=8192),
    # CPU sizes for 32x32x1 (Fashion-MNIST padded to 32): f4 -> 8x8 token grids.
    "fmnist_tiny": dict(arch="conv", channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(), z_channels=16, embed_dim=16,
                        codebook_size=512),
    "fmnist_small": dict(arch="conv", channels=64, channel_mult=(1, 2, 2),
                         num_res_blocks=2, attn_resolutions=(8,), z_channels=32,
                         embed_dim=32, codebook_size=1024),
    "fmnist_kl_tiny": dict(arch="conv", channels=32, channel_mult=(1, 2, 2),
                           num_res_blocks=1, attn_resolutions=(), z_channels=4,
                           double_z=True, embed_dim=4),
    "fmnist_vit_tiny": dict(arch="vit", patch_size=4, hidden_size=128, depth=2,
                            num_heads=4, mlp_ratio=4.0, z_channels=16, embed_dim=16,
                            codebook_size=512),
    # Causal 3D video sizes (arch "causal3d", `CausalConvEncoder3D`):
    # ``temporal_downsample`` has one entry per spatial downsampling (ft = 2 ** its sum).
    # Moving Fashion-MNIST 32x32x1 on CPU: f4 -> 8x8; ft 2 takes 1 + 2k frames (9, 17:
    # 8 frames are not valid, use ..._ft1 for them), ft 1 any number of frames.
    "mfmnist_causal_tiny": dict(arch="causal3d", channels=32, channel_mult=(1, 2, 2),
                                num_res_blocks=1, attn_resolutions=(), mid_attn=False,
                                temporal_downsample=(False, True), z_channels=10,
                                embed_dim=10, codebook_size=1024),
    "mfmnist_causal_tiny_ft1": dict(arch="causal3d", channels=32, channel_mult=(1, 2, 2),
                                    num_res_blocks=1, attn_resolutions=(), mid_attn=False,
                                    temporal_downsample=(False, False), z_channels=10,
                                    embed_dim=10, codebook_size=1024),
    "mfmnist_causal_kl_tiny": dict(arch="causal3d", channels=32, channel_mult=(1, 2, 2),
                                   num_res_blocks=1, attn_resolutions=(), mid_attn=False,
                                   temporal_downsample=(False, True), z_channels=4,
                                   double_z=True, embed_dim=4),
    # MAGVIT-v2-like video tokenizer (Yu et al. 2023, 17x128x128 -> 5x16x16, LFQ with
    # 2^18 codes): 128 channels, x(1, 2, 2, 4), 4 res blocks, f8, ft4 (time halved at
    # the last two downsamplings). On this block layout (no adaptive GroupNorm in the
    # decoder, nearest+conv upsampling, taming's num_res_blocks + 1 decoder blocks), so
    # its count is not MAGVIT-v2's; for reporting sizes.
    "magvit2_causal": dict(arch="causal3d", channels=128, channel_mult=(1, 2, 2, 4),
                           num_res_blocks=4, attn_resolutions=(), mid_attn=False,
                           temporal_downsample=(False, True, True), z_channels=18,
                           embed_dim=18, codebook_size=2 ** 18),
}

_CONV_KEYS = ("channels", "channel_mult", "num_res_blocks", "attn_resolutions",
              "resolution", "mid_attn", "dropout", "attn_impl")
_VIT_KEYS = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "pos_emb",
             "tanh_head", "attn_impl")
_CAUSAL_KEYS = _CONV_KEYS + ("temporal_downsample", "temporal_padding")
_CONV_2D_KEYS = _CONV_KEYS + ("layout",)  # the MaskGIT layout is 2D only
_SHARED_KEYS = ("arch", "z_channels", "double_z", "embed_dim", "codebook_size")
ARCHES = ("conv", "vit", "causal3d")


# How the conv encoder / decoder are laid out (``layout``): "taming" (taming-transformers
# / LDM) or "maskgit" (google-research/maskgit's vqgan_tokenizer.py; see the module
# docstring). conv_bias: biases in the ResNet blocks' convs and the encoder's conv_in;
# downsample: "conv" (pad (0, 1), stride-2 3x3) or "avgpool" (2x2 mean, no parameters);
# mid_blocks: ResNet blocks in the mid block (None: num_res_blocks); extra_up_block: the
# decoder has num_res_blocks + 1 blocks per level; encoder_out_kernel: conv_out's size in
# the encoder; shortcut: what the 1x1 shortcut conv reads, the block's "input" or
# (MaskGIT) its "output".
LAYOUTS: Dict[str, Dict[str, Any]] = {
    "taming": dict(conv_bias=True, downsample="conv", mid_blocks=2, extra_up_block=True,
                   encoder_out_kernel=3, shortcut="input"),
    "maskgit": dict(conv_bias=False, downsample="avgpool", mid_blocks=None,
                    extra_up_block=False, encoder_out_kernel=1, shortcut="output"),
}


def conv_layout(name: str) -> Dict[str, Any]:
  """The `LAYOUTS` entry ``name``; an unknown one is a ValueError naming the known."""
  if name not in LAYOUTS:
    raise ValueError(f"Unknown conv autoencoder layout {name!r}; use one of "
                     f"{', '.join(LAYOUTS)}.")
  return LAYOUTS[name]


def autoencoder_variant(name: str) -> Dict[str, Any]:
  """A copy of the named size's fields (see `VARIANTS`)."""
  if name not in VARIANTS:
    raise ValueError(f"Unknown autoencoder variant {name!r}; known: {sorted(VARIANTS)}.")
  return dict(VARIANTS[name])


def build_nets(variant, image_channels: int = 3, dtype=jnp.float32, **overrides
               ) -> Tuple[nn.Module, nn.Module]:
  """(encoder, decoder) of a named size (or a dict of its fields), fields overridable.

  The encoder maps (N, *spatial, image_channels) to (N, *spatial / f, z_channels)
  (twice that with ``double_z``); the decoder maps (N, *spatial / f, any) back to
  ``image_channels``.
  """
  kw = autoencoder_variant(variant) if isinstance(variant, str) else dict(variant)
  kw.update(overrides)
  arch = kw.get("arch", "conv")
  keys = {"conv": _CONV_2D_KEYS, "vit": _VIT_KEYS, "causal3d": _CAUSAL_KEYS}.get(arch)
  if keys is None:
    raise ValueError(f"Unknown autoencoder arch {arch!r}; use one of {ARCHES}.")
  unknown = sorted(set(kw) - set(keys) - set(_SHARED_KEYS))
  if unknown:
    raise ValueError(f"Unknown field(s) {unknown} for a {arch!r} autoencoder; known: "
                     f"{sorted(keys + _SHARED_KEYS)}.")
  common = {k: tuple(kw[k]) if isinstance(kw[k], list) else kw[k] for k in keys if k in kw}
  encoder_cls, decoder_cls = {"conv": (ConvEncoder, ConvDecoder),
                              "vit": (ViTEncoder, ViTDecoder),
                              "causal3d": (CausalConvEncoder3D, CausalConvDecoder3D)}[arch]
  enc = encoder_cls(out_channels=kw["z_channels"], double_z=kw.get("double_z", False),
                    dtype=dtype, **common)
  return enc, decoder_cls(out_channels=image_channels, dtype=dtype, **common)


def downsampling_factor(variant) -> int:
  """Spatial factor f of a named size (or dict of fields): latents are x / f."""
  kw = autoencoder_variant(variant) if isinstance(variant, str) else dict(variant)
  if kw.get("arch", "conv") == "vit":
    return int(kw["patch_size"])
  return 2 ** (len(kw["channel_mult"]) - 1)


def temporal_downsampling_factor(variant) -> int:
  """Temporal factor ft of a named size (or dict of fields): a causal video net maps
  1 + ft k frames to 1 + k latent frames (`check_num_frames`); 1 for image nets."""
  kw = autoencoder_variant(variant) if isinstance(variant, str) else dict(variant)
  if kw.get("arch", "conv") != "causal3d":
    return 1
  return 2 ** sum(bool(t) for t in kw.get("temporal_downsample", ()))


def last_layer_path(decoder_params, prefix: Tuple[str, ...] = ()) -> Tuple[str, ...]:
  """Path of a decoder's final kernel in its params (``G_L`` of VQGAN's adaptive GAN
  weight): ``conv_out`` of `ConvDecoder`, ``to_pixels`` of `ViTDecoder`."""
  for name in ("conv_out", "to_pixels"):
    if name in decoder_params:
      tree, path = decoder_params[name], (name,)
      while "kernel" not in tree:
        if len(tree) != 1:
          raise ValueError(f"last_layer_path: cannot find the kernel under {path}")
        key = next(iter(tree))
        tree, path = tree[key], path + (key,)
      return tuple(prefix) + path + ("kernel",)
  raise ValueError(f"last_layer_path: no 'conv_out' or 'to_pixels' in decoder params "
                   f"(keys: {sorted(decoder_params)[:8]})")


# ----------------------------------------------------------------------------- conv parts

_SPATIAL_AXES = {1: ("conv_w",), 2: ("conv_h", "conv_w"), 3: ("conv_t", "conv_h", "conv_w")}


TEMPORAL_PADDINGS = ("replicate", "zero")


class ConvND(nn.Module):
  """Convolution over however many spatial axes the input has (channels last).

  Kernel logical axes: one per spatial axis (``conv_h, conv_w`` for images), then
  ``conv_in, conv_out``. ``padding``: "SAME", "VALID", or one ``(lo, hi)`` pair used for
  every spatial axis. ``strides``: one int for every axis or one per axis.

  ``causal`` ("" = off, "replicate" or "zero"; 3 spatial axes only, the first is time):
  the time axis is padded with ``kernel_size - 1`` frames before the first frame (copies
  of it, or zeros) and none after, so output frame t reads input frames <= t only;
  ``padding`` then applies to the other two axes ("SAME" needs stride 1 there). The
  parameters are those of the non-causal convolution (`CausalConv3D` computes it).
  """
  features: int
  kernel_size: int = 3
  strides: Any = 1
  padding: Any = "SAME"
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  causal: str = ""

  @nn.compact
  def __call__(self, x):
    nd = x.ndim - 2
    if nd not in _SPATIAL_AXES:
      raise ValueError(f"ConvND takes 1 to 3 spatial axes, got input shape {x.shape}")
    strides = ((self.strides,) * nd if isinstance(self.strides, int)
               else tuple(self.strides))
    pad = self.padding if isinstance(self.padding, str) else (tuple(self.padding),) * nd
    bias_init = nn.with_logical_partitioning(layers.zeros, ("conv_out",))
    kernel_init = nn.with_logical_partitioning(
        self.kernel_init, _SPATIAL_AXES[nd] + ("conv_in", "conv_out"))
    if self.causal:
      x, pad = _causal_time_pad(x, self.kernel_size, self.causal, pad, strides)
      return CausalConv3D(self.features, self.kernel_size, strides, pad[1:], self.use_bias,
                          kernel_init, bias_init, self.dtype, name="Conv_0")(x)
    return nn.Conv(
        self.features, (self.kernel_size,) * nd, strides=strides,
        padding=pad, use_bias=self.use_bias, dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(
            self.kernel_init, _SPATIAL_AXES[nd] + ("conv_in", "conv_out")),
        bias_init=bias_init, conv_general_dilated=layers.conv_general_dilated)(x)


class CausalConv3D(nn.Module):
  """``nn.Conv`` over (N, T, H, W, C) inputs already padded in time (no time padding
  here), with ``nn.Conv``'s parameters (``kernel`` (kt, kh, kw, cin, cout), ``bias``),
  computed as one 2-D convolution of the frames with the kt time taps stacked on the
  channels: output frame t is ``sum_i conv2d(x[s t + i], kernel[i])`` for time stride s.
  The same numbers as the 3-D convolution (tested), 4-5x faster on XLA's CPU backend,
  whose 3-D convolutions (and their gradients) are slow.
  """
  features: int
  kernel_size: int
  strides: Tuple[int, int, int]
  spatial_padding: Any  # ((lo, hi), (lo, hi))
  use_bias: bool
  kernel_init: Any
  bias_init: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, cin, cout = self.kernel_size, x.shape[-1], self.features
    kernel = self.param("kernel", self.kernel_init, (k, k, k, cin, cout), jnp.float32)
    st = self.strides[0]
    n, t_out = x.shape[0], (x.shape[1] - k) // st + 1
    taps = [x[:, i:i + st * (t_out - 1) + 1:st] for i in range(k)]
    frames = jnp.concatenate(taps, -1).reshape((n * t_out,) + x.shape[2:4] + (k * cin,))
    kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(k, k, k * cin, cout)
    y = layers.conv_general_dilated(
        frames.astype(self.dtype), kernel_2d.astype(self.dtype), tuple(self.strides[1:]),
        tuple(tuple(p) for p in self.spatial_padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (cout,), jnp.float32).astype(self.dtype)
    return y.reshape((n, t_out) + y.shape[1:])


def _causal_time_pad(x, k: int, mode: str, pad, strides):
  """Pads time (axis 1 of NTHWC ``x``) by k - 1 frames before; returns (x, the padding
  for ``nn.Conv``: none in time, ``pad`` in space)."""
  if x.ndim != 5:
    raise ValueError(f"a causal ConvND takes (N, T, H, W, C) inputs, got {x.shape}")
  if mode not in TEMPORAL_PADDINGS:
    raise ValueError(f"causal padding must be one of {TEMPORAL_PADDINGS}, got {mode!r}")
  if pad == "SAME":
    if any(s != 1 for s in strides[1:]):
      raise ValueError("a causal ConvND with padding='SAME' needs spatial stride 1; "
                       "give a (lo, hi) pair")
    spatial = (((k - 1) // 2, k // 2),) * 2
  elif pad == "VALID":
    spatial = ((0, 0),) * 2
  else:
    spatial = tuple(pad[1:])
  if k > 1:
    width = ((0, 0), (k - 1, 0)) + ((0, 0),) * 3
    x = jnp.pad(x, width, mode="edge" if mode == "replicate" else "constant")
  return x, ((0, 0),) + spatial


class GroupNorm(nn.Module):
  """taming's ``Normalize``: GroupNorm(32 groups, eps 1e-6) in float32, logical axes
  ``norm`` (``layers.GroupNorm`` uses eps 1e-5). Fewer groups when 32 does not divide C.
  The variance is taken about the mean (two passes, as torch), not as E[x^2] - E[x]^2
  (flax's fast variance), which loses digits where a group's mean dwarfs its spread:
  a converted taming VQGAN's reconstruction was 7e-5 off taming's with it, 9e-6 without.

  ``per_frame``: on (N, T, H, W, C) inputs, statistics per frame (over H, W and the
  group's channels), not over the whole clip: frames never see each other's statistics
  (causal-safe) and a frame is normalised as the same image would be. Same parameters.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  per_frame: bool = False

  @nn.compact
  def __call__(self, x):
    shape = x.shape
    if self.per_frame and x.ndim == 5:
      x = x.reshape((-1,) + shape[2:])
    return nn.GroupNorm(
        num_groups=math.gcd(self.num_groups, x.shape[-1]), epsilon=self.epsilon,
        use_fast_variance=False,
        dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(layers.zeros, ("norm",)),
    )(x).astype(x.dtype).reshape(shape)


class ResnetBlock(nn.Module):
  """GN-swish-conv3, GN-swish-dropout-conv3, plus x (1x1 conv on x if widths differ).

  ``causal`` (video, see `ConvND`): causal convolutions and per-frame GroupNorm.
  ``use_bias``: biases in the convs (MaskGIT's have none). ``shortcut``: what the 1x1
  shortcut conv reads where widths differ: the block's "input" x (taming), or its
  "output" h (MaskGIT's ``ResBlock``, which returns h + conv1x1(h))."""
  out_channels: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  causal: str = ""
  use_bias: bool = True
  shortcut: str = "input"

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda k, name: ConvND(self.out_channels, k, use_bias=self.use_bias,
                                  dtype=self.dtype, causal=self.causal, name=name)
    norm = lambda name: GroupNorm(per_frame=bool(self.causal), name=name)
    h = conv(3, "conv1")(nn.swish(norm("norm1")(x)))
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(norm("norm2")(h)))
    h = conv(3, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      if self.shortcut not in ("input", "output"):
        raise ValueError(f"ResnetBlock shortcut must be 'input' or 'output', got "
                         f"{self.shortcut!r}")
      x = conv(1, "nin_shortcut")(x if self.shortcut == "input" else h)
    return x + h


class AttnBlock(nn.Module):
  """GroupNorm + single-head self-attention over all positions, residual. Same
  parameters as taming's q/k/v/proj_out 1x1 convs (4 C^2 + 4 C), here a fused qkv.

  ``per_frame`` (video): attention and norm statistics within each frame only (no
  position attends to another frame: causal-safe)."""
  attn_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32
  per_frame: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    rows = x.shape[0] * x.shape[1] if (self.per_frame and x.ndim == 5) else x.shape[0]
    y = GroupNorm(per_frame=self.per_frame, name="norm")(x).reshape(rows, -1, c)
    y = layers.Attention(1, impl=self.attn_impl, dtype=self.dtype, name="attn")(y)
    return x + y.reshape(x.shape)


class Downsample(nn.Module):
  """Zero pad (0, 1) on every spatial axis, then a 3x3 conv with stride 2 (taming).

  ``causal`` (video): H and W as above; time is padded causally (`ConvND`) and strided
  by 2 when ``temporal`` (frames 1 + 2k -> 1 + k: output frame 0 reads frame 0 only,
  output j >= 1 frames 2j-2..2j), else by 1.

  ``mode="avgpool"`` (MaskGIT's ``layers.dsample``, images): the mean of each 2x2
  window (TF-style "same" pooling, which on the even sizes the nets take has no
  padding), no parameters.
  """
  dtype: jnp.dtype = jnp.float32
  causal: str = ""
  temporal: bool = False
  mode: str = "conv"

  @nn.compact
  def __call__(self, x):
    if self.mode == "avgpool":
      if self.causal:
        raise ValueError("Downsample: mode='avgpool' is for images, not causal video nets")
      n, *spatial, c = x.shape
      shape = [n] + [s for size in spatial for s in (size // 2, 2)] + [c]
      return jnp.mean(x.reshape(shape), axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
    if self.mode != "conv":
      raise ValueError(f"Downsample mode must be 'conv' or 'avgpool', got {self.mode!r}")
    strides = (2 if self.temporal else 1, 2, 2) if self.causal else 2
    return ConvND(x.shape[-1], 3, strides=strides, padding=(0, 1), dtype=self.dtype,
                  causal=self.causal, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 on every spatial axis, then a 3x3 conv.

  ``causal`` (video): x2 on H and W only, then a causal 3x3x3 conv; with ``temporal`` it
  gives 2 C channels that become two frames each (depth-to-time: frame t -> frames 2t,
  2t+1 from channel blocks 0, 1), and the first is dropped: T frames -> 2T - 1, so one
  latent frame decodes to one frame and 1 + k to 1 + 2k (the mirror of `Downsample`).
  """
  dtype: jnp.dtype = jnp.float32
  causal: str = ""
  temporal: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    for axis in range(2 if self.causal else 1, x.ndim - 1):
      x = jnp.repeat(x, 2, axis=axis)
    r = 2 if (self.causal and self.temporal) else 1
    x = ConvND(r * c, dtype=self.dtype, causal=self.causal, name="conv")(x)
    if r == 1:
      return x
    n, t, h, w, _ = x.shape
    x = x.reshape(n, t, h, w, r, c).transpose(0, 1, 4, 2, 3, 5).reshape(n, r * t, h, w, c)
    return x[:, r - 1:]


def _feature_size(h) -> int:
  """The feature-map size that ``attn_resolutions`` refers to: the height (the axis
  third from last, H of NHWC and of NTHWC)."""
  return h.shape[-3] if h.ndim >= 4 else h.shape[1]


def attention_levels(channel_mult: Sequence[int], attn_resolutions: Sequence[int],
                     resolution: int) -> Tuple[int, ...]:
  """The levels (0 = full size) whose ResNet blocks get self-attention in a conv net
  with a fixed ``resolution`` (taming's rule: level l is ``resolution // 2 ** l``
  pixels, whatever the input's size)."""
  if not resolution:
    raise ValueError("attention_levels needs the nets' resolution (0: the levels follow "
                     "the input's size)")
  return tuple(l for l in range(len(channel_mult))
               if resolution // 2 ** l in tuple(attn_resolutions))


def _attends(m, h, level: int) -> bool:
  """Whether level ``level`` of conv net ``m`` attends after its ResNet blocks: by
  taming's fixed ``resolution`` when set, else by the feature map's actual size."""
  if m.resolution:
    return level in attention_levels(m.channel_mult, m.attn_resolutions, m.resolution)
  return _feature_size(h) in m.attn_resolutions


class _ImageHooks:
  """What `ConvEncoder` / `ConvDecoder` ask of their causal video subclasses
  (`_Causal3D`): the temporal padding ("" = not causal: images, or plain 3D convs) and
  whether a level halves time."""

  @property
  def _causal(self) -> str:
    return ""

  def _temporal(self, level: int) -> bool:
    del level
    return False


class ConvEncoder(_ImageHooks, nn.Module):
  """taming / LDM ``Encoder``: image (N, *spatial, C) -> latents (N, *spatial/f, z).

  Attributes:
    channels: Width of the first level (taming ``ch``).
    channel_mult: Width multiplier per level; f = 2 ** (len(channel_mult) - 1).
    num_res_blocks: ResNet blocks per level.
    attn_resolutions: Feature-map sizes (pixels, e.g. 16) that get self-attention after
      each ResNet block.
    resolution: taming's ``resolution``: when set, the sizes of ``attn_resolutions``
      are counted from it (level l is ``resolution // 2 ** l``), so the same levels
      attend at any input size, as in taming's Encoder / Decoder; 0: the input's actual
      feature-map sizes (the same at ``resolution``-sized inputs).
    out_channels: Latent channels (taming ``z_channels``).
    double_z: Output 2 * out_channels (mean and log-variance of a KL-VAE posterior).
    mid_attn: Self-attention in the mid block (taming: always).
    dropout: Dropout inside the ResNet blocks (needs ``train=True`` and a "dropout" rng).
    attn_impl: ``layers.attention_core`` implementation.
    layout: "taming" or "maskgit" (`LAYOUTS`; images only).
    dtype: Compute dtype; the output is float32.
  """
  channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  resolution: int = 0
  out_channels: int = 256
  double_z: bool = False
  mid_attn: bool = True
  dropout: float = 0.0
  attn_impl: str = "xla"
  layout: str = "taming"
  dtype: jnp.dtype = jnp.float32

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  def _check_input(self, x) -> None:
    factor = self.downsample_factor
    if any(s % factor for s in x.shape[1:-1]):
      raise ValueError(f"{type(self).__name__}: spatial shape {x.shape[1:-1]} is not "
                       f"divisible by the downsampling factor {factor}.")

  @nn.compact
  def __call__(self, x, train: bool = False):
    self._check_input(x)
    c, lay = self._causal, conv_layout(self.layout)
    res = _res_block(self, lay)
    attn = lambda name: AttnBlock(self.attn_impl, self.dtype, bool(c), name=name)
    h = ConvND(self.channels, use_bias=lay["conv_bias"], dtype=self.dtype, causal=c,
               name="conv_in")(x.astype(self.dtype))
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = res(self.channels * mult, f"down_{level}_block_{i}")(h, train)
        if _attends(self, h, level):
          h = attn(f"down_{level}_attn_{i}")(h)
      if level != len(self.channel_mult) - 1:
        h = Downsample(self.dtype, c, self._temporal(level), lay["downsample"],
                       name=f"down_{level}_downsample")(h)
    h = _mid(self, h, train)
    h = nn.swish(GroupNorm(per_frame=bool(c), name="norm_out")(h))
    out = 2 * self.out_channels if self.double_z else self.out_channels
    h = ConvND(out, lay["encoder_out_kernel"], dtype=self.dtype, causal=c,
               name="conv_out")(h)
    return h.astype(jnp.float32)


class ConvDecoder(_ImageHooks, nn.Module):
  """taming / LDM ``Decoder``: latents (N, *spatial, any) -> image (N, *spatial*f, C).

  Attributes as `ConvEncoder`; ``out_channels`` is the image channels. Each level has
  ``num_res_blocks + 1`` ResNet blocks.
  """
  channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  resolution: int = 0
  out_channels: int = 3
  mid_attn: bool = True
  dropout: float = 0.0
  attn_impl: str = "xla"
  layout: str = "taming"
  dtype: jnp.dtype = jnp.float32

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  def _check_input(self, z) -> None:
    del z

  @nn.compact
  def __call__(self, z, train: bool = False):
    self._check_input(z)
    c, lay = self._causal, conv_layout(self.layout)
    res = _res_block(self, lay)
    h = ConvND(self.channels * self.channel_mult[-1], dtype=self.dtype, causal=c,
               name="conv_in")(z.astype(self.dtype))
    h = _mid(self, h, train)
    for level in reversed(range(len(self.channel_mult))):
      for i in range(self.num_res_blocks + int(lay["extra_up_block"])):
        h = res(self.channels * self.channel_mult[level], f"up_{level}_block_{i}")(h, train)
        if _attends(self, h, level):
          h = AttnBlock(self.attn_impl, self.dtype, bool(c), name=f"up_{level}_attn_{i}")(h)
      if level != 0:
        # mirrors the encoder's downsampling from level - 1 to level
        h = Upsample(self.dtype, c, self._temporal(level - 1),
                     name=f"up_{level}_upsample")(h)
    h = nn.swish(GroupNorm(per_frame=bool(c), name="norm_out")(h))
    h = ConvND(self.out_channels, dtype=self.dtype, causal=c, name="conv_out")(h)
    return h.astype(jnp.float32)


def _res_block(m, lay):
  """``res(channels, name)``: a ResNet block of the conv encoder / decoder ``m`` in the
  layout ``lay``."""
  return lambda ch, name: ResnetBlock(ch, m.dropout, m.dtype, m._causal,  # pylint: disable=protected-access
                                      lay["conv_bias"], lay["shortcut"], name=name)


def _mid(m, h, train: bool):
  """Mid block of an encoder or decoder ``m`` (call inside its compact): taming's (res,
  attn, res), attention only with ``mid_attn``; in the MaskGIT layout
  ``num_res_blocks`` blocks (``mid_block_1``, ...)."""
  lay = conv_layout(m.layout)
  res = _res_block(m, lay)
  ch = h.shape[-1]
  blocks = lay["mid_blocks"] or m.num_res_blocks
  for j in range(1, blocks + 1):
    h = res(ch, f"mid_block_{j}")(h, train)
    if j == 1 and m.mid_attn:
      h = AttnBlock(m.attn_impl, m.dtype, bool(m._causal), name="mid_attn_1")(h)  # pylint: disable=protected-access
  return h


# ----------------------------------------------------------------------------- causal 3D


def check_num_frames(num_frames: int, temporal_factor: int, who: str = "") -> int:
  """Latent frames of a causal video net for ``num_frames`` input frames (1 + k*ft ->
  1 + k); a clear ValueError for any other count."""
  if num_frames < 1 or (num_frames - 1) % temporal_factor:
    valid = ", ".join(str(1 + temporal_factor * k) for k in range(4))
    raise ValueError(
        f"{who or 'causal video net'}: {num_frames} frames; with temporal downsampling "
        f"ft={temporal_factor} the frame count must be 1 + {temporal_factor} k ({valid}, "
        f"...): the first frame is encoded alone and every later latent frame covers "
        f"{temporal_factor} frames.")
  return 1 + (num_frames - 1) // temporal_factor


class _Causal3D:
  """What the causal video encoder and decoder share (mixed into the conv nets)."""

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(t) for t in self.temporal_downsample)

  @property
  def _causal(self) -> str:
    return self.temporal_padding

  def _temporal(self, level: int) -> bool:
    return bool(self.temporal_downsample[level])

  def _check_video(self, x) -> None:
    name = type(self).__name__
    if x.ndim != 5:
      raise ValueError(f"{name} takes videos (N, T, H, W, C), got shape {x.shape}; "
                       f"an image is a one-frame video: x[:, None].")
    if len(self.temporal_downsample) != len(self.channel_mult) - 1:
      raise ValueError(f"{name}: temporal_downsample {tuple(self.temporal_downsample)} "
                       f"needs one entry per downsampling ({len(self.channel_mult) - 1}).")
    if self.temporal_padding not in TEMPORAL_PADDINGS:
      raise ValueError(f"{name}: temporal_padding must be one of {TEMPORAL_PADDINGS}, "
                       f"got {self.temporal_padding!r}")


class CausalConvEncoder3D(_Causal3D, ConvEncoder):
  """MAGVIT-v2-style causal 3D conv encoder: video (N, T, H, W, C) -> latents
  (N, 1 + (T-1)/ft, H/f, W/f, z); the `ConvEncoder` layout (same parameter names, each
  kernel with a time tap axis in front) with:

  * causal 3x3x3 convolutions: ``kt - 1 = 2`` frames of padding before the clip
    (``temporal_padding`` "replicate": copies of the first frame, as CV-VAE /
    Open-Sora-Plan; "zero": zeros) and none after, so latent frame j never depends on
    input frames after ft*j; the first frame is encoded alone, and a one-frame video is
    an image (T' = 1). With "replicate" a still video gives still latents for any
    weights;
  * per-frame GroupNorm and per-frame self-attention (a causal-safe norm: no statistics
    across frames; GroupNorm over (T, H, W) would let frame t see frames > t);
  * downsampling: stride 2 in H and W at every level, and in time where
    ``temporal_downsample[level]`` (a causal stride-2 conv: 1 + 2k frames -> 1 + k, the
    first frame kept alone); ft = 2 ** sum(temporal_downsample).

  Valid frame counts: T = 1 + ft k (`check_num_frames`; others raise ValueError).
  """
  temporal_downsample: Sequence[bool] = ()
  temporal_padding: str = "replicate"

  def _check_input(self, x) -> None:
    self._check_video(x)
    check_num_frames(x.shape[1], self.temporal_factor, type(self).__name__)
    super()._check_input(x[:, 0])


class CausalConvDecoder3D(_Causal3D, ConvDecoder):
  """The mirror of `CausalConvEncoder3D`: latents (N, T', h, w, any) -> video
  (N, 1 + ft (T' - 1), h f, w f, C). Upsampling: nearest x2 in H and W, a causal conv,
  and where the encoder halved time, depth-to-time (`Upsample`: 2 C channels -> two
  frames, the first frame dropped so 1 latent frame -> 1 frame). Output frame t reads
  latent frames <= ceil(t / ft) only. Any T' >= 1 is valid."""
  temporal_downsample: Sequence[bool] = ()
  temporal_padding: str = "replicate"

  def _check_input(self, z) -> None:
    self._check_video(z)


# ----------------------------------------------------------------------------- ViT parts


class ViTBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU)."""
  num_heads: int
  mlp_dim: int
  attn_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bld):
    y = layers.LayerNorm(name="norm1")(x_bld)
    x_bld = x_bld + layers.Attention(self.num_heads, impl=self.attn_impl, dtype=self.dtype,
                                     name="attn")(y)
    y = layers.LayerNorm(name="norm2")(x_bld)
    return x_bld + layers.Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class TanhMlp(nn.Module):
  """ViT-VQGAN's output feed-forward: Linear -> tanh -> Linear (same width out)."""
  hidden_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = layers.Dense(self.hidden_size, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    return layers.Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="fc2")(
        jnp.tanh(h))


def _position_embedding(m, grid: Tuple[int, ...], width: int):
  """(L, width) position table of ``m`` (a ViT encoder/decoder) for a token ``grid``."""
  if m.pos_emb == "learned":
    return m.param("pos_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("length", "embed")), (math.prod(grid), width))
  if m.pos_emb != "sincos":
    raise ValueError(f"pos_emb must be 'sincos' or 'learned', got {m.pos_emb!r}")
  if len(grid) != 2:
    raise NotImplementedError("fixed sin-cos position embeddings are 2-D only; "
                              "use pos_emb='learned' for other token grids.")
  return jnp.asarray(layers.sincos_2d(width, *grid))


def _transformer(m, h, mlp_dim: int):
  for i in range(m.depth):
    h = ViTBlock(m.num_heads, mlp_dim, m.attn_impl, m.dtype, name=f"blocks_{i}")(h)
  h = layers.LayerNorm(name="norm_out")(h)
  if m.tanh_head:
    h = TanhMlp(mlp_dim, m.dtype, name="head_ffn")(h)
  return h


class ViTEncoder(nn.Module):
  """ViT-VQGAN encoder: image (N, H, W, C) -> latent grid (N, H/p, W/p, out_channels).

  patch embedding (conv, kernel = stride = p) + position embedding (fixed 2-D sin-cos,
  or learned for the token grid of the input's shape, fixed at init) -> ``depth``
  pre-LN blocks -> LayerNorm -> Linear-tanh-Linear feed-forward (ViT-VQGAN Sec. 3.1:
  "at the output of transformer blocks, a two-layer feed-forward network with a tanh
  activation in the middle"; ``tanh_head=False`` drops it) -> Linear to
  ``out_channels`` (the factorised-code projection of their Sec. 3.2; no activation;
  twice the channels with ``double_z``, for a KL bottleneck). The block MLP uses GELU.
  """
  patch_size: int = 8
  hidden_size: int = 512
  depth: int = 8
  num_heads: int = 8
  mlp_ratio: float = 4.0
  out_channels: int = 32
  double_z: bool = False
  pos_emb: str = "sincos"
  tanh_head: bool = True
  attn_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @property
  def downsample_factor(self) -> int:
    return self.patch_size

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout
    p, spatial = self.patch_size, x.shape[1:-1]
    if any(s % p for s in spatial):
      raise ValueError(f"ViTEncoder: spatial shape {spatial} is not divisible by "
                       f"patch_size={p}.")
    grid = tuple(s // p for s in spatial)
    h = layers.PatchEmbed(self.hidden_size, (p,) * len(spatial), dtype=self.dtype,
                          name="patch_embed")(x.astype(self.dtype))
    h = h + _position_embedding(self, grid, self.hidden_size).astype(h.dtype)
    h = _transformer(self, h, int(self.hidden_size * self.mlp_ratio))
    out = 2 * self.out_channels if self.double_z else self.out_channels
    h = layers.Dense(out, ("embed", "patch_out"), dtype=self.dtype, name="proj_out")(h)
    return h.reshape((x.shape[0],) + grid + (out,)).astype(jnp.float32)


class ViTDecoder(nn.Module):
  """ViT-VQGAN decoder: latent grid (N, h, w, any) -> image (N, h*p, w*p, out_channels).

  Linear to ``hidden_size`` + position embedding -> ``depth`` pre-LN blocks -> LayerNorm
  -> Linear-tanh-Linear -> Linear to p*p*C per token -> unpatchify. ViT-VQGAN ends with
  a transposed conv of kernel = stride = p; that is the same linear map per token, with a
  bias per output pixel (p*p*C) here instead of per channel (C).
  """
  patch_size: int = 8
  hidden_size: int = 512
  depth: int = 8
  num_heads: int = 8
  mlp_ratio: float = 4.0
  out_channels: int = 3
  pos_emb: str = "sincos"
  tanh_head: bool = True
  attn_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @property
  def downsample_factor(self) -> int:
    return self.patch_size

  @nn.compact
  def __call__(self, z, train: bool = False):
    del train
    b, grid, p, c = z.shape[0], z.shape[1:-1], self.patch_size, self.out_channels
    if len(grid) != 2:
      raise NotImplementedError(f"ViTDecoder takes (N, h, w, C) latents, got {z.shape}")
    h = layers.Dense(self.hidden_size, ("patch_out", "embed"), dtype=self.dtype,
                     name="proj_in")(z.reshape(b, -1, z.shape[-1]).astype(self.dtype))
    h = h + _position_embedding(self, grid, self.hidden_size).astype(h.dtype)
    h = _transformer(self, h, int(self.hidden_size * self.mlp_ratio))
    h = layers.Dense(p * p * c, ("embed", "patch_out"), dtype=self.dtype,
                     name="to_pixels")(h)
    return dit.unpatchify(h, grid[0], grid[1], p, c).astype(jnp.float32)


# ------------------------------------------------------------------------- discriminator


class PatchGANDiscriminator(nn.Module):
  """pix2pix ``NLayerDiscriminator`` (taming ``discriminator/model.py``): per-patch logits.

  conv4x4/2 + LeakyReLU(0.2); ``num_layers - 1`` times conv4x4/2 (width x2, at most 8x)
  + norm + LeakyReLU; conv4x4/1 + norm + LeakyReLU; conv4x4/1 to 1 channel. Padding 1.
  A 256x256 input gives (N, 30, 30, 1) logits, 32x32 gives (N, 2, 2, 1).

  Norm: taming uses BatchNorm (batch statistics in training), which needs mutable state
  and couples the examples of a batch (and breaks per-example R1 gradients). Here
  ``norm="group"`` (default, 32 groups; the same 2 C parameters per layer as BatchNorm,
  so counts match taming's) or ``"none"``; the convs before a norm have no bias, as in
  taming. Conv kernels ~ N(0, 0.02) as taming's ``weights_init``.
  """
  channels: int = 64
  num_layers: int = 3
  norm: str = "group"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.norm not in ("group", "none"):
      raise ValueError(f"PatchGANDiscriminator norm must be 'group' or 'none', "
                       f"got {self.norm!r}")
    init = nn.initializers.normal(0.02)
    conv = lambda ch, stride, bias, name: ConvND(
        ch, 4, strides=stride, padding=(1, 1), use_bias=bias, kernel_init=init,
        dtype=self.dtype, name=name)
    h = nn.leaky_relu(conv(self.channels, 2, True, "conv_0")(x.astype(self.dtype)), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      ch = self.channels * min(2 ** n, 8)
      h = conv(ch, stride, self.norm == "none", f"conv_{n}")(h)
      if self.norm == "group":
        h = GroupNorm(epsilon=1e-5, name=f"norm_{n}")(h)
      h = nn.leaky_relu(h, 0.2)
    h = conv(1, 1, True, "conv_out")(h)
    return h.astype(jnp.float32)
