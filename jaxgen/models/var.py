"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., 2024), as a
Flax Linen module.

The sequence is the token pyramid of VAR's multi-scale residual quantizer: scales
``s_1 < ... < s_S`` with ``s_k * s_k`` tokens each, ``L = sum s_k^2`` positions in all.
Position block ``k`` holds the input that predicts scale ``k``'s tokens: for ``k = 1`` the
start token (class embedding + a learned start position), for ``k > 1`` the quantizer's
accumulated feature map after scale ``k - 1``, area-resized to ``s_k`` (``teacher forcing``;
`jaxgen.tokenizers.quantizers.MultiScaleResidualQuantizer.teacher_forcing_inputs`),
embedded by a linear map of its ``code_dim`` channels. Every position adds a level
embedding (its scale) and a learned absolute position; attention is block-causal (a
scale sees itself and every coarser scale, `block_causal_mask`); each block is adaLN
conditioned on the class embedding (`jaxgen.nn.layers.AdaLNBlock` with VAR's options:
q/v-only biases, l2-normalised q/k with a learned per-head scale, VAR's adaLN init,
stochastic depth), and an adaLN LayerNorm precedes the linear head over the codebook.
Label ``num_classes`` is the null class (classifier-free guidance).

Text-to-image (``text_length`` > 0, as in Infinity, the text-conditioned VAR): the
condition is the text dict of `jaxgen.conditioning`; the pooled text, projected by an MLP,
takes the class embedding's place (adaLN condition and start token), and every block
cross-attends to the projected encoder tokens (`layers.AdaLNBlock(cross_attention=
True)`, padding masked). The null text "" is the unconditional input.

Cached decoding (`decode`): scale ``k``'s ``s_k^2`` inputs go through the blocks at
once, attending to each other and to the KV cache of the coarser scales; the cache is a
plain pytree (``jaxgen.nn.layers.init_kv_cache``) passed in and out.

Named sizes ``d16 / d20 / d24 / d30``: VAR's ``build_vae_var`` rule (width ``64 d``,
``d`` heads, MLP ratio 4, drop-path ``0.1 d / 24``); with VAR's 10 scales (1..16) and 4096
codes of 32 channels they have 310.3M / 600.9M / 1.03B / 2.01B parameters, the paper's
310M / 600M / 1.0B / 2.0B (tests/test_var.py).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import registry
from jaxgen.nn import layers

# depth, hidden_size, num_heads, drop_path_rate
SIZES = {
    **{f"d{d}": (d, 64 * d, d, 0.1 * d / 24) for d in (16, 20, 24, 30)},
    "fmnist_tiny": (4, 128, 4, 0.0),
    "fmnist_small": (6, 256, 8, 0.0),
}
registry.register_variants(["var"], SIZES)


def scale_offsets(scales: Sequence[int]) -> Tuple[int, ...]:
  """Start position of each scale's block in the flattened pyramid (and the total L)."""
  return tuple(int(x) for x in np.cumsum([0] + [s * s for s in scales]))


def level_ids(scales: Sequence[int]) -> np.ndarray:
  """(L,) scale index of every position."""
  return np.concatenate([np.full(s * s, k, np.int32) for k, s in enumerate(scales)])


def block_causal_mask(scales: Sequence[int]) -> jax.Array:
  """(1, 1, L, L) boolean: position i attends to j iff scale(j) <= scale(i)."""
  lvl = level_ids(scales)
  return jnp.asarray(lvl[:, None] >= lvl[None, :])[None, None]


def _trunc_normal(std: float):
  return nn.initializers.truncated_normal(std)


