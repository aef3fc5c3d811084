"""2D -> 3D inflation: a causal video tokenizer initialised from a trained image one.

MAGVIT (Yu et al. 2022, Sec. 3.1) initialises its 3D-conv VQGAN from a trained 2D VQGAN
by inflating each k x k kernel to kt x k x k. Here the 2D kernel goes to the *last*
time tap (the one that reads the current frame in a causal convolution, see
``nets.ConvND``) and the other taps are zero, so every inflated convolution is the 2D
one applied to each frame: a one-frame video goes through the 3D nets exactly as the
image goes through the 2D nets, and so does every frame of a still video (the
temporal-downsampling conv reads the newest frame of its window; the decoder's
depth-to-time conv gets the 2D kernel and bias in both of its output blocks, so both
frames it makes are the 2D output). Norms, attention and 1x1 convs are copied (they
have the same shapes: GroupNorm and attention act per frame in the causal nets).

The 2D nets need the 3D nets' sizes with ``arch="conv"`` (`image_fields`).
`inflate_run` reads a trained 2D tokenizer run and inflates its encoder and decoder
(``config.model.inflate_from`` of the tokenizer paradigm).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from flax import traverse_util
import flax.linen as nn
import numpy as np

from jaxgen.tokenizers import nets

_VIDEO_ONLY = ("temporal_downsample", "temporal_padding")
# The fields that fix the parameters' shapes (besides the image channels and double_z).
_SHAPE_FIELDS = ("channels", "channel_mult", "num_res_blocks", "attn_resolutions",
                 "resolution", "mid_attn", "z_channels", "layout")
_NET_DEFAULTS = dict(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                     attn_resolutions=(16,), resolution=0, mid_attn=True,
                     layout="taming")  # ConvEncoder's


def image_fields(variant) -> Dict[str, Any]:
  """The fields of the 2D conv autoencoder whose parameters inflate to ``variant`` (a
  "causal3d" named size or dict): the same sizes with ``arch="conv"``."""
  kw = nets.autoencoder_variant(variant) if isinstance(variant, str) else dict(variant)
  if kw.get("arch") != "causal3d":
    raise ValueError(f"image_fields: {variant!r} is not a 'causal3d' autoencoder size")
  return dict({k: v for k, v in kw.items() if k not in _VIDEO_ONLY}, arch="conv")


def inflate_leaf(value, shape: Tuple[int, ...], path: str = "") -> np.ndarray:
  """One 2D parameter -> the 3D parameter of ``shape``.

  Same shape: copied. A conv kernel (kh, kw, cin, cout) -> (kt, kh, kw, cin, r cout):
  zeros, with the kernel at time tap kt - 1, repeated r times along the output channels
  (r = 2 for a depth-to-time conv, 1 otherwise). A bias (cout,) -> (r cout,): repeated.
  """
  value = np.asarray(value)
  shape = tuple(shape)
  if value.shape == shape:
    return value
  r = shape[-1] // max(value.shape[-1], 1)
  if r * value.shape[-1] == shape[-1]:
    if value.ndim == 1 and len(shape) == 1:
      return np.tile(value, r)
    if len(shape) == value.ndim + 1 and shape[1:-1] == value.shape[:-1]:
      out = np.zeros(shape, value.dtype)
      out[-1] = np.tile(value, (1,) * (value.ndim - 1) + (r,))
      return out
  raise ValueError(f"cannot inflate {path or 'a parameter'}: 2D shape {value.shape} -> "
                   f"3D shape {shape}")


def inflate_params(params_2d, params_3d):
  """The 3D nets' parameters from the 2D nets' (see the module docstring).

  Args:
    params_2d: Parameters (or whole variables) of a `ConvEncoder` or `ConvDecoder`.
    params_3d: The matching `CausalConvEncoder3D` / `CausalConvDecoder3D` tree of the
      same sizes: initialised parameters or only their shapes (``jax.eval_shape`` of
      the init); it gives the structure and the target shapes.

  Returns:
    A tree with the structure of ``params_3d`` (unboxed: no logical-axis boxes) of
    host NumPy arrays: inflate on the host, then place the result on the mesh.

  Raises:
    ValueError: when the trees have different parameters or a shape cannot inflate.
  """
  flat2 = traverse_util.flatten_dict(nn.meta.unbox(params_2d))
  flat3 = traverse_util.flatten_dict(nn.meta.unbox(params_3d))
  if set(flat2) != set(flat3):
    only2 = sorted("/".join(k) for k in set(flat2) - set(flat3))
    only3 = sorted("/".join(k) for k in set(flat3) - set(flat2))
    raise ValueError(f"inflate_params: the 2D and 3D nets differ; only in 2D: "
                     f"{only2[:6]}, only in 3D: {only3[:6]} (same sizes needed: "
                     f"see image_fields)")
  return traverse_util.unflatten_dict({
      k: inflate_leaf(flat2[k], flat3[k].shape, "/".join(k)) for k in flat3})


def size_mismatches(sizes_2d, double_z_2d: bool, channels_2d: int, sizes_3d,
                    double_z_3d: bool, channels_3d: int) -> Dict[str, Tuple[Any, Any]]:
  """``{field: (2D value, 3D value)}`` of the size fields in which a 2D conv tokenizer
  and a causal 3D one differ (empty: the 2D parameters inflate to the 3D ones)."""
  def norm(kw, double_z, channels):
    kw = dict(_NET_DEFAULTS, **kw)
    out = {k: tuple(kw[k]) if isinstance(kw.get(k), (list, tuple)) else kw.get(k)
           for k in _SHAPE_FIELDS}
    return dict(out, arch=kw.get("arch", "conv"), double_z=bool(double_z),
                image_channels=int(channels))
  a = norm(sizes_2d, double_z_2d, channels_2d)
  b = norm(image_fields(sizes_3d), double_z_3d, channels_3d)
  return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def inflate_run(workdir: str, params_3d, sizes_3d, image_channels: int):
  """The causal 3D encoder and decoder parameters inflated from the tokenizer run at
  ``workdir`` (its newest intact checkpoint's trained weights).

  Args:
    workdir: a trained 2D conv tokenizer run (any bottleneck).
    params_3d: ``{"encoder": ..., "decoder": ...}`` of the 3D autoencoder: arrays or
      shapes, the structure and target shapes.
    sizes_3d: the 3D nets' size fields (a "causal3d" dict; ``double_z`` for a KL-VAE).
    image_channels: the 3D tokenizer's video channels.

  Returns:
    ``{"encoder": ..., "decoder": ...}`` of host float32 NumPy arrays.

  Raises:
    ConfigError: the run is not a 2D conv tokenizer of the same sizes (the message
      lists the fields that differ).
  """
  from jaxgen.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxgen.tokenizers import base, models  # pylint: disable=g-import-not-at-top
  tok = base.Tokenizer.from_workdir(workdir)
  m = tok.config.model
  sizes_2d = models.network_sizes(m)
  diff = size_mismatches(sizes_2d, m.bottleneck == "kl", tok.image_shape[-1], sizes_3d,
                         bool(sizes_3d.get("double_z")), image_channels)
  if diff:
    listed = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in
                       ((k, *v) for k, v in sorted(diff.items())))
    raise ConfigError(
        f"config.model.inflate_from={workdir}: its nets do not inflate to this "
        f"tokenizer's ({listed}). Inflation needs a 2D conv tokenizer of the same sizes "
        "(see inflation.image_fields), with a KL bottleneck for a KL-VAE and a quantizer "
        "for a quantizer; train one or change config.model.")
  params_2d = nn.meta.unbox(tok.params)
  try:
    return {k: _as_float32(inflate_params(params_2d[k], params_3d[k]))
            for k in ("encoder", "decoder")}
  except ValueError as e:
    raise ConfigError(f"config.model.inflate_from={workdir}: {e}") from None


def _as_float32(tree):
  """Every leaf of ``tree`` as a float32 host array."""
  return {k: _as_float32(v) if isinstance(v, dict) else np.asarray(v, np.float32)
          for k, v in tree.items()}
