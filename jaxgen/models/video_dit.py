"""Video Diffusion Transformer: DiT over spacetime patches (Latte, Ma et al. 2024; the
Sora-style DiT), as a Flax Linen module on (N, T, H, W, C) videos.

Spacetime patches ``(temporal_patch, patch, patch)`` -> tokens on a (gt, gh, gw)
grid (frames first) -> fixed sin-cos positions (the 2-D DiT table over (gh, gw) plus a
1-D table over gt: a separable 3-D embedding) -> adaLN-Zero blocks (DiT's
`layers.AdaLNBlock`) conditioned on timestep + class (or pooled text) -> DiT's adaLN
final layer -> unpatchify back to (N, T, H, W, C).

``attention``:

* ``"full"``: every block attends over all gt * gh * gw tokens of a video (Sora /
  Latte's full spacetime attention); the temporal table is added at the input.
* ``"factorised"``: Latte's variant 1 (its default): the blocks alternate spatial
  (tokens of one frame attend to each other: a batch of N * gt sequences of gh * gw)
  and temporal (the tokens of one position across frames: N * gh * gw sequences of gt);
  as in the official Latte, the temporal table is added before the first temporal
  block. ``depth`` counts both kinds (Latte-XL: 28 = 14 spatial + 14 temporal).

Text (``text_conditioning="cross_attention"``, PixArt-alpha / Latte-T2V): the pooled
text joins the adaLN condition and every block (factorised: every spatial block)
cross-attends to the projected text tokens, as DiT's `embed_condition` builds them.

Sequence parallelism: the token activations carry the logical axes ("batch",
"length", "act_embed"); ``"length"`` maps to the ``context`` mesh axis
(`jaxgen.sharding.mesh`), so ``config.mesh.context > 1`` splits a video's tokens over
devices (XLA gathers keys and values for the attention).

Named sizes: DiT's / Latte's ``S, B, L, XL`` with patch ``2, 4, 8`` (``"XL/2"`` is
Latte-XL/2), and the CPU size ``CPU/4`` (128 wide, 6 blocks; 32x32 pixel Moving Fashion-MNIST: 8x8 tokens
a frame) / ``CPU/2`` (8x8x4 latents: 4x4 tokens a frame) / ``CPU/1`` (8x8 tokens).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import registry
from jaxgen.models import dit
from jaxgen.nn import layers

SIZES = {**dit.SIZES, "CPU": (6, 128, 4)}  # (depth, hidden_size, num_heads)
VARIANTS = tuple(f"{s}/{p}" for s in dit.SIZES for p in (2, 4, 8)) + ("CPU/4", "CPU/2",
                                                                   "CPU/1")
registry.register_variants(["video_dit"], VARIANTS)
ATTENTIONS = ("full", "factorised")
TEXT_CONDITIONINGS = ("none", "cross_attention")


def video_dit_variant(variant: str) -> dict:
  """``"XL/2"`` -> dict(depth, hidden_size, num_heads, patch_size)."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown video DiT variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}.")
  size, patch = variant.split("/")
  depth, width, heads = SIZES[size]
  return dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=int(patch))


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int) -> np.ndarray:
  """(grid_t * grid_h * grid_w, dim) positions, frames first: DiT's 2-D table of the
  (h, w) position plus a 1-D table of the frame (Latte's ``temp_embed``)."""
  spatial = layers.sincos_2d(dim, grid_h, grid_w)
  temporal = layers.sincos_1d(dim, np.arange(grid_t, dtype=np.float64))
  return (temporal[:, None, :] + spatial[None]).reshape(-1, dim).astype(np.float32)


def patchify_grid(shape, temporal_patch: int, patch: int):
  """The token grid (gt, gh, gw) of a (T, H, W, C) video; ValueError when a patch does
  not divide its axis."""
  t, h, w = shape[:3]
  if t % temporal_patch or h % patch or w % patch:
    raise ValueError(f"Video DiT: input {t}x{h}x{w} (frames x height x width) is not "
                     f"divisible by the patch {temporal_patch}x{patch}x{patch} "
                     "(config.model.temporal_patch, patch_size).")
  return t // temporal_patch, h // patch, w // patch