class VARTransformer(nn.Module):
  """See the module docstring. ``scales``: side of each scale's square token map."""
  scales: Tuple[int, ...]
  codebook_size: int
  code_dim: int
  num_classes: int
  hidden_size: int = 1024
  depth: int = 16
  num_heads: int = 16
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  attn_l2_norm: bool = True
  attn_impl: str = "xla"
  text_length: int = 0
  dtype: jnp.dtype = jnp.float32

  @property
  def seq_len(self) -> int:
    return scale_offsets(self.scales)[-1]

  @property
  def first_len(self) -> int:
    return self.scales[0] ** 2

  def setup(self):
    c = self.hidden_size
    std = math.sqrt(1.0 / (3 * c))   # VAR's automatic init_std
    init = nn.with_logical_partitioning(_trunc_normal(std), ("vocab", "embed"))
    self.word_embed = layers.Dense(c, ("freq", "embed"), kernel_init=_trunc_normal(std),
                                   dtype=self.dtype)
    if self.text_length:
      self.pooled_projection = layers.Mlp(c, c, dtype=self.dtype)
      self.text_projection = layers.Mlp(c, c, dtype=self.dtype)
    else:
      self.class_embedding = layers.LabelEmbedder(self.num_classes, c, init_std=std)
    self.start_position = self.param("start_position", init, (self.first_len, c))
    self.position_embedding = self.param("position_embedding", init, (self.seq_len, c))
    self.level_embedding = self.param("level_embedding", init, (len(self.scales), c))
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    self.blocks = [
        layers.AdaLNBlock(c, self.num_heads, self.mlp_ratio, self.dtype, self.attn_impl,
                          modulation_init="var", k_bias=False, qk_l2_norm=self.attn_l2_norm,
                          cache_causal=False, drop_path=float(rates[i]),
                          cross_attention=self.text_length > 0, name=f"block_{i}")
        for i in range(self.depth)]
    self.head_modulation = layers.Dense(
        2 * c, ("embed", "mlp"), kernel_init=lambda k, s, d=jnp.float32: 0.5 * _trunc_normal(
            std)(k, s, d), dtype=self.dtype)
    self.head_norm = layers.LayerNorm(affine=False)
    self.head = layers.Dense(
        self.codebook_size, ("embed", "vocab"),
        kernel_init=lambda k, s, d=jnp.float32: 0.02 * _trunc_normal(std)(k, s, d),
        dtype=self.dtype)

  # -- pieces shared by the full and the cached forward ---------------------------------
  def _start(self, labels_b):
    """The condition vector (B, C), the start block's inputs (B, s_1^2, C) and the
    cross-attention context: ``{}`` for class labels, else ``context_bld`` (the projected
    text tokens) and ``context_mask_bl``."""
    if self.text_length:
      ctx, ctx_mask = layers.condition_prefix(labels_b, text_projection=self.text_projection,
                                              text_length=self.text_length)
      cond = self.pooled_projection(labels_b["text_pooled"].astype(self.dtype))
      context = {"context_bld": ctx, "context_mask_bl": ctx_mask}
    else:
      cond = layers.condition_prefix(labels_b, class_embedding=self.class_embedding)[0][:, 0]
      context = {}
    return cond, cond[:, None] + self.start_position[None], context

  def _position(self, begin: int, length: int):
    lvl = jnp.asarray(level_ids(self.scales)[begin:begin + length])
    return (jnp.take(self.level_embedding, lvl, axis=0)
            + self.position_embedding[begin:begin + length])[None]

  def _logits(self, x_blc, cond_bc):
    shift, scale = jnp.split(self.head_modulation(nn.silu(cond_bc)), 2, axis=-1)
    x = layers.modulate(self.head_norm(x_blc), shift, scale)
    return self.head(x).astype(jnp.float32)

  def flatten_inputs(self, inputs) -> jax.Array:
    """Teacher-forcing maps (a list of S - 1 (B, s, s, code_dim) arrays, scales 2..S)
    -> (B, L - s_1^2, code_dim); an array already in that shape passes through."""
    if isinstance(inputs, (list, tuple)):
      if len(inputs) != len(self.scales) - 1:
        raise ValueError(f"{len(inputs)} teacher-forcing maps for {len(self.scales)} "
                         "scales; VAR takes one per scale after the first.")
      inputs = jnp.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in inputs], 1)
    want = (self.seq_len - self.first_len, self.code_dim)
    if tuple(inputs.shape[1:]) != want:
      raise ValueError(f"VAR: teacher-forcing inputs of shape {tuple(inputs.shape)}; scales "
                       f"{tuple(self.scales)} with code_dim {self.code_dim} need (B, {want[0]}, "
                       f"{want[1]}).")
    return inputs

  # -- training ------------------------------------------------------------------------
  def __call__(self, inputs, labels_b, train: bool = False):
    """Logits (B, L, codebook_size) of every scale's tokens from the teacher-forcing
    inputs (see `flatten_inputs`), block-causally."""
    return self._forward(self.flatten_inputs(inputs), labels_b, len(self.scales), train)

  def prefix_logits(self, inputs_blc, labels_b, num_scales: int):
    """Logits of the first ``num_scales`` scales from their inputs alone: ``inputs_blc``
    (B, offset(num_scales) - s_1^2, code_dim) are the teacher-forcing inputs of scales
    2..num_scales. The block-causal model on that prefix gives the same logits as the
    full pyramid (a scale sees only coarser ones): the honest uncached baseline of
    `decode`, which recomputes only what has been decoded."""
    if not 1 <= num_scales <= len(self.scales):
      raise ValueError(f"num_scales={num_scales} for {len(self.scales)} scales.")
    want = (scale_offsets(self.scales)[num_scales] - self.first_len, self.code_dim)
    if tuple(inputs_blc.shape[1:]) != want:
      raise ValueError(f"VAR prefix of {num_scales} scales takes (B, {want[0]}, {want[1]}) "
                       f"inputs, got {tuple(inputs_blc.shape)}.")
    return self._forward(inputs_blc, labels_b, num_scales, False)

  def _forward(self, inputs_blc, labels_b, num_scales: int, train: bool):
    length = scale_offsets(self.scales)[num_scales]
    cond, start, context = self._start(labels_b)
    words = self.word_embed(inputs_blc.astype(self.dtype))
    x = jnp.concatenate([start.astype(self.dtype), words], axis=1)
    x = layers.constrain((x + self._position(0, length)).astype(self.dtype),
                         ("batch", "length", "act_embed"))
    mask = block_causal_mask(self.scales[:num_scales])  # the full mask's top-left block
    cond = cond.astype(self.dtype)
    for block in self.blocks:
      x = block(x, cond, mask, train, **context)
    return self._logits(x, cond)

  # -- cached decoding -----------------------------------------------------------------
  def init_cache(self, batch: int, max_len: int = 0):
    """Empty KV caches (one per block) for ``max_len`` positions (default all ``L``)."""
    max_len = max_len or self.seq_len
    if max_len > self.seq_len:
      raise ValueError(f"A KV cache of {max_len} positions is longer than VAR's {self.seq_len} "
                       f"(scales {tuple(self.scales)}).")
    head_dim = self.hidden_size // self.num_heads
    return tuple(layers.init_kv_cache(batch, max_len, self.num_heads, head_dim, self.dtype)
                 for _ in range(self.depth))

  def decode(self, inputs_blc, labels_b, cache, scale_index: int):
    """Scale ``scale_index`` (a Python int) through the blocks with the KV cache of the
    coarser ones: ``inputs_blc`` (B, s^2, code_dim) is its teacher-forcing / sampled input
    (ignored for the first scale, whose input is the start token). Returns logits
    (B, s^2, codebook_size) and the new cache."""
    if not 0 <= scale_index < len(self.scales):
      raise ValueError(f"scale_index={scale_index} for {len(self.scales)} scales.")
    begin = scale_offsets(self.scales)[scale_index]
    length = self.scales[scale_index] ** 2
    layers.check_cache_room(begin, length, layers.kv_cache_length(cache))
    cond, start, context = self._start(labels_b)
    if scale_index == 0:
      x = start
    else:
      if inputs_blc.shape[1:] != (length, self.code_dim):
        raise ValueError(f"VAR scale {scale_index} takes ({length}, {self.code_dim}) inputs "
                         f"per example, got {tuple(inputs_blc.shape[1:])}.")
      x = self.word_embed(inputs_blc.astype(self.dtype))
    x = (x + self._position(begin, length)).astype(self.dtype)
    cond = cond.astype(self.dtype)
    new_cache = []
    for block, c in zip(self.blocks, cache):
      x, c = block(x, cond, None, False, c, **context)
      new_cache.append(c)
    return self._logits(x, cond), tuple(new_cache)


@registry.MODELS.register("var")
def build_var(cfg: ml_collections.ConfigDict, *, num_tokens: int, codebook_size: int,
              num_classes: int, dtype=jnp.float32, text_length: int = 0) -> VARTransformer:
  """From ``config.model``: ``variant`` (a SIZES name) fills depth / width / heads /
  drop-path; explicit fields override; ``scales`` and ``code_dim`` must be the
  tokenizer's. ``text_length`` > 0: text-conditioned (cross-attention + pooled adaLN)."""
  from jaxgen.models import token_transformer  # pylint: disable=g-import-not-at-top
  kw = token_transformer.sized_kwargs(
      cfg, SIZES, ("depth", "hidden_size", "num_heads", "drop_path_rate"),
      ("mlp_ratio", "attn_l2_norm", "attn_impl"), "VAR")
  scales = tuple(int(s) for s in cfg.scales)
  if num_tokens != sum(s * s for s in scales):
    raise ValueError(f"VAR: {num_tokens} tokens per example, scales {scales} have "
                     f"{sum(s * s for s in scales)}.")
  return VARTransformer(scales=scales, codebook_size=codebook_size, code_dim=int(cfg.code_dim),
                        num_classes=num_classes, dtype=dtype, text_length=text_length, **kw)
