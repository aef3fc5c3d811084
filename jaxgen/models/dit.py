"""Diffusion Transformer (Peebles & Xie, 2023) as a Flax Linen module.

Patchify -> fixed 2-D sin-cos positions -> N adaLN-Zero blocks conditioned on
timestep + class embeddings -> adaLN final layer -> unpatchify. The class table has
one extra row, the null class (label == num_classes), for classifier-free guidance.
Named sizes ``S/B/L/XL`` with patch ``2/4/8``: e.g. ``DiT(**dit_variant("XL/2"))``.

Text conditioning (``text_conditioning``; the condition is then the dict of
`jaxgen.conditioning`: ``text_tokens`` (B, L, Dt), ``text_mask`` (B, L), ``text_pooled``
(B, Dt)). In both variants the pooled text goes through an MLP into the adaLN
condition, added to the timestep embedding (SD3), and the tokens through PixArt's
caption projection (Linear, GELU-tanh, Linear) to the model width:

* ``"cross_attention"`` (PixArt-alpha): each block adds a cross-attention sub-layer from
  the image tokens to the projected text tokens (`layers.AdaLNBlock`), padding masked.
* ``"joint"`` (MMDiT, SD3): each `JointBlock` keeps two streams, text and image, with
  their own adaLN modulation, qkv/output projections and MLPs, and one attention over
  the concatenated [text; image] sequence (text padding masked as keys). Simplified
  from SD3: no QK-norm, the last block keeps its (then unused) text MLP, and the text
  tokens carry the encoder's own positions (no added position embedding).
"""

from __future__ import annotations

import math
from typing import Tuple, Union

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
VARIANTS = tuple(f"{size}/{patch}" for size in SIZES for patch in (2, 4, 8))
registry.register_variants(["dit"], VARIANTS)


def dit_variant(variant: str) -> dict:
  """``"XL/2"`` -> dict(depth, hidden_size, num_heads, patch_size)."""
  try:
    size, patch = variant.split("/")
    depth, width, heads = SIZES[size]
    return dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=int(patch))
  except (ValueError, KeyError):
    raise ValueError(f"Unknown DiT variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}.") from None


# DiT's block is the shared adaLN block with its defaults (adaLN-Zero).
DiTBlock = layers.AdaLNBlock


TEXT_CONDITIONINGS = ("none", "cross_attention", "joint")


