"""MAGE (Li et al. 2023): masked generative encoder, one model for generation and
representation learning, over a frozen VQ tokenizer's codes.

Model: ``jaxgen.models.mage.MAGE``. Loss: per example a masking ratio from a Gaussian
(mode ``mask_ratio_mode`` 0.55, std 0.25) truncated to [``mask_ratio_min`` 0.5, 1];
``ceil(N * ratio)`` random tokens become [MASK] and the ``ceil(N * mask_ratio_min)``
lowest-ranked of them are dropped from the encoder (MAE-style, so the encoder always
sees a fixed half); cross-entropy with label smoothing on the masked positions.
Optional contrastive term (``contrastive_weight`` > 0): InfoNCE between the pooled
encoder features of two independently masked views of each example (SimCLR's loss; MAGE-C
uses image augmentations, which pre-computed codes do not allow).
Generation: MaskGIT's iterative decoder (the same step function, nothing dropped, as
the official generator does). Representation: ``features`` (nothing masked, null class)
for ``jaxgen eval --linear-probe``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxgen import conditioning, registry
from jaxgen.config import ConfigError
from jaxgen.paradigms import maskgit as maskgit_lib
from jaxgen.paradigms.tokens import TokenParadigm


def masking_ratio(rng, batch: int, mode: float, std: float, low: float, high: float = 1.0):
  """Ratios ~ N(mode, std) truncated to [low, high] (MAGE's ``stats.truncnorm``)."""
  z = jax.random.truncated_normal(rng, (low - mode) / std, (high - mode) / std, (batch,))
  return jnp.clip(mode + std * z, low, high)


def info_nce(a, b, temperature: float):
  """SimCLR's NT-Xent over 2B l2-normalised features: each row's positive is its other
  view; the other 2B - 2 rows are negatives. Mean over the 2B rows."""
  z = jnp.concatenate([a, b], axis=0).astype(jnp.float32)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)
  n = a.shape[0]
  sim = z @ z.T / temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)
  pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  logp = jax.nn.log_softmax(sim, axis=-1)
  return -jnp.mean(logp[jnp.arange(2 * n), pos])


@dataclasses.dataclass(frozen=True)
class MAGEOptions(maskgit_lib.MaskGITOptions):
  """MaskGIT's decoding options, and ``drop_masked``: True hides the [MASK] tokens from
  the encoder during generation (False: the official generator, the encoder sees
  them)."""
  drop_masked: bool = False


@registry.PARADIGMS.register("mage")
class MAGEParadigm(TokenParadigm):
  """config.paradigm: mask_ratio_mode/std/min, label_smoothing, label_dropout,
  contrastive_weight, contrastive_temperature, mask_schedule (decoding). config.sample:
  `MAGEOptions`."""

  capabilities = frozenset({"samples", "features"})
  Options = MAGEOptions
  decodes_given_tokens = True
  FIELDS = dict(
      maskgit_lib.MaskGITParadigm.FIELDS,
      mask_ratio_mode=0.55,    # masking ratio ~ N(0.55, 0.25) truncated to [min, 1]
      mask_ratio_std=0.25,
      mask_ratio_min=0.5,      # also the fraction always dropped from the encoder
      contrastive_weight=0.0,  # > 0: InfoNCE between two masked views (MAGE-C style)
      contrastive_temperature=0.2,
  )

  def __init__(self, config, dataset, **frozen):
    super().__init__(config, dataset, **frozen)
    self.num_dropped = int(math.ceil(self.num_tokens * config.paradigm.mask_ratio_min))

  @classmethod
  def validate_config(cls, config) -> None:
    super().validate_config(config)
    maskgit_lib.check_decoding_config(config)
    p = config.paradigm
    if not 0.0 <= p.mask_ratio_min < 1.0 or p.mask_ratio_std <= 0:
      raise ConfigError(f"config.paradigm.mask_ratio_min={p.mask_ratio_min} must be in "
                        f"[0, 1) and mask_ratio_std={p.mask_ratio_std} positive.")
    if p.contrastive_weight < 0 or p.contrastive_temperature <= 0:
      raise ConfigError("config.paradigm.contrastive_weight must be >= 0 and "
                        "contrastive_temperature > 0.")

  def _apply(self, params, *args, method=None, train=False, rng=None, **kw):
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, *args, method=method, train=train,
                            rngs=rngs, **kw)

  def _view(self, params, codes, labels, rng, train):
    """One masked view: (loss, accuracy, pooled encoder features)."""
    p = self.config.paradigm
    b, n = codes.shape
    r_ratio, r_pos, r_model = jax.random.split(rng, 3)
    ratio = masking_ratio(r_ratio, b, p.mask_ratio_mode, p.mask_ratio_std, p.mask_ratio_min)
    num_masked = jnp.clip(jnp.ceil(n * ratio), self.num_dropped, n).astype(jnp.int32)
    scores = jax.random.uniform(r_pos, (b, n))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    mask = ranks < num_masked[:, None]
    drop = ranks < self.num_dropped
    logits, enc = self._apply(params, jnp.where(mask, self.mask_id, codes), labels, drop,
                              n - self.num_dropped, train=train, rng=r_model)
    loss, metrics = self.masked_token_loss(logits, codes, mask)
    pooled = jnp.mean(enc[:, self.model.num_prefix:], axis=1)  # kept tokens only
    return loss, metrics, pooled

  def loss(self, params, batch, rng, train: bool = True):
    p = self.config.paradigm
    codes = self.codes(batch)
    r_drop, r_a, r_b = jax.random.split(rng, 3)
    cond = self.conditioner.train_input(batch, r_drop, train)
    loss, metrics, feat_a = self._view(params, codes, cond, r_a, train)
    if p.contrastive_weight > 0:
      loss_b, _, feat_b = self._view(params, codes, cond, r_b, train)
      con = info_nce(feat_a, feat_b, p.contrastive_temperature)
      loss = 0.5 * (loss + loss_b) + p.contrastive_weight * con
      metrics = dict(metrics, contrastive_loss=con)
    return loss, metrics

  def logits(self, params, tokens, labels, drop_masked: bool = False):
    """Logits for every position. The encoder sees all tokens, [MASK] included (the
    official generator), or, with ``drop_masked``, only the known ones."""
    drop = tokens == self.mask_id if drop_masked else None
    return self._apply(params, tokens, labels, drop, self.num_tokens)[0]

  def sample_tokens(self, params, rng, labels, options=None, known=None, **overrides):
    """(B, N) codes; ``known``: (B, N) given codes, ``mask_id`` where unknown."""
    o = self.sample_options(options, **overrides)
    return maskgit_lib.iterative_decode(
        lambda t, y: self.logits(params, t, y, o.drop_masked),
        self.conditioner.sampling_input(labels), self.conditioner.null_input(), o,
        num_tokens=self.num_tokens, mask_id=self.mask_id, rng=rng,
        schedule=self.config.paradigm.mask_schedule, known=known)

  def features(self, params, codes):
    """(B, D) representation of (B, h, w) or (B, N) codes: nothing masked, the null
    condition (null class or null text)."""
    codes = codes.reshape(codes.shape[0], -1).astype(jnp.int32)
    null = conditioning.batched(self.conditioner.null_input(), codes.shape[0])
    return self._apply(params, codes, null, method="features")
