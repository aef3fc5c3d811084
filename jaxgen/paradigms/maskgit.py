"""MaskGIT (Chang et al. 2022): masked visual token modelling and iterative parallel
decoding, class-conditional, over a frozen VQ tokenizer's codes.

Model: ``jaxgen.models.token_transformer.MaskGITTransformer`` (bidirectional, class
prefix token, tied MLM head). Loss: per example draw r ~ U[0, 1), mask
``ceil(gamma(r) N)`` random tokens (gamma = the mask schedule, cosine by default),
cross-entropy on the masked positions only (optional label smoothing); label dropout to
the null class trains the unconditional model for classifier-free guidance.
Sampler: ``jaxgen.samplers.maskgit.decode_step`` in the shared ``lax.scan`` loop, 8 steps
by default, CFG (constant or linearly growing scale) through the shared wrapper, from
all-[MASK] tokens or with some codes ``known`` (inpainting; a video's given first
frames, `TokenParadigm.sample_from_frames`). Video grids (T', h, w) are decoded as the
flattened t-major sequence, exactly as an image grid of as many tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.paradigms.tokens import TokenParadigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import loop
from jaxgen.samplers import maskgit as decoding
from jaxgen.samplers import options as options_lib


@dataclasses.dataclass(frozen=True)
class MaskGITOptions(options_lib.Scheduled):
  """MaskGIT's iterative decoding: ``steps`` parallel steps (the paper's 8); codes drawn
  at ``temperature`` (0 = argmax) from the ``top_k`` most likely (0 = all); the least
  confident re-masked with Gumbel noise of ``choice_temperature`` annealed linearly to
  0; guidance ``cfg_scale`` on logits, ``constant`` or ``linear`` over the steps."""
  steps: int = 8
  temperature: float = 1.0
  choice_temperature: float = 4.5
  top_k: int = 0

  def check(self, where: str) -> None:
    super().check(where)
    options_lib.at_least(where, "steps", self.steps, 1)
    options_lib.at_least(where, "temperature", self.temperature, 0.0)
    options_lib.at_least(where, "choice_temperature", self.choice_temperature, 0.0)
    options_lib.at_least(where, "top_k", self.top_k, 0, " (0 = off)")


def check_decoding_config(config) -> None:
  """Config checks shared by the paradigms that decode with MaskGIT's sampler."""
  p = config.paradigm
  try:
    decoding.check_schedule(p.mask_schedule)
  except ValueError as e:
    raise ConfigError(f"config.paradigm.mask_schedule: {e}") from None


def iterative_decode(model_logits, cond, null, o: MaskGITOptions, *, num_tokens: int,
                     mask_id: int, rng, schedule: str, known=None):
  """MaskGIT decoding with ``model_logits(tokens, cond)``, guided against ``null`` on
  logits as ``o`` says, from all-[MASK] tokens, or from ``known`` (B, N) codes with
  ``mask_id`` where unknown (kept as given; the schedule runs over the unknown ones).
  Returns (B, N) int32 codes."""
  step_fn = decoding.decode_step(
      guided_logits(model_logits, cond, null, o), mask_id=mask_id, num_steps=o.steps,
      schedule=schedule, temperature=o.temperature,
      choice_temperature=o.choice_temperature, top_k=o.top_k)
  if known is None:
    start = jnp.full((cfg_lib.batch_size(cond), num_tokens), mask_id, jnp.int32)
  else:
    start = jnp.asarray(known, jnp.int32).reshape(cfg_lib.batch_size(cond), num_tokens)
  return loop.run_loop(step_fn, decoding.init_state(start, mask_id, rng), o.steps).tokens


def guided_logits(model_logits, cond, null, o: MaskGITOptions):
  """``logits_fn(tokens, i)`` with classifier-free guidance on logits against the
  ``null`` condition at `cfg.guidance_scale` of step ``i`` (scale 1 = the conditional
  model alone, one pass)."""

  def logits_fn(tokens, i):
    if o.cfg_scale == 1.0:  # every schedule is then 1 throughout: one conditional pass
      return model_logits(tokens, cond)
    w = cfg_lib.guidance_scale(i, o.steps, o.cfg_scale, o.cfg_schedule)
    return cfg_lib.guided(model_logits, null, w)(tokens, cond)

  return logits_fn


@registry.PARADIGMS.register("maskgit")
class MaskGITParadigm(TokenParadigm):
  """config.paradigm: mask_schedule, label_smoothing, label_dropout. config.sample:
  `MaskGITOptions`."""

  Options = MaskGITOptions
  decodes_given_tokens = True
  FIELDS = dict(
      mask_schedule="cosine",    # cosine | uniform | powX | log | exp, as the official (decoding too)
      label_smoothing=0.1,
      label_dropout=0.1,         # p(label -> null class): trains the unconditional model
  )

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
    cond = self.conditioner.train_input(batch, r_drop, train)
    logits = self.logits(params, jnp.where(mask, self.mask_id, codes), cond, train,
                         r_model)
    return self.masked_token_loss(logits, codes, mask)

  def sample_tokens(self, params, rng, labels, options=None, known=None, **overrides):
    """(B, N) codes; ``known``: (B, N) given codes, ``mask_id`` where unknown."""
    return iterative_decode(
        lambda t, y: self.logits(params, t, y), self.conditioner.sampling_input(labels),
        self.conditioner.null_input(), self.sample_options(options, **overrides),
        num_tokens=self.num_tokens, mask_id=self.mask_id, rng=rng,
        schedule=self.config.paradigm.mask_schedule, known=known)