class JointBlock(nn.Module):
  """MMDiT block (SD3): text and image streams, each with its own adaLN-Zero
  modulation, qkv and output projections and MLP, attending jointly over
  [text; image]. ``txt_mask`` (B, Lt) masks text padding as keys."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  attn_impl: str = "xla"

  def _stream_in(self, x_bld, c_bd, prefix):
    mod = layers.Dense(6 * self.hidden_size, ("embed", "mlp"), kernel_init=layers.zeros,
                       dtype=self.dtype, name=f"{prefix}_adaLN_modulation")(nn.silu(c_bd))
    chunks = jnp.split(mod, 6, -1)
    h = layers.modulate(layers.LayerNorm(affine=False, name=f"{prefix}_norm1")(x_bld),
                        chunks[0], chunks[1])
    qkv = layers.Dense(3 * self.hidden_size, ("embed", "qkv"), dtype=self.dtype,
                       name=f"{prefix}_qkv")(h)
    return qkv, chunks

  def _stream_out(self, x_bld, attn_bld, chunks, prefix):
    _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
    h = layers.Dense(self.hidden_size, ("qkv", "embed"), dtype=self.dtype,
                     name=f"{prefix}_proj")(attn_bld)
    x_bld = x_bld + gate_msa[:, None] * h
    h = layers.modulate(layers.LayerNorm(affine=False, name=f"{prefix}_norm2")(x_bld),
                        shift_mlp, scale_mlp)
    h = layers.Mlp(int(self.hidden_size * self.mlp_ratio), dtype=self.dtype,
                   name=f"{prefix}_mlp")(h)
    return x_bld + gate_mlp[:, None] * h

  @nn.compact
  def __call__(self, x_bld, txt_bld, c_bd, txt_mask_bl):
    b, lx, d = x_bld.shape
    lt = txt_bld.shape[1]
    hd = d // self.num_heads
    qkv_x, mod_x = self._stream_in(x_bld, c_bd, "x")
    qkv_t, mod_t = self._stream_in(txt_bld, c_bd, "txt")
    qkv = jnp.concatenate([qkv_t, qkv_x], axis=1).reshape(b, lt + lx, 3, self.num_heads, hd)
    keys = jnp.concatenate([txt_mask_bl.astype(bool), jnp.ones((b, lx), bool)], axis=1)
    out = layers.attention_core(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                keys[:, None, None, :], self.attn_impl)
    out = out.reshape(b, lt + lx, d)
    x_bld = self._stream_out(x_bld, out[:, lt:], mod_x, "x")
    txt_bld = self._stream_out(txt_bld, out[:, :lt], mod_t, "txt")
    x_bld = layers.constrain(x_bld, ("batch", "length", "act_embed"))
    return x_bld, txt_bld


class _ScanBlock(nn.Module):
  """A block with the (carry, x) -> (carry, y) signature nn.scan needs; the carry is
  the image tokens (and the text tokens for joint blocks)."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float
  dtype: jnp.dtype
  attn_impl: str
  text_conditioning: str = "none"

  @nn.compact
  def __call__(self, carry, c_bd, ctx_bld=None, ctx_mask_bl=None):
    args = (self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.attn_impl)
    if self.text_conditioning == "joint":
      return JointBlock(*args, name="block")(*carry, c_bd, ctx_mask_bl), None
    block = DiTBlock(*args, cross_attention=self.text_conditioning == "cross_attention",
                     name="block")
    return block(carry, c_bd, context_bld=ctx_bld, context_mask_bl=ctx_mask_bl), None


