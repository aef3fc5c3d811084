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

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import token as token_losses
from jaxgen.paradigms.tokens import TokenParadigm
from jaxgen.samplers import autoregressive as decoding
from jaxgen.samplers import cfg as cfg_lib

SAMPLE_FIELDS = ("temperature", "top_k", "top_p", "cfg_scale")


def check_sampling_config(s, takes: str) -> None:
  """``config.sample`` checks shared by the sequential decoders (raster AR, VAR), whose
  step count the model fixes (``takes``: e.g. "one step per token")."""
  if "steps" in s:
    raise ConfigError(f"config.sample.steps={s.steps}: this paradigm takes {takes}; "
                      "remove the field.")
  if s.temperature < 0:
    raise ConfigError(f"config.sample.temperature={s.temperature} must be >= 0.")
  if s.top_k < 0:
    raise ConfigError(f"config.sample.top_k={s.top_k} must be >= 0 (0 = off).")
  if not 0.0 < s.top_p <= 1.0:
    raise ConfigError(f"config.sample.top_p={s.top_p} must be in (0, 1] (1 = off).")


def sampling_options(kwargs, sample_cfg, fields, num_steps: int, takes: str) -> dict:
  """Sampling keyword arguments over ``config.sample`` defaults; ``steps`` may only
  repeat the fixed count."""
  steps = kwargs.pop("steps", None)
  if steps is not None and steps != num_steps:
    raise ValueError(f"steps={steps}: this paradigm takes {takes} ({num_steps} here).")
  unknown = set(kwargs) - set(fields)
  if unknown:
    raise TypeError(f"Unknown sampling option(s) {sorted(unknown)}; use {', '.join(fields)}.")
  return {f: kwargs[f] if kwargs.get(f) is not None else sample_cfg[f] for f in fields}


@registry.PARADIGMS.register("autoregressive")
class Autoregressive(TokenParadigm):
  """config.paradigm: label_smoothing, label_dropout. config.sample: temperature,
  top_k, top_p, cfg_scale (no ``steps``: decoding takes one step per token)."""

  @classmethod
  def validate_config(cls, config) -> None:
    check_sampling_config(config.sample, "one step per token (the grid fixes the count)")
    super().validate_config(config)

  def logits(self, params, codes, labels, train: bool = False, rng=None):
    """Teacher-forced (B, N, V) logits; entry i predicts code i from codes < i."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, codes, labels, train=train, rngs=rngs)

  def loss(self, params, batch, rng, train: bool = True):
    codes = self.codes(batch)
    r_drop, r_model = jax.random.split(rng)
    cond = self.condition(batch, r_drop, train)
    logits = self.logits(params, codes, cond, train, r_model)
    loss, acc = token_losses.masked_cross_entropy(
        logits, codes, jnp.ones(codes.shape, jnp.bool_), self.config.paradigm.label_smoothing)
    return loss, {"accuracy": acc}

  # -- sampling -----------------------------------------------------------------------
  def _sampling(self, kwargs):
    out = sampling_options(kwargs, self.config.sample, SAMPLE_FIELDS, self.num_tokens,
                           "one step per token")
    return dict(out, null=self.null_condition())

  def init_cache(self, params, cond, cfg_scale: float):
    """KV caches for the decoding batch (2B with guidance) with the prefix before its
    last token already in them; returns ``(cache, positions in it)``."""
    both = cfg_lib.with_null(cond, self.null_condition(), cfg_scale)
    b2 = cfg_lib.batch_size(both)
    cache = self.model.init_cache(b2)
    start = self.model.prefix_len - 1
    if start:
      _, cache = self.model.apply({"params": params}, jnp.zeros((b2, start), jnp.int32),
                                  both, cache, method="decode")
    return cache, start

  def sample_tokens(self, params, rng, labels, **kwargs):
    """(B, N) codes, one per step with the KV cache. kwargs: ``SAMPLE_FIELDS``."""
    kw = self._sampling(kwargs)
    cond = self.sampling_condition(labels)
    cache, start = self.init_cache(params, cond, kw["cfg_scale"])
    decode_fn = lambda t, y, c: self.model.apply({"params": params}, t, y, c,
                                                 method="decode_step")
    return decoding.decode_cached(decode_fn, cache, cond, rng, num_tokens=self.num_tokens,
                                  start=start, **kw)

  def sample_tokens_uncached(self, params, rng, labels, **kwargs):
    """The same draws as ``sample_tokens`` by full recomputation at every step."""
    kw = self._sampling(kwargs)
    return decoding.decode_uncached(lambda t, y: self.logits(params, t, y),
                                    self.sampling_condition(labels), rng,
                                    num_tokens=self.num_tokens, **kw)
