"""One conditioning interface for every paradigm: class labels or text.

A *condition* is a pytree of arrays with a leading batch axis:

* class: ``{"label": int32 (B,)}``; the null condition is the label ``num_classes``
  (the extra row of the class table).
* text: ``{"text_tokens": (B, L, D), "text_mask": bool (B, L), "text_pooled": (B, D)}``
  from a frozen text encoder (`jaxgen.text_encoders`); the null condition is the
  encoder's encoding of ``""`` (only its special tokens), as in Imagen / SD3.

A `Conditioner` turns a data batch into a condition (``from_batch``), gives the null
condition (``null``: unbatched, broadcastable; what `jaxgen.samplers.cfg.guided` takes),
drops conditions to the null one in training (``drop``: label dropout / caption dropout,
one Bernoulli per example) and builds conditions to sample from (``for_sampling``:
labels or prompts; a text run given class labels samples from each class's short
caption, "a shirt", so class-label tools such as ``jaxgen eval`` work on it too).
``model_input`` is what the network gets: the label array for class models (their
signature is unchanged), the dict for text models.

Every paradigm holds one (`jaxgen.paradigms.base.Paradigm.conditioner`, built with the
paradigm's condition dropout) and asks it for ``train_input`` (training batches, with
dropout), ``sampling_input`` and ``null_input``; CFG combines the model under ``cond`` and under the null
condition (`jaxgen.samplers.cfg`). A class label is the special case whose "prompt" is
an index.

Text reaches the batch as arrays, never strings: either pre-computed once with ``jaxgen
embed-captions`` (`jaxgen.data.caption_embeddings`; the default) or, with
``config.text.encode_in_step=True``, as token ids and mask that the step encodes with
the frozen encoder (its parameters become constants of the compiled step: for small
encoders only).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import (  # noqa: F401  (uses_text, validate_text_config: re-exported)
    ConfigError, uses_text, validate_text_config)

Condition = Dict[str, Any]
TEXT_KEYS = ("text_tokens", "text_mask", "text_pooled")


def drop_mask(rng: jax.Array, batch: int, p: float) -> jax.Array:
  """(batch,) bool: which examples `drop_to_null` drops with ``rng`` and ``p`` (what else
  a paradigm drops with the condition, e.g. the given first frames of a video, uses the
  same draw)."""
  return jax.random.bernoulli(rng, p, (batch,))


def drop_to_null(cond: Condition, null: Condition, rng: jax.Array, p: float) -> Condition:
  """Replaces each example's condition by ``null`` with probability ``p`` (one draw per
  example, shared by all leaves, `drop_mask`): label dropout / caption dropout for CFG
  training."""
  b = jax.tree.leaves(cond)[0].shape[0]
  drop_b = drop_mask(rng, b, p)

  def pick(c, n):
    d = drop_b.reshape((b,) + (1,) * (c.ndim - 1))
    return jnp.where(d, jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape[1:]), c)

  return jax.tree.map(pick, cond, null)


def batched(cond: Condition, batch: int) -> Condition:
  """An unbatched condition (e.g. ``null()``) repeated ``batch`` times."""
  return jax.tree.map(lambda c: jnp.broadcast_to(jnp.asarray(c), (batch,) + jnp.shape(c)),
                      cond)


class _ModelInputs:
  """What a paradigm asks a conditioner for: the model's condition input of a training
  batch (with condition dropout), of what ``sample`` takes, and the null one."""

  dropout = 0.0  # p(condition -> null) in training (label / caption dropout, for CFG)
  text_length = 0  # text tokens per condition (0: class labels)

  def train_input(self, batch, rng=None, train: bool = True):
    """The model's condition input for a data batch, replaced by the null condition
    with probability ``dropout`` per example when ``train``."""
    cond = self.from_batch(batch)
    if train and self.dropout > 0:
      cond = self.drop(cond, rng, self.dropout)
    return self.model_input(cond)

  def sampling_input(self, labels):
    """The model's condition input from what ``sample`` takes: class labels, or (text
    runs) a condition dict, a list of prompts, or class labels (their short captions)."""
    return self.model_input(self.for_sampling(labels))

  def null_input(self):
    """The unconditional input (unbatched): the null label or the null text."""
    return self.model_input(self.null())

  def preview_input(self, num: int):
    """Inputs of the loop's preview grid: each class in turn (text runs: each class's
    short caption)."""
    return self.model_input(self.preview(num))


class ClassConditioner(_ModelInputs):
  """Class labels: the condition of every class-conditional config."""

  kind = "label"

  def __init__(self, num_classes: int, dropout: float = 0.0):
    self.num_classes = int(num_classes)
    self.dropout = float(dropout)

  def null(self) -> Condition:
    return {"label": jnp.int32(self.num_classes)}

  def from_batch(self, batch) -> Condition:
    return {"label": batch["label"]}

  def batch_fields(self, batch_size: int) -> Dict[str, jax.ShapeDtypeStruct]:
    return {"label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def dummy(self, batch_size: int) -> Condition:
    return {"label": jnp.zeros((batch_size,), jnp.int32)}

  def model_input(self, cond: Condition):
    return cond["label"]

  def drop(self, cond: Condition, rng, p: float) -> Condition:
    return drop_to_null(cond, self.null(), rng, p)

  def for_sampling(self, labels) -> Condition:
    """A condition from labels (an int array, or a condition dict holding "label")."""
    if isinstance(labels, dict):
      if "label" not in labels:
        raise ValueError("A class-conditional run samples from labels, not text: this run "
                         "has no config.text.encoder.")
      labels = labels["label"]
    return {"label": jnp.asarray(labels, jnp.int32)}

  def preview(self, num: int) -> Condition:
    return {"label": jnp.arange(num, dtype=jnp.int32) % max(self.num_classes, 1)}


def text_encoder_kwargs(text_cfg) -> Dict[str, Any]:
  """Keyword arguments of `get_text_encoder` from ``config.text``."""
  kw = {"max_length": int(text_cfg.max_length), "dtype": text_cfg.dtype}
  if text_cfg.checkpoint:
    kw["checkpoint"] = text_cfg.checkpoint
  if text_cfg.model_dir:
    kw["model_dir"] = text_cfg.model_dir
  return kw


@functools.lru_cache(maxsize=4)
def _cached_encoder(name: str, kw_items: tuple):
  from jaxgen import text_encoders  # pylint: disable=g-import-not-at-top
  return text_encoders.get_text_encoder(name, **dict(kw_items))


def load_text_encoder(text_cfg):
  """The frozen encoder ``config.text`` names (built once per process)."""
  return _cached_encoder(text_cfg.encoder, tuple(sorted(text_encoder_kwargs(text_cfg).items())))


class TextConditioner(_ModelInputs):
  """Text conditions from a frozen encoder (see the module docstring).

  ``config.text`` fields: encoder (registered name), max_length (L), width (D, the
  encoder's; lets shapes be known without loading it), encode_in_step, checkpoint /
  model_dir (where the encoder's files are), dtype. The null text and the preview
  prompts come from the embeddings cache when the data has one (``config.data.
  embeddings_dir``), so a cached run never loads the encoder to train.
  """

  kind = "text"

  def __init__(self, config, dataset=None, dropout: float = 0.0):
    self.dropout = float(dropout)
    self.text_cfg = config.text
    self.length = self.text_length = int(config.text.max_length)
    self.width = int(config.text.width)
    self.encode_in_step = bool(config.text.encode_in_step)
    self.embeddings_dir = config.data.get("embeddings_dir", "")
    self.data_cfg = config.data
    self.class_names = list(getattr(dataset, "class_names", None) or [])
    self.num_classes = int(getattr(dataset, "num_classes", 0) or 0)
    self._null = None
    self._class_table = None

  # -- the encoder and the null text ---------------------------------------------------
  @property
  def encoder(self):
    enc = load_text_encoder(self.text_cfg)
    if enc.width != self.width or enc.max_length != self.length:
      raise ConfigError(f"config.text says width={self.width}, max_length={self.length} "
                        f"but the encoder {enc!r} has width={enc.width}, max_length="
                        f"{enc.max_length}; make them agree.")
    return enc

  def encode(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
    """Prompts -> NumPy condition (float32 tokens and pooled, bool mask)."""
    with jax.ensure_compile_time_eval():  # also when called while tracing a step
      tokens, mask, pooled = self.encoder(list(texts))
    return {"text_tokens": tokens, "text_mask": mask, "text_pooled": pooled}

  def null_numpy(self) -> Dict[str, np.ndarray]:
    """The encoding of "" (L, D) / (L,) / (D,): from the cache, else the encoder."""
    if self._null is None:
      if self.embeddings_dir and not self.encode_in_step:
        from jaxgen.data import caption_embeddings  # pylint: disable=g-import-not-at-top
        try:
          self._null = caption_embeddings.read_null(self.embeddings_dir)
        except FileNotFoundError:  # sampling where the cache is not: the same encoding
          self._null = None
      if self._null is None:
        self._null = {k: v[0] for k, v in self.encode([""]).items()}
    return self._null

  def null(self) -> Condition:
    n = self.null_numpy()
    return {"text_tokens": jnp.asarray(n["text_tokens"], jnp.float32),
            "text_mask": jnp.asarray(n["text_mask"], bool),
            "text_pooled": jnp.asarray(n["text_pooled"], jnp.float32)}

  # -- batches -------------------------------------------------------------------------
  def batch_fields(self, batch_size: int) -> Dict[str, jax.ShapeDtypeStruct]:
    b, l, d = batch_size, self.length, self.width
    if self.encode_in_step:
      return {"text_ids": jax.ShapeDtypeStruct((b, l), jnp.int32),
              "text_mask": jax.ShapeDtypeStruct((b, l), jnp.bool_)}
    return {"text_tokens": jax.ShapeDtypeStruct((b, l, d), jnp.float16),
            "text_mask": jax.ShapeDtypeStruct((b, l), jnp.bool_),
            "text_pooled": jax.ShapeDtypeStruct((b, d), jnp.float16)}

  def from_batch(self, batch) -> Condition:
    if self.encode_in_step:
      enc = self.encoder
      tokens, pooled = enc.encode_fn(enc.params, batch["text_ids"], batch["text_mask"])
      return {"text_tokens": tokens, "text_mask": batch["text_mask"].astype(bool),
              "text_pooled": pooled}
    return {"text_tokens": batch["text_tokens"].astype(jnp.float32),
            "text_mask": batch["text_mask"].astype(bool),
            "text_pooled": batch["text_pooled"].astype(jnp.float32)}

  def dummy(self, batch_size: int) -> Condition:
    b, l, d = batch_size, self.length, self.width
    return {"text_tokens": jnp.zeros((b, l, d), jnp.float32),
            "text_mask": jnp.ones((b, l), bool),
            "text_pooled": jnp.zeros((b, d), jnp.float32)}

  def model_input(self, cond: Condition):
    return cond

  def drop(self, cond: Condition, rng, p: float) -> Condition:
    return drop_to_null(cond, self.null(), rng, p)

  def for_sampling(self, prompts_or_cond) -> Condition:
    """A condition from a list of prompts, an already encoded condition dict, or class
    labels (an int array, traced or not: each class's short caption, the null label
    ``num_classes`` the null text)."""
    if isinstance(prompts_or_cond, dict):
      if "label" in prompts_or_cond and "text_tokens" not in prompts_or_cond:
        return self.for_sampling(prompts_or_cond["label"])
      return {k: jnp.asarray(prompts_or_cond[k]) for k in TEXT_KEYS}
    if isinstance(prompts_or_cond, (list, tuple)) and all(
        isinstance(p, str) for p in prompts_or_cond):
      return self.for_sampling(self.encode(prompts_or_cond))
    labels = jnp.asarray(prompts_or_cond)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"Sample a text run from prompts (a list of str), a condition dict "
                       f"or class labels (ints), not {labels.dtype} values.")
    table = self.class_table()
    return {k: jnp.take(jnp.asarray(table[k]), labels, axis=0) for k in TEXT_KEYS}

  def class_table(self) -> Dict[str, np.ndarray]:
    """Each class's short-caption condition, then the null text: ``num_classes + 1``
    rows (from the embeddings cache when there is one, else encoded)."""
    if self._class_table is None:
      nc = max(self.num_classes, 1)
      rows = None
      if self.embeddings_dir and not self.encode_in_step:
        from jaxgen.data import caption_embeddings  # pylint: disable=g-import-not-at-top
        try:
          rows = caption_embeddings.read_class_captions(self.embeddings_dir, nc)
        except FileNotFoundError:
          rows = None
      if rows is None:
        rows = self.encode(self.preview_prompts(nc))
      null = self.null_numpy()
      dtypes = {"text_tokens": np.float32, "text_mask": bool, "text_pooled": np.float32}
      self._class_table = {k: np.concatenate([np.asarray(rows[k], t),
                                              np.asarray(null[k], t)[None]])
                           for k, t in dtypes.items()}
    return self._class_table

  def preview_prompts(self, num: int):
    """The short caption of each class in turn ("a t-shirt", "a pair of trousers")."""
    from jaxgen.data import captions  # pylint: disable=g-import-not-at-top
    names = self.class_names or [str(k) for k in range(max(self.num_classes, 1))]
    short = [captions.short_caption(k, names) for k in range(len(names))]
    return [short[i % len(short)] for i in range(num)]

  def preview(self, num: int) -> Condition:
    """Each class's short caption in turn."""
    nc = max(self.num_classes, 1)
    return self.for_sampling(np.arange(num, dtype=np.int32) % nc)

  # -- the data source -----------------------------------------------------------------
  def with_text(self, dataset):
    """``dataset`` (a new spec) whose examples carry the text arrays this conditioner
    reads (see `jaxgen.data.caption_embeddings.attach`)."""
    from jaxgen.data import caption_embeddings  # pylint: disable=g-import-not-at-top
    return caption_embeddings.attach(dataset, self)


def make_conditioner(config, dataset, dropout: float = 0.0):
  """The conditioner ``config`` asks for (text when ``config.text.encoder`` is set),
  dropping conditions to null with probability ``dropout`` in training."""
  if uses_text(config):
    return TextConditioner(config, dataset, dropout)
  return ClassConditioner(dataset.num_classes, dropout)