class FinalLayer(nn.Module):
  """adaLN-modulated norm and the linear map of each token to its patch's outputs:
  ``patch_size`` p (a p x p image patch) or a tuple (e.g. (pt, p, p), a spacetime
  patch)."""
  patch_size: Union[int, Tuple[int, ...]]
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bld, c_bd):
    d = x_bld.shape[-1]
    mod = layers.Dense(2 * d, ("embed", "mlp"), kernel_init=layers.zeros,
                       dtype=self.dtype, name="adaLN_modulation")(nn.silu(c_bd))
    shift, scale = jnp.split(mod, 2, -1)
    x_bld = layers.norm_modulate(layers.LayerNorm(affine=False, name="norm_final"), x_bld,
                                 shift, scale, x_bld.dtype)
    p = self.patch_size
    patch_numel = math.prod(p) if isinstance(p, (tuple, list)) else p ** 2
    return layers.Dense(patch_numel * self.out_channels, ("embed", "patch_out"),
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
    text_conditioning: "none" (class labels), "cross_attention" (PixArt-alpha) or
      "joint" (MMDiT); see the module docstring. With text, ``y`` is the condition dict.
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
  text_conditioning: str = "none"
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
    y_bd, ctx, ctx_mask = embed_condition(y_b, self.num_classes, self.hidden_size,
                                          self.text_conditioning, self.dtype)
    c_bd = t_bd + y_bd
    x_bld = self._blocks(x_bld, c_bd, ctx, ctx_mask)
    out = FinalLayer(p, self.out_channels, dtype=self.dtype, name="final_layer")(x_bld, c_bd)
    return unpatchify(out, h // p, w // p, p, self.out_channels).astype(jnp.float32)

  def _blocks(self, x_bld, c_bd, ctx_bld=None, ctx_mask_bl=None):
    args = (self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.attn_impl)
    joint = self.text_conditioning == "joint"
    if self.scan_blocks:
      block = _ScanBlock
      if self.remat:
        block = nn.remat(block, prevent_cse=False)
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=self.depth,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      carry = (x_bld, ctx_bld) if joint else x_bld
      extra = () if self.text_conditioning == "none" else (ctx_bld, ctx_mask_bl)
      carry, _ = scanned(*args, self.text_conditioning, name="blocks")(carry, c_bd, *extra)
      return carry[0] if joint else carry
    if joint:
      block = nn.remat(JointBlock) if self.remat else JointBlock
      for i in range(self.depth):
        x_bld, ctx_bld = block(*args, name=f"blocks_{i}")(x_bld, ctx_bld, c_bd, ctx_mask_bl)
      return x_bld
    cross = self.text_conditioning == "cross_attention"
    # `train` (argument 4, counting the module) stays a Python bool under remat.
    block = (nn.remat(DiTBlock, static_argnums=(4,) if cross else ()) if self.remat
             else DiTBlock)
    for i in range(self.depth):
      if cross:
        x_bld = block(*args, cross_attention=True, name=f"blocks_{i}")(
            x_bld, c_bd, None, False, None, ctx_bld, ctx_mask_bl)
      else:
        x_bld = block(*args, name=f"blocks_{i}")(x_bld, c_bd)
    return x_bld


def embed_condition(y_b, num_classes: int, hidden_size: int, text_conditioning: str,
                    dtype=jnp.float32):
  """The condition of a DiT-style model, called inside its compact ``__call__`` (the
  submodules it makes are the caller's: ``y_embedder``, or ``pooled_embedder_in/out``
  and ``caption_projection``). Returns ``(y_bd, ctx_bld, ctx_mask_bl)``: the class
  embedding (or the pooled text through Linear, SiLU, Linear: SD3's pooled projection)
  to add to the timestep embedding, and for text the projected tokens and their mask
  (None for classes)."""
  if text_conditioning == "none":
    if isinstance(y_b, dict):
      y_b = y_b["label"]
    y_bd = layers.LabelEmbedder(num_classes, hidden_size, name="y_embedder")(y_b)
    return y_bd.astype(dtype), None, None
  if text_conditioning not in TEXT_CONDITIONINGS:
    raise ValueError(f"DiT: text_conditioning={text_conditioning!r}; use one of "
                     f"{', '.join(TEXT_CONDITIONINGS)}.")
  if not isinstance(y_b, dict) or "text_tokens" not in y_b:
    raise ValueError("A text-conditioned DiT takes the condition dict (text_tokens, "
                     "text_mask, text_pooled) as y, not labels.")
  h = layers.Dense(hidden_size, ("embed_in", "embed"), dtype=dtype,
                   name="pooled_embedder_in")(y_b["text_pooled"].astype(dtype))
  y_bd = layers.Dense(hidden_size, ("embed", "embed_out"), dtype=dtype,
                      name="pooled_embedder_out")(nn.silu(h))
  ctx = layers.Mlp(hidden_size, hidden_size, dtype=dtype,
                   name="caption_projection")(y_b["text_tokens"].astype(dtype))
  return y_bd, ctx, y_b["text_mask"].astype(bool)


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
  kw = dit_variant(cfg.variant) if cfg.variant else {}
  for key in ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio",
              "learn_sigma", "scan_blocks", "remat", "attn_impl", "text_conditioning"):
    if cfg.get(key) is not None:
      kw[key] = cfg[key]
  if len(image_shape) != 3:
    raise ValueError(f"DiT takes images (H, W, C), got examples of shape "
                     f"{tuple(image_shape)}; use model.name='video_dit' for videos.")
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"DiT expects square inputs, got {h}x{w}.")
  return DiT(input_size=h, in_channels=c, num_classes=num_classes, dtype=dtype, **kw)


registry.register_model_fields(["dit"], dict(
    learn_sigma=False,          # 2C outputs: the mean and the variance (DiT's diffusion)
    text_conditioning="none",   # none | cross_attention | joint (text-to-image)
))
