"""What every paradigm over a frozen tokenizer's codes shares (MaskGIT, MAGE, and the
autoregressive ones): where the codes come from, the checks that they fit the model,
and decoding generated codes back to images.

Codes come from pre-computed files (``config.data.name="tokens"``, written once by
``jaxgen tokenize``; the fast path) or from images encoded inside the train step by
the tokenizer of ``config.tokenizer.workdir``. Either way the model sees a flattened
(B, N) int32 grid. The tokenizer is needed to turn sampled codes into images; with
pre-computed codes it defaults to the run that wrote them (``tokens.json``).

A tokenizer or code files whose grid or vocabulary differ from ``config.model.grid_size``
/ ``config.model.codebook_size``, or codes written by another tokenizer than the
configured one, are refused before anything compiles, with both values in the message.

Videos: a causal video tokenizer's codes are (T', h, w) grids ("vq" or "lfq"; LFQ's
vocabulary is 2^d), set as a 3-axis ``config.model.grid_size``. The models see them
flattened t-major (frame by frame, each in raster order), so MaskGIT decoding and raster
AR run unchanged on the flattened sequence; the models embed the positions factorised
over space and time (``config.model.video_positions``), and sampled codes decode through
the frozen tokenizer to (B, T, H, W, C) videos. Given first frames (frame prediction,
image-to-video): `TokenParadigm.sample_from_frames` encodes them (a causal tokenizer
encodes the first 1 + k ft frames alone as the first 1 + k latent frames of the clip)
and the masked paradigms decode the rest with those codes known from the start
(MaskGIT's inpainting), with the same guidance.

Text-to-image (``config.text.encoder`` set): the models take the text condition dict
(`jaxgen.conditioning`) instead of labels, built with ``text_length`` (prefix tokens for
MaskGIT / MAGE / raster AR, cross-attention for VAR); CFG runs against the null text.
Such runs train on captioned images encoded in the step (``config.tokenizer.workdir``),
since pre-computed code files carry no captions.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import jax
import jax.numpy as jnp

from jaxgen import conditioning, registry
from jaxgen.config import ConfigError
from jaxgen.losses import token as token_losses
from jaxgen.models import token_transformer
from jaxgen.paradigms.base import Paradigm, building_shapes_only
from jaxgen.tokenizers import base as tok_base
from jaxgen.tokenizers.base import (  # noqa: F401  (shared with the latent denoisers)
    image_data_config, tokenizer_workdir, tokens_meta)


def _as_grid(grid):
  """A grid (h, w) or a list of scale grids [(s, s), ...] as nested tuples."""
  return tuple(_as_grid(g) if isinstance(g, (list, tuple)) else int(g) for g in grid)


def check_codes(where: str, grid, vocab, want_grid, config, grid_field: str = "grid_size"
                ) -> None:
  """Raises unless a tokenizer's (or code files') grid and vocabulary equal the model's
  (``want_grid``, set by ``config.model.<grid_field>``, and ``codebook_size``)."""
  want_vocab = int(config.model.codebook_size)
  if _as_grid(grid) != _as_grid(want_grid) or int(vocab) != want_vocab:
    axes = ""
    if is_video_grid(grid) != is_video_grid(want_grid):
      axes = (" A video tokenizer's codes are (T', h, w) grids: set a 3-axis "
              f"config.model.{grid_field}=(T', h, w) for them, (h, w) for an image's.")
    raise ConfigError(
        f"{where} has a {_as_grid(grid)} grid of {vocab} codes, but config.model."
        f"{grid_field}={config.model[grid_field]} ({_as_grid(want_grid)}) and "
        f"config.model.codebook_size={want_vocab}. Point the config at a matching tokenizer, "
        "or set both model fields to the tokenizer's values." + axes)


def is_video_grid(grid) -> bool:
  """Whether ``grid`` is a video's (T', h, w) code grid (three integers)."""
  grid = _as_grid(grid)
  return len(grid) == 3 and all(isinstance(g, int) for g in grid)


class TokenParadigm(Paradigm):
  """Base of the token paradigms: builds ``config.model`` (any registered token model
  taking ``num_tokens, codebook_size, num_classes``, and ``grid_shape`` for video
  grids); a subclass implements ``loss`` and ``sample_tokens``. ``tokenizer_kinds`` are
  the bottlenecks it takes ("vq" or "lfq": a single grid, ``config.model.grid_size``,
  (h, w) or a video's (T', h, w); VAR overrides them with "msvq" and its scales).
  ``decodes_given_tokens``: its ``sample_tokens`` takes ``known`` codes (inpainting,
  `sample_from_frames`)."""

  supports_text = True
  tokenizer_kinds = ("vq", "lfq")
  grid_field = "grid_size"
  decodes_given_tokens = False

  @classmethod
  def expected_grid(cls, config):
    """The code grid ``config.model`` describes (what the tokenizer must produce)."""
    return tuple(config.model.grid_size)

  @staticmethod
  def tokens_per_grid(grid) -> int:
    return math.prod(grid)

  @classmethod
  def load_frozen(cls, config):
    """The frozen tokenizer that encodes the images in the step or decodes samples
    (none in `shapes_only` mode: ``jaxgen info`` reads the grid and vocabulary of
    ``config.model``)."""
    workdir = tokenizer_workdir(config, required=False)  # the data reports missing codes
    if not workdir:
      if config.data.name != "tokens":
        raise ConfigError(f"The {config.paradigm.name!r} paradigm trains on a tokenizer's "
                          "codes: set config.tokenizer.workdir=TOKENIZER_RUN, or train on "
                          "codes from `jaxgen tokenize` with config.data.name=tokens.")
      return {}
    if building_shapes_only():
      return {}
    return {"tokenizer": tok_base.load_frozen_tokenizer(
        config, workdir, cls.tokenizer_kinds, f"the {config.paradigm.name!r} paradigm")}

  def __init__(self, config, dataset, tokenizer=None, **frozen):
    super().__init__(config, dataset, **frozen)
    m = config.model
    self.grid_shape = self.expected_grid(config)
    self.num_tokens = self.tokens_per_grid(self.grid_shape)
    self.codebook_size = int(m.codebook_size)
    self.mask_id = self.codebook_size
    self.is_video = is_video_grid(self.grid_shape)
    self.tokenizer = tokenizer
    if tokenizer is not None:
      check_codes(f"The tokenizer {tokenizer.workdir}", tokenizer.grid_shape,
                  tokenizer.vocab_size, self.grid_shape, config, self.grid_field)
      self.image_shape = tokenizer.image_shape
    self.on_codes = config.data.name == "tokens"
    self.model = registry.MODELS.get(m.name)(
        m, num_tokens=self.num_tokens, codebook_size=self.codebook_size,
        num_classes=self.num_classes, dtype=self.compute_dtype,
        **({"text_length": self.conditioner.text_length} if self.conditioner.text_length else {}),
        **({"grid_shape": self.grid_shape} if self.is_video else {}))

  def init_params(self, rng):
    return self.model.init(rng, *self._dummy_inputs())["params"]

  @classmethod
  def validate_config(cls, config) -> None:
    if "tokenizer" not in config:
      raise ConfigError("Token paradigms need a config.tokenizer section "
                        "(see configs/common.py: token_config).")
    for f in (cls.grid_field, "codebook_size"):
      if config.model.get(f) is None:
        raise ConfigError(f"config.model.{f} is not set: it must equal the tokenizer's.")
    if cls.grid_field == "grid_size" and len(config.model.grid_size) not in (2, 3):
      raise ConfigError(f"config.model.grid_size={tuple(config.model.grid_size)} must be "
                        "an image's code grid (h, w) or a video's (T', h, w).")
    positions = config.model.get("video_positions")
    if positions is not None and positions not in token_transformer.VIDEO_POSITIONS:
      raise ConfigError(f"config.model.video_positions={positions!r}; use one of "
                        f"{', '.join(token_transformer.VIDEO_POSITIONS)}.")
    meta = tokens_meta(config, required=False)  # no codes yet: the dataset says so
    if meta is not None:
      tok_base.check_kind(meta["kind"], f"config.data.data_dir={config.data.data_dir}",
                          cls.tokenizer_kinds, f"the {config.paradigm.name!r} paradigm")
      check_codes(f"config.data.data_dir={config.data.data_dir}", meta["grid_shape"],
                  meta["vocab_size"], cls.expected_grid(config), config, cls.grid_field)
    tokenizer_workdir(config, required=False)  # same tokenizer for codes and decoding
    if conditioning.uses_text(config) and config.data.name == "tokens":
      raise ConfigError("config.text.encoder is set but config.data.name='tokens': code "
                        "files carry no captions. Train a text-to-image token model on a "
                        "captioned image dataset (e.g. fashion_mnist_captions) with "
                        "config.tokenizer.workdir set; the step encodes the images.")
    p = config.paradigm
    for f in ("label_dropout", "label_smoothing"):
      if not 0.0 <= p[f] < 1.0:
        raise ConfigError(f"config.paradigm.{f}={p[f]} must be in [0, 1).")

  # -- data -------------------------------------------------------------------------
  def example_batch(self, batch_size: int):
    if self.on_codes:
      shape = (self.num_tokens,) if "msvq" in self.tokenizer_kinds else self.grid_shape
      return {"codes": jax.ShapeDtypeStruct((batch_size,) + shape, jnp.int32),
              "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
              **self.conditioner.batch_fields(batch_size)}
    return super().example_batch(batch_size)

  def codes(self, batch) -> jax.Array:
    """The batch's flattened (B, N) codes (encoding images with the tokenizer if needed)."""
    if "codes" in batch:
      c = batch["codes"]
    else:
      c = jax.lax.stop_gradient(self.tokenizer.encode_fn(self.tokenizer.variables,
                                                          batch["image"]))
    if isinstance(c, (list, tuple)):  # multi-scale: VAR's flattened order, coarse first
      c = jnp.concatenate([x.reshape(x.shape[0], -1) for x in c], axis=1)
    return c.reshape(c.shape[0], -1).astype(jnp.int32)

  # -- sampling -----------------------------------------------------------------------
  def decode_images(self, tokens_bn) -> jax.Array:
    """Images (B, H, W, C), or videos (B, T, H, W, C) of a video grid, in [-1, 1] from
    (B, N) codes, through the frozen tokenizer."""
    if self.tokenizer is None:  # e.g. a converted run given no --tokenizer
      grid = "x".join(map(str, self.grid_shape))
      raise ConfigError(f"No tokenizer to decode codes into images: set "
                        f"config.tokenizer.workdir to the VQ tokenizer run of this "
                        f"model's codes ({grid} codes of a {self.codebook_size}-entry "
                        "codebook), e.g. --config.tokenizer.workdir=VQ_RUN (or sample "
                        "codes with sample_tokens).")
    codes = tokens_bn.reshape((-1,) + self.grid_shape)
    return self.tokenizer.decode_fn(self.tokenizer.variables, codes)

  def sample_tokens(self, params, rng, labels, options=None, **overrides) -> jax.Array:
    """(B, N) codes for ``labels`` (class labels, or a text run's condition: see
    `conditioner.sampling_input`) with ``sample_options(options, **overrides)``. Where
    ``decodes_given_tokens``, also ``known=`` (B, N) codes, ``mask_id`` where unknown:
    the known ones are kept and the others decoded."""
    raise NotImplementedError

  def sample(self, params, rng, labels, options=None, **overrides):
    return self.decode_images(self.sample_tokens(params, rng, labels, options, **overrides))

  def known_from_frames(self, frames) -> jax.Array:
    """The (B, N) codes of a video grid known from its first frames: ``frames`` (B, F,
    H, W, C) in [-1, 1] encoded by the frozen causal tokenizer (F = 1 + k ft frames,
    whose codes are the clip's first 1 + k latent frames, since the tokenizer is
    causal), ``mask_id`` at every later position."""
    if not self.is_video or self.tokenizer is None:
      raise ValueError(f"Given first frames need a video grid and its tokenizer; the "
                       f"{self.name!r} run has a {self.grid_shape} grid"
                       + ("" if self.tokenizer is not None else " and no tokenizer") + ".")
    codes = self.tokenizer.encode_fn(self.tokenizer.variables, frames)
    if codes.ndim != 4 or codes.shape[2:] != self.grid_shape[1:] \
        or codes.shape[1] >= self.grid_shape[0]:
      raise ValueError(f"{frames.shape[1]} given frames encode to a {codes.shape[1:]} "
                       f"grid; the run's is {self.grid_shape}: give fewer frames than "
                       "the clip, a number the tokenizer encodes alone (1 + k ft).")
    b = codes.shape[0]
    flat = codes.reshape(b, -1).astype(jnp.int32)
    rest = jnp.full((b, self.num_tokens - flat.shape[1]), self.mask_id, jnp.int32)
    return jnp.concatenate([flat, rest], axis=1)

  def given_frames(self) -> int:
    """1 (image-to-video: the first frame alone makes the first latent frame of a causal
    tokenizer) for a masked paradigm on a video grid; 0 otherwise. Any 1 + k ft < T
    frames can be given to `sample_from_frames`."""
    return int(self.decodes_given_tokens and self.is_video and self.tokenizer is not None)

  def sample_from_frames(self, params, rng, labels, frames, options=None, **overrides):
    """Videos (B, T, H, W, C) that continue the given first ``frames`` (B, F, H, W, C)
    in [-1, 1] (frame prediction; F = 1: image-to-video): their codes are known from
    the start of decoding (`known_from_frames`), the rest is sampled for ``labels`` as
    `sample` does (guidance included). Paradigms that decode given tokens only."""
    if not self.decodes_given_tokens:
      raise ValueError(f"The {self.name!r} paradigm cannot decode from given tokens "
                       "(first frames need a masked paradigm: maskgit or mage).")
    known = self.known_from_frames(frames)
    return self.decode_images(self.sample_tokens(params, rng, labels, options,
                                                 known=known, **overrides))

  def masked_token_loss(self, logits, codes, mask) -> tuple:
    loss, acc = token_losses.masked_cross_entropy(
        logits, codes, mask, self.config.paradigm.label_smoothing)
    return loss, {"masked_accuracy": acc}

  def model_summary(self) -> Dict[str, Any]:
    return dict(module=self.model, inputs=self._dummy_inputs(), fixed_params=0)

  def _dummy_inputs(self, batch: int = 1):
    return (jnp.zeros((batch, self.num_tokens), jnp.int32),
            self.conditioner.model_input(self.conditioner.dummy(batch)))