def unpatchify(x_bld, grid, patch, c: int):
  """(B, gt*gh*gw, pt*p*p*c) tokens -> (B, gt*pt, gh*p, gw*p, c) video."""
  b = x_bld.shape[0]
  (gt, gh, gw), (pt, p, q) = grid, patch
  x = x_bld.reshape(b, gt, gh, gw, pt, p, q, c)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))
  return x.reshape(b, gt * pt, gh * p, gw * q, c)


class VideoDiT(nn.Module):
  """Class- (or text-) conditional video DiT on (N, T, H, W, C) inputs.

  Attributes:
    input_shape: (T, H, W) of the input (pixels or latents).
    in_channels: channels C of the input.
    patch_size / temporal_patch: the spacetime patch (temporal_patch, p, p).
    attention: "full" (spacetime) or "factorised" (alternating spatial / temporal
      blocks, Latte's variant 1); see the module docstring.
    num_classes, learn_sigma, remat, attn_impl, text_conditioning, dtype: as `dit.DiT`.
  """
  input_shape: tuple = (8, 32, 32)
  in_channels: int = 1
  patch_size: int = 2
  temporal_patch: int = 1
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_classes: int = 10
  attention: str = "factorised"
  learn_sigma: bool = False
  remat: bool = False
  attn_impl: str = "xla"
  text_conditioning: str = "none"
  dtype: jnp.dtype = jnp.float32

  @property
  def out_channels(self) -> int:
    return self.in_channels * (2 if self.learn_sigma else 1)

  @property
  def grid(self):
    return patchify_grid(self.input_shape, self.temporal_patch, self.patch_size)

  def fixed_parameter_count(self) -> int:
    """The fixed sin-cos tables, which the official Latte keeps as frozen parameters
    and counts (``pos_embed`` gh*gw*D and ``temp_embed`` gt*D)."""
    gt, gh, gw = self.grid
    return (gh * gw + gt) * self.hidden_size

  @nn.compact
  def __call__(self, x_bthwc, t_b, y_b, train: bool = False):
    del train  # no dropout; the argument keeps one denoiser signature
    if self.attention not in ATTENTIONS:
      raise ValueError(f"Video DiT: attention={self.attention!r}; use one of "
                       f"{', '.join(ATTENTIONS)}.")
    if self.text_conditioning not in TEXT_CONDITIONINGS:
      raise ValueError(f"Video DiT: text_conditioning={self.text_conditioning!r}; use one "
                       f"of {', '.join(TEXT_CONDITIONINGS)}.")
    gt, gh, gw = grid = patchify_grid(x_bthwc.shape[1:], self.temporal_patch,
                                      self.patch_size)
    patch = (self.temporal_patch, self.patch_size, self.patch_size)
    d = self.hidden_size
    x = layers.PatchEmbed(d, patch, dtype=self.dtype, name="x_embedder")(
        x_bthwc.astype(self.dtype))
    temporal = jnp.asarray(layers.sincos_1d(d, np.arange(gt, dtype=np.float64)), self.dtype)
    if self.attention == "full":  # the 3-D table at the input
      pos = sincos_3d(d, gt, gh, gw)
    else:  # the spatial table; the temporal one before the first temporal block (Latte)
      pos = np.tile(layers.sincos_2d(d, gh, gw), (gt, 1))
    x_bld = layers.constrain(x + jnp.asarray(pos, self.dtype)[None],
                             ("batch", "length", "act_embed"))
    t_bd = layers.TimestepEmbedder(d, dtype=self.dtype, name="t_embedder")(t_b)
    y_bd, ctx, ctx_mask = dit.embed_condition(y_b, self.num_classes, d,
                                              self.text_conditioning, self.dtype)
    c_bd = t_bd + y_bd
    x_bld = self._blocks(x_bld, c_bd, grid, temporal, ctx, ctx_mask)
    out = dit.FinalLayer(patch, self.out_channels, dtype=self.dtype,
                         name="final_layer")(x_bld, c_bd)
    return unpatchify(out, grid, patch, self.out_channels).astype(jnp.float32)

  def _block(self, i: int, cross: bool):
    block = dit.DiTBlock
    if self.remat:  # `train` (argument 4, counting the module) stays a Python bool
      block = nn.remat(block, static_argnums=(4,) if cross else ())
    return block(self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype,
                 self.attn_impl, cross_attention=cross, name=f"blocks_{i}")

  def _blocks(self, x_bld, c_bd, grid, temporal, ctx_bld, ctx_mask_bl):
    cross = ctx_bld is not None
    if self.attention == "full":
      for i in range(self.depth):
        args = (None, False, None, ctx_bld, ctx_mask_bl) if cross else ()
        x_bld = self._block(i, cross)(x_bld, c_bd, *args)
      return x_bld
    b, d = x_bld.shape[0], self.hidden_size
    gt, gh, gw = grid
    s = gh * gw
    c_space = jnp.repeat(c_bd, gt, axis=0)  # one condition row per (video, frame)
    c_time = jnp.repeat(c_bd, s, axis=0)    # ... per (video, position)
    if cross:
      ctx_space = jnp.repeat(ctx_bld, gt, axis=0)
      mask_space = jnp.repeat(ctx_mask_bl, gt, axis=0)
    for i in range(self.depth):
      x = x_bld.reshape(b, gt, s, d)
      if i % 2 == 0:  # spatial: the tokens of one frame
        args = (None, False, None, ctx_space, mask_space) if cross else ()
        x = self._block(i, cross)(x.reshape(b * gt, s, d), c_space, *args)
        x = x.reshape(b, gt, s, d)
      else:           # temporal: the frames of one position
        if i == 1:
          x = x + temporal[None, :, None]
        x = jnp.swapaxes(x, 1, 2).reshape(b * s, gt, d)
        x = self._block(i, False)(x, c_time)
        x = jnp.swapaxes(x.reshape(b, s, gt, d), 1, 2)
      x_bld = layers.constrain(x.reshape(b, gt * s, d), ("batch", "length", "act_embed"))
    return x_bld


