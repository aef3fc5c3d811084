"""Diffusion Transformer (Peebles & Xie, 2023) as a Flax Linen module.

Patchify -> fixed 2-D sin-cos positions -> N adaLN-Zero blocks conditioned on
timestep + class embeddings -> adaLN final layer -> unpatchify. The class table has
one extra row, the null class (label == num_classes), for classifier-free guidance.
Named sizes ``S/B/L/XL`` with patch ``2/4/8``: e.g. ``DiT(**dit_variant("XL/2"))``.
"""

from __future__ import annotations


import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxgen import registry
from jaxgen.nn import layers

# (depth, hidden_size, num_heads) of the paper's Table 1.
SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def dit_variant(variant: str) -> dict:
  """``"XL/2"`` -> dict(depth, hidden_size, num_heads, patch_size)."""
  try:
    size, patch = variant.split("/")
    depth, width, heads = SIZES[size]
    return dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=int(patch))
  except (ValueError, KeyError):
    raise ValueError(f"Unknown DiT variant {variant!r}; use one of "
                     f"{', '.join(k + '/' + p for k in SIZES for p in '248')}.") from None


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning (identity at initialisation)."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  attn_impl: str = "xla"

  @nn.compact
  def __call__(self, x_bld, c_bd):
    mod = layers.Dense(6 * self.hidden_size, ("embed", "mlp"), kernel_init=layers.zeros,
                       dtype=self.dtype, name="adaLN_modulation")(nn.silu(c_bd))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)
    h = layers.modulate(layers.LayerNorm(affine=False, name="norm1")(x_bld),
                        shift_msa, scale_msa)
    x_bld = x_bld + gate_msa[:, None] * layers.Attention(
        self.num_heads, impl=self.attn_impl, dtype=self.dtype, name="attn")(h)
    h = layers.modulate(layers.LayerNorm(affine=False, name="norm2")(x_bld),
                        shift_mlp, scale_mlp)
    x_bld = x_bld + gate_mlp[:, None] * layers.Mlp(
        int(self.hidden_size * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    return layers.constrain(x_bld, ("batch", "length", "act_embed"))


class _ScanBlock(nn.Module):
  """DiTBlock with the (carry, x) -> (carry, y) signature nn.scan needs."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float
  dtype: jnp.dtype
  attn_impl: str

  @nn.compact
  def __call__(self, x_bld, c_bd):
    x_bld = DiTBlock(self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype,
                     self.attn_impl, name="block")(x_bld, c_bd)
    return x_bld, None


class FinalLayer(nn.Module):
  patch_size: int
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bld, c_bd):
    d = x_bld.shape[-1]
    mod = layers.Dense(2 * d, ("embed", "mlp"), kernel_init=layers.zeros,
                       dtype=self.dtype, name="adaLN_modulation")(nn.silu(c_bd))
    shift, scale = jnp.split(mod, 2, -1)
    x_bld = layers.modulate(layers.LayerNorm(affine=False, name="norm_final")(x_bld),
                            shift, scale)
    return layers.Dense(self.patch_size ** 2 * self.out_channels, ("embed", "patch_out"),
                        kernel_init=layers.zeros, dtype=self.dtype, name="linear")(x_bld)


class DiT(nn.Module):
  """Class-conditional DiT on NHWC inputs.

  Attributes:
    input_size: spatial size H == W of the input (pixels or latents).
    in_channels: channels C of the input.
    num_classes: number of real classes; label ``num_classes`` is the null class.
    learn_sigma: output 2C channels (mean and variance, as the official DiT does).
    scan_blocks: run the blocks with ``nn.scan`` (constant compile time in depth).
    remat: rematerialise each block in the backward pass (saves activation memory).
    attn_impl: "xla" (einsums; fastest on CPU/TPU) or "cudnn" (fused, NVIDIA GPUs).
  """
  input_size: int = 32
  in_channels: int = 4
  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  learn_sigma: bool = False
  scan_blocks: bool = False
  remat: bool = False
  attn_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @property
  def out_channels(self) -> int:
    return self.in_channels * (2 if self.learn_sigma else 1)

  def fixed_parameter_count(self) -> int:
    """Size of the fixed sin-cos position table, which the official DiT keeps as a
    frozen parameter and counts in its parameter totals (we compute it on the fly)."""
    return (self.input_size // self.patch_size) ** 2 * self.hidden_size

  @nn.compact
  def __call__(self, x_bhwc, t_b, y_b, train: bool = False):
    del train  # no dropout in DiT; the argument keeps one denoiser signature
    b, h, w, c = x_bhwc.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"DiT: input {h}x{w} is not divisible by patch size {p}.")
    x = layers.PatchEmbed(self.hidden_size, (p, p), dtype=self.dtype,
                          name="x_embedder")(x_bhwc.astype(self.dtype))
    pos = layers.sincos_2d(self.hidden_size, h // p, w // p)
    x_bld = layers.constrain(x + jnp.asarray(pos, self.dtype)[None],
                             ("batch", "length", "act_embed"))
    t_bd = layers.TimestepEmbedder(self.hidden_size, dtype=self.dtype,
                                   name="t_embedder")(t_b)
    y_bd = layers.LabelEmbedder(self.num_classes, self.hidden_size,
                                name="y_embedder")(y_b).astype(self.dtype)
    c_bd = t_bd + y_bd
    x_bld = self._blocks(x_bld, c_bd)
    out = FinalLayer(p, self.out_channels, dtype=self.dtype, name="final_layer")(x_bld, c_bd)
    return unpatchify(out, h // p, w // p, p, self.out_channels).astype(jnp.float32)

  def _blocks(self, x_bld, c_bd):
    args = (self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.attn_impl)
    if self.scan_blocks:
      block = _ScanBlock
      if self.remat:
        block = nn.remat(block, prevent_cse=False)
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=self.depth,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x_bld, _ = scanned(*args, name="blocks")(x_bld, c_bd)
      return x_bld
    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      x_bld = block(*args, name=f"blocks_{i}")(x_bld, c_bd)
    return x_bld


def unpatchify(x_bld, gh: int, gw: int, p: int, c: int):
  """(B, gh*gw, p*p*c) tokens -> (B, gh*p, gw*p, c) image."""
  b = x_bld.shape[0]
  x = x_bld.reshape(b, gh, gw, p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, gh * p, gw * p, c)


@registry.MODELS.register("dit")
def build_dit(cfg: ml_collections.ConfigDict, *, image_shape, num_classes: int,
              dtype=jnp.float32) -> DiT:
  """Builds a DiT from ``config.model`` (``variant`` fills depth/width/heads/patch;
  explicit fields override it) for inputs of ``image_shape`` = (H, W, C)."""
  kw = dit_variant(cfg.variant) if cfg.get("variant") else {}
  for key in ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio",
              "learn_sigma", "scan_blocks", "remat", "attn_impl"):
    if cfg.get(key) is not None:
      kw[key] = cfg[key]
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"DiT expects square inputs, got {h}x{w}.")
  return DiT(input_size=h, in_channels=c, num_classes=num_classes, dtype=dtype, **kw)
