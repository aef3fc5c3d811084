"""VAR: next-scale prediction over a frozen multi-scale VQ tokenizer's token pyramid
(Tian et al., 2024), class-conditional.

Model: ``jaxgen.models.var.VARTransformer`` (block-causal, adaLN on the class, level and
position embeddings). Loss: cross-entropy on every token of every scale at once, the
inputs teacher-forced from the tokenizer's accumulated feature maps
(``Tokenizer.teacher_forcing_fn``); label dropout to the null class trains the
unconditional model for guidance. Codes come as VAR's flattened pyramid (N, sum s^2),
from ``jaxgen tokenize`` of an "msvq" tokenizer or encoded in the step.
Sampler: ``jaxgen.samplers.var``, one step per scale with a KV cache, CFG growing
linearly over the scales, temperature / top-k / top-p; the decoded image is the
tokenizer's decoder applied to the final accumulated feature map.

A tokenizer or code files whose scale schedule, vocabulary or code width differ from
``config.model.scales`` / ``codebook_size`` / ``code_dim`` are refused naming both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgen import registry
from jaxgen.config import ConfigError
from jaxgen.losses import token as token_losses
from jaxgen.paradigms.tokens import TokenParadigm
from jaxgen.samplers import cfg as cfg_lib
from jaxgen.samplers import options as options_lib
from jaxgen.samplers import var as var_sampler



@dataclasses.dataclass(frozen=True)
class VAROptions(options_lib.Categorical, options_lib.Scheduled):
  """Next-scale decoding, one step per scale (the scales fix the count), with VAR's
  settings: top-k 900, top-p 0.96, and VAR's cfg=1.5 as ``cfg_scale`` 2.5 reached at
  the last scale (``linear``: the first scale unguided) or ``constant``."""
  top_k: int = 900
  top_p: float = 0.96
  cfg_scale: float = 2.5
  cfg_schedule: str = "linear"


@registry.PARADIGMS.register("var")
class VARParadigm(TokenParadigm):
  """config.model: ``scales`` (the tokenizer's), ``codebook_size``, ``code_dim``, sizes.
  config.paradigm: label_smoothing, label_dropout. config.sample: `VAROptions` (no
  ``steps``: one step per scale)."""

  Options = VAROptions
  FIELDS = dict(
      label_smoothing=0.0,
      label_dropout=0.1,         # VAR's cond_drop_rate: trains the unconditional model
  )

  tokenizer_kinds = ("msvq",)
  grid_field = "scales"

  @classmethod
  def expected_grid(cls, config):
    return tuple((int(s), int(s)) for s in config.model.scales)

  @staticmethod
  def tokens_per_grid(grid) -> int:
    return sum(h * w for h, w in grid)

  def __init__(self, config, dataset, **frozen):
    super().__init__(config, dataset, **frozen)
    self.scales = tuple(int(s) for s in config.model.scales)
    if self.tokenizer is not None:
      have = self.tokenizer.latent_shape[-1]
      if have != int(config.model.code_dim):
        raise ConfigError(f"The tokenizer {self.tokenizer.workdir} has {have}-channel codes, "
                          f"but config.model.code_dim={config.model.code_dim}; set it to "
                          f"{have}.")

  @classmethod
  def validate_config(cls, config) -> None:
    if config.model.get("code_dim") is None:
      raise ConfigError("config.model.code_dim is not set: it must equal the tokenizer's "
                        "code width (configs/fmnist_msvq.py: 16).")
    scales = list(config.model.get("scales") or ())
    if not scales or any(b <= a for a, b in zip(scales, scales[1:])):
      raise ConfigError(f"config.model.scales={scales} must be increasing (the tokenizer's).")
    super().validate_config(config)

  # -- codes <-> the model's inputs -----------------------------------------------------
  def split_scales(self, codes_bl):
    """Flattened (B, L) pyramid -> list of (B, s, s) maps."""
    out, i = [], 0
    for s in self.scales:
      out.append(codes_bl[:, i:i + s * s].reshape(-1, s, s))
      i += s * s
    return out

  def _tokenizer(self):
    if self.tokenizer is None:
      raise ValueError("VAR needs its tokenizer (for the teacher-forcing inputs and for "
                       "sampling): set config.tokenizer.workdir.")
    return self.tokenizer

  def teacher_forcing(self, codes_bl):
    tok = self._tokenizer()
    maps = tok.teacher_forcing_fn(tok.variables, self.split_scales(codes_bl))
    return jax.lax.stop_gradient(
        jnp.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], axis=1))

  def logits(self, params, inputs, labels, train: bool = False, rng=None):
    """Teacher-forced (B, L, V) logits from (B, L - s_1^2, code_dim) inputs."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, inputs, labels, train=train, rngs=rngs)

  def loss(self, params, batch, rng, train: bool = True):
    codes = self.codes(batch)
    r_drop, r_model = jax.random.split(rng)
    cond = self.conditioner.train_input(batch, r_drop, train)
    logits = self.logits(params, self.teacher_forcing(codes), cond, train, r_model)
    loss, acc = token_losses.masked_cross_entropy(
        logits, codes, jnp.ones(codes.shape, jnp.bool_), self.config.paradigm.label_smoothing)
    last = self.scales[-1] ** 2
    finest = jnp.mean(jnp.argmax(logits[:, -last:], -1) == codes[:, -last:])
    return loss, {"accuracy": acc, "finest_scale_accuracy": finest}

  # -- sampling -----------------------------------------------------------------------
  def _sampling(self, options, overrides):
    o = self.sample_options(options, **overrides)
    tok = self._tokenizer()
    next_input = lambda k, f_hat, idx: tok.next_input_fn(tok.variables, k, f_hat, idx)
    return dict(o.sampling(), cfg_scale=o.cfg_scale, cfg_schedule=o.cfg_schedule,
                null=self.conditioner.null_input(), scales=self.scales,
                feature_shape=tok.latent_shape), next_input

  def sample_pyramid(self, params, rng, labels, options=None, **overrides):
    """Per-scale codes (list of (B, s, s)) and the final f_hat, with the KV cache."""
    kw, next_input = self._sampling(options, overrides)
    cond = self.conditioner.sampling_input(labels)
    batch = cfg_lib.batch_size(cond) * (1 if kw["cfg_scale"] == 1.0 else 2)
    cache = self.model.init_cache(batch)
    decode = lambda x, y, c, k: self.model.apply({"params": params}, x, y, c, k,
                                                 method="decode")
    return var_sampler.decode_cached(decode, cache, next_input, cond, rng, **kw)

  def sample_pyramid_uncached(self, params, rng, labels, options=None, **overrides):
    """The same draws as `sample_pyramid` by full recomputation at every scale."""
    kw, next_input = self._sampling(options, overrides)
    tok = self._tokenizer()
    return var_sampler.decode_uncached(
        lambda x, y: self.logits(params, x, y),
        lambda codes: tok.teacher_forcing_fn(tok.variables, codes), next_input,
        self.conditioner.sampling_input(labels), rng, code_dim=int(self.config.model.code_dim), **kw)

  def sample_pyramid_prefix(self, params, rng, labels, options=None, **overrides):
    """The same draws as `sample_pyramid`, recomputing the decoded prefix at every scale
    without a cache (the honest baseline of the KV cache)."""
    kw, next_input = self._sampling(options, overrides)
    tok = self._tokenizer()
    prefix = lambda x, y, n: self.model.apply({"params": params}, x, y, n,
                                              method="prefix_logits")
    return var_sampler.decode_prefix(
        prefix, lambda codes: tok.teacher_forcing_fn(tok.variables, codes), next_input,
        self.conditioner.sampling_input(labels), rng,
        code_dim=int(self.config.model.code_dim), **kw)

  @staticmethod
  def _flat(pyramid):
    codes, _ = pyramid
    return jnp.concatenate([c.reshape(c.shape[0], -1) for c in codes], axis=1)

  def sample_tokens(self, params, rng, labels, options=None, **overrides):
    """(B, L) flattened pyramid, coarse scales first (as ``jaxgen tokenize`` writes)."""
    return self._flat(self.sample_pyramid(params, rng, labels, options, **overrides))

  def sample_tokens_uncached(self, params, rng, labels, options=None, **overrides):
    return self._flat(self.sample_pyramid_uncached(params, rng, labels, options, **overrides))

  def sample_tokens_prefix(self, params, rng, labels, options=None, **overrides):
    return self._flat(self.sample_pyramid_prefix(params, rng, labels, options, **overrides))

  def sample(self, params, rng, labels, options=None, **overrides):
    _, f_hat = self.sample_pyramid(params, rng, labels, options, **overrides)
    tok = self._tokenizer()
    return tok.decode_features_fn(tok.variables, f_hat)

  def decode_images(self, tokens_bn):
    tok = self._tokenizer()
    return tok.decode_fn(tok.variables, self.split_scales(tokens_bn))

  def _dummy_inputs(self, batch: int = 1):
    m = self.config.model
    return (jnp.zeros((batch, self.num_tokens - self.scales[0] ** 2, int(m.code_dim)),
                      jnp.float32),
            self.conditioner.model_input(self.conditioner.dummy(batch)))