@registry.MODELS.register("video_dit")
def build_video_dit(cfg: ml_collections.ConfigDict, *, image_shape, num_classes: int,
                    dtype=jnp.float32) -> VideoDiT:
  """Builds a video DiT from ``config.model`` (``variant`` fills depth/width/heads/
  patch; explicit fields override it) for inputs of ``image_shape`` = (T, H, W, C)."""
  if len(image_shape) != 4:
    raise ValueError(f"The video DiT takes videos (T, H, W, C), got examples of shape "
                     f"{tuple(image_shape)}; use model.name='dit' for images, or a video "
                     "dataset (moving_fashion_mnist, or pp with as_video(frames)).")
  kw = video_dit_variant(cfg.variant) if cfg.variant else {}
  for key in ("depth", "hidden_size", "num_heads", "patch_size", "temporal_patch",
              "mlp_ratio", "learn_sigma", "remat", "attn_impl", "attention",
              "text_conditioning"):
    if cfg.get(key) is not None:
      kw[key] = cfg[key]
  t, h, w, c = image_shape
  model = VideoDiT(input_shape=(t, h, w), in_channels=c, num_classes=num_classes,
                   dtype=dtype, **kw)
  if model.attention not in ATTENTIONS:
    raise ValueError(f"config.model.attention={model.attention!r}; use one of "
                     f"{', '.join(ATTENTIONS)}.")
  model.grid  # pylint: disable=pointless-statement  # the patch divides the video
  if model.hidden_size % 4 or model.hidden_size % model.num_heads:
    raise ValueError(f"config.model.hidden_size={model.hidden_size} must be a multiple of "
                     f"4 (sin-cos positions) and of num_heads={model.num_heads}.")
  return model


registry.register_model_fields(["video_dit"], dict(
    attention="factorised",     # full (spacetime) | factorised (Latte: space / time blocks)
    temporal_patch=1,           # frames per spacetime patch (Latte: 1)
    learn_sigma=False,          # 2C outputs: the mean and the variance (diffusion)
    text_conditioning="none",   # none | cross_attention (text-to-video)
))
