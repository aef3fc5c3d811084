"""MaskGIT (Chang et al. 2022): masked visual token modelling and iterative parallel
decoding, class-conditional, over a frozen VQ tokenizer's codes.

Model: ``jaxgen.models.token_transformer.MaskGITTransformer`` (bidirectional, class
prefix token, tied MLM head). Loss: per example draw r ~ U[0, 1), mask
``ceil(gamma(r) N)`` random tokens (gamma = the mask schedule, cosine by default),
cross-entropy on the masked positions only (optional label smoothing); label dropout to
the null class trains the unconditional model for classifier-free guidance.
Sampler: ``jaxgen.samplers.maskgit.decode_step`` in the shared ``lax.scan`` loop, 8 steps
by default, CFG (constant or linearly growing scale) through the shared wrapper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.paradigms.tokens import TokenParadigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import loop
from jaxgen.samplers import maskgit as decoding


def check_decoding_config(config) -> None:
  """Config checks shared by the paradigms that decode with MaskGIT's sampler."""
  p, s = config.paradigm, config.sample
  if s.steps < 1:
    raise ConfigError(f"config.sample.steps={s.steps} must be >= 1.")
  if p.mask_schedule not in decoding.SCHEDULES:
    raise ConfigError(f"config.paradigm.mask_schedule={p.mask_schedule!r}; use one of "
                      f"{', '.join(decoding.SCHEDULES)}.")
  if s.cfg_schedule not in decoding.CFG_SCHEDULES:
    raise ConfigError(f"config.sample.cfg_schedule={s.cfg_schedule!r}; use one of "
                      f"{', '.join(decoding.CFG_SCHEDULES)}.")
  if s.temperature < 0 or s.choice_temperature < 0:
    raise ConfigError("config.sample.temperature and choice_temperature must be >= 0.")


def iterative_decode(logits_fn, *, batch: int, num_tokens: int, mask_id: int, rng,
                     config_sample, schedule: str, steps=None, cfg_scale=None,
                     temperature=None, choice_temperature=None, top_k=None):
  """Runs MaskGIT decoding from all-[MASK] tokens; ``logits_fn(tokens, labels_or_null,
  ...)`` is wrapped with CFG here. Returns (B, N) int32 codes."""
  s = config_sample
  steps = s.steps if steps is None else steps
  cfg_scale = s.cfg_scale if cfg_scale is None else cfg_scale
  step_fn = decoding.decode_step(
      logits_fn(steps, cfg_scale), mask_id=mask_id, num_steps=steps, schedule=schedule,
      temperature=s.temperature if temperature is None else temperature,
      choice_temperature=(s.choice_temperature if choice_temperature is None
                          else choice_temperature),
      top_k=s.top_k if top_k is None else top_k)
  start = jnp.full((batch, num_tokens), mask_id, jnp.int32)
  return loop.run_loop(step_fn, decoding.init_state(start, mask_id, rng), steps).tokens


def guided_logits(model_logits, cond, null, cfg_schedule: str):
  """``(steps, scale) -> logits_fn(tokens, i)`` with classifier-free guidance on logits
  against the ``null`` condition (scale 1 = the conditional model alone, one pass)."""

  def make(steps, scale):
    def logits_fn(tokens, i):
      if scale == 1.0:  # every schedule is then 1 throughout: one conditional pass
        return model_logits(tokens, cond)
      w = decoding.guidance_scale(i, steps, scale, cfg_schedule)
      return cfg_lib.guided(model_logits, null, w)(tokens, cond)
    return logits_fn

  return make


@registry.PARADIGMS.register("maskgit")
class MaskGIT(TokenParadigm):
  """config.paradigm: mask_schedule, label_smoothing, label_dropout. config.sample:
  steps, temperature, choice_temperature, top_k, cfg_scale, cfg_schedule."""

  @classmethod
  def validate_config(cls, config) -> None:
    super().validate_config(config)
    check_decoding_config(config)

  def logits(self, params, tokens, labels, train: bool = False, rng=None):
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, tokens, labels, train=train, rngs=rngs)

  def loss(self, params, batch, rng, train: bool = True):
    codes = self.codes(batch)
    b, n = codes.shape
    r_mask, r_drop, r_model = jax.random.split(rng, 3)
    mask = decoding.training_mask(r_mask, b, n, self.config.paradigm.mask_schedule)
    cond = self.condition(batch, r_drop, train)
    logits = self.logits(params, jnp.where(mask, self.mask_id, codes), cond, train,
                         r_model)
    return self.masked_token_loss(logits, codes, mask)

  def sample_tokens(self, params, rng, labels, **kwargs):
    cond = self.sampling_condition(labels)
    model_logits = lambda t, y: self.logits(params, t, y)
    return iterative_decode(
        guided_logits(model_logits, cond, self.null_condition(),
                      self.config.sample.cfg_schedule),
        batch=cfg_lib.batch_size(cond), num_tokens=self.num_tokens, mask_id=self.mask_id, rng=rng,
        config_sample=self.config.sample, schedule=self.config.paradigm.mask_schedule,
        **kwargs)
