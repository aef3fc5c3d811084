"""Raster-order autoregressive generation over a frozen VQ tokenizer's codes (the second
stage of VQGAN, Esser et al. 2021, and ViT-VQGAN, Yu et al. 2022), class-conditional.

Model: ``jaxgen.models.ar_transformer.ARTransformer`` (causal, class-prefix tokens with
a null class). Loss: teacher-forced next-token cross-entropy over all N positions
(optional label smoothing); label dropout to the null class trains the unconditional
model for classifier-free guidance.
Sampler: ``jaxgen.samplers.autoregressive.cached_step`` in the shared ``lax.scan``
loop, one token per step (N steps), the KV cache in the carry; temperature, top-k,
top-p, and CFG with the conditional and unconditional streams as one batch.
``sample_tokens_uncached`` recomputes the whole sequence at every step with the same
randomness: the reference for the equality test and the speed benchmark.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.losses import token as token_losses
from jaxgen.paradigms.tokens import TokenParadigm
from jaxgen.samplers import autoregressive as decoding
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import options as options_lib

@dataclasses.dataclass(frozen=True)
class AROptions(options_lib.Categorical, options_lib.Guided):
  """Raster decoding, one step per token (the grid fixes the count): each code drawn
  at ``temperature`` (0 = argmax) after top-k and top-p, guided on logits by
  ``cfg_scale``."""


@registry.PARADIGMS.register("autoregressive")
class AutoregressiveParadigm(TokenParadigm):
  """config.paradigm: label_smoothing, label_dropout. config.sample: `AROptions`
  (no ``steps``: decoding takes one step per token)."""

  Options = AROptions
  FIELDS = dict(
      label_smoothing=0.0,
      label_dropout=0.1,         # p(label -> null class): trains the unconditional model
  )

  def logits(self, params, codes, labels, train: bool = False, rng=None):
    """Teacher-forced (B, N, V) logits; entry i predicts code i from codes < i."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, codes, labels, train=train, rngs=rngs)

  def loss(self, params, batch, rng, train: bool = True):
    codes = self.codes(batch)
    r_drop, r_model = jax.random.split(rng)
    cond = self.conditioner.train_input(batch, r_drop, train)
    logits = self.logits(params, codes, cond, train, r_model)
    loss, acc = token_losses.masked_cross_entropy(
        logits, codes, jnp.ones(codes.shape, jnp.bool_), self.config.paradigm.label_smoothing)
    return loss, {"accuracy": acc}

  # -- sampling -----------------------------------------------------------------------
  def init_cache(self, params, cond, cfg_scale: float):
    """KV caches for the decoding batch (2B with guidance) with the prefix before its
    last token already in them; returns ``(cache, positions in it)``."""
    both = cfg_lib.with_null(cond, self.conditioner.null_input(), cfg_scale)
    b2 = cfg_lib.batch_size(both)
    cache = self.model.init_cache(b2)
    start = self.model.prefix_len - 1
    if start:
      _, cache = self.model.apply({"params": params}, jnp.zeros((b2, start), jnp.int32),
                                  both, cache, method="decode")
    return cache, start

  def sample_tokens(self, params, rng, labels, options=None, **overrides):
    """(B, N) codes, one per step with the KV cache."""
    o = self.sample_options(options, **overrides)
    cond = self.conditioner.sampling_input(labels)
    cache, start = self.init_cache(params, cond, o.cfg_scale)
    decode_fn = lambda t, y, c: self.model.apply({"params": params}, t, y, c,
                                                 method="decode_step")
    return decoding.decode_cached(decode_fn, cache, cond, rng, num_tokens=self.num_tokens,
                                  start=start, null=self.conditioner.null_input(),
                                  cfg_scale=o.cfg_scale, **o.sampling())

  def sample_tokens_prefix(self, params, rng, labels, options=None, **overrides):
    """The same draws as ``sample_tokens`` by recomputing the prefix and the codes so
    far at every step (no cache; each step as long as its prefix): the honest
    baseline of the KV cache."""
    o = self.sample_options(options, **overrides)
    k = self.model.prefix_len

    def prefix_logits(codes_bi, cond):
      b, i = codes_bi.shape
      inputs = jnp.concatenate([jnp.zeros((b, k), jnp.int32), codes_bi], axis=1)
      logits, _ = self.model.apply({"params": params}, inputs, cond,
                                   self.model.init_cache(b, k + i), method="decode")
      return logits[:, -1]

    return decoding.decode_prefix(prefix_logits, self.conditioner.sampling_input(labels),
                                  rng, num_tokens=self.num_tokens,
                                  null=self.conditioner.null_input(), cfg_scale=o.cfg_scale,
                                  **o.sampling())

  def sample_tokens_uncached(self, params, rng, labels, options=None, **overrides):
    """The same draws as ``sample_tokens`` by full recomputation at every step."""
    o = self.sample_options(options, **overrides)
    return decoding.decode_uncached(lambda t, y: self.logits(params, t, y),
                                    self.conditioner.sampling_input(labels), rng,
                                    num_tokens=self.num_tokens, null=self.conditioner.null_input(),
                                    cfg_scale=o.cfg_scale, **o.sampling())
