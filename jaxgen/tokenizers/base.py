"""The ``Tokenizer`` interface: a trained autoencoder, loaded from its workdir, frozen.

Every token-based paradigm (MaskGIT, MAGE, raster AR, VAR) and latent flow/diffusion
uses one::

  tok = Tokenizer.from_workdir("runs/vqgan")
  codes = tok.encode(images)            # int32 (N, h, w) ("vq", "lfq"); list of (N, s, s)
                                        # for "msvq"; float latents (N, h, w, c) for "kl"
                                        # (scaled)
  images = tok.decode(codes)            # [-1, 1]
  emb = tok.codes_to_embeddings(codes)  # (N, h, w, embed_dim)
  tok.grid_shape, tok.vocab_size, tok.latent_shape

A video tokenizer (causal 3D nets) takes (N, T, H, W, C) clips: its codes are
(N, T', h, w), its latents (N, T', h, w, c), and ``grid_shape`` / ``latent_shape`` gain
the leading T' (all read off ``jax.eval_shape`` of the encoder).

Loading reads only the autoencoder's weights and quantizer state from the newest
intact checkpoint (no optimizer state, no discriminator). The methods are pure
functions of explicit variables underneath (``tok.encode_fn(tok.variables, images)``);
a tokenizer is a `jaxgen.frozen.FrozenNetwork`, so inside the programs the loop and
the sampler build (`jaxgen.frozen.Frozen.jit`) ``tok.variables`` is an argument of the
program, sharded on its mesh, never a constant baked into it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import config as config_lib
from jaxgen import fileio, registry
from jaxgen.data import datasets, pipeline
from jaxgen.data.preprocess import preprocessed_shape
from jaxgen.errors import CheckpointError, ConfigError
from jaxgen.frozen import FrozenField, FrozenNetwork
from jaxgen.train import checkpoint

SCALE_FILE = "latent_scale.json"
PARAMS_CHOICES = ("raw", "ema")
DEFAULT_PARAMS = "raw"  # frozen use: the trained weights (EMA codebooks are not averaged)


class Tokenizer(FrozenNetwork):
  """A frozen autoencoder: encode / decode / codes_to_embeddings and its shapes.

  ``variables``: the autoencoder's flax variables (``{"params": ..., "vq_stats": ...}``:
  trained parameters and quantizer state), a `FrozenField`."""

  variables = FrozenField()
  frozen_field = "variables"

  def __init__(self, config, ae, image_shape, params, model_state, *,
               latent_scale: float = 1.0, workdir: Optional[str] = None,
               step: Optional[int] = None, fingerprint: Optional[str] = None):
    """``config``: the tokenizer run's; ``ae``: its autoencoder module (`build_autoencoder`)
    for images of ``image_shape``; ``params`` / ``model_state``: its trained parameters
    (the autoencoder's, or the run's ``{"autoencoder": ..., ...}``) and quantizer state."""
    self.config = config
    self.ae = ae
    params = params["autoencoder"] if "autoencoder" in params else params
    self.variables = {"params": params, **dict(model_state or {})}
    self.kind = config.model.bottleneck
    self.latent_scale = float(latent_scale)
    self.workdir = workdir
    self.step = step
    self.fingerprint = fingerprint
    self.image_shape = tuple(image_shape)
    self._embed = jax.jit(self.embed_fn)

  @property
  def latent_scale(self) -> float:
    """The KL-VAE's latent scale factor (1 for codes): latents are ``scale * z``."""
    return self._latent_scale

  @latent_scale.setter
  def latent_scale(self, value: float) -> None:
    # A new scale is a new function: the jitted conveniences read it when traced.
    self._latent_scale = float(value)
    self._encode = jax.jit(self.encode_fn)
    self._decode = jax.jit(self.decode_fn)

  # -- construction -----------------------------------------------------------------
  @classmethod
  def from_workdir(cls, workdir: str, params: Optional[str] = None,
                   step: Optional[int] = None, abstract: bool = False) -> "Tokenizer":
    """Loads the newest intact (or ``step``'s) checkpoint of a tokenizer run: only the
    autoencoder's weights (``params``: "raw", the default for tokenizers, or "ema") and
    its quantizer state, onto the default device. Reads no training data (its dataset
    is only described) and builds no optimizer. ``abstract``: read only the run's
    config, for shapes (``jaxgen info``): the variables are ShapeDtypeStructs."""
    stored = checkpoint.read_config(workdir)
    if stored is None:
      raise CheckpointError(f"The tokenizer run {workdir} does not exist or holds no "
                            "config.json: train one (configs/fmnist_vqgan.py, _vitvq, "
                            "_msvq, _vae) or point config.tokenizer.workdir at it.")
    config = config_lib.from_dict(stored)
    registry.PARADIGMS.get(config.paradigm.name).require(
        "reconstructs", "a frozen tokenizer", config, workdir)
    spec_path = os.path.join(workdir, datasets.SPEC_FILE)
    spec = (datasets.spec_from_dict(json.loads(fileio.read_text(spec_path)))
            if fileio.isfile(spec_path) else datasets.describe(config.data))
    ae, image_shape = build_autoencoder(config, spec)
    which = params or DEFAULT_PARAMS
    if which not in PARAMS_CHOICES:
      raise ConfigError(f"Tokenizer params={which!r}; use one of {', '.join(PARAMS_CHOICES)}.")
    shapes = _unboxed(autoencoder_shapes(ae, image_shape))
    if abstract:
      return cls(config, ae, image_shape, shapes[0], shapes[1], workdir=workdir)
    target = {("ema_params" if which == "ema" else "params"): {"autoencoder": shapes[0]}}
    if jax.tree.leaves(shapes[1]):
      target["model_state"] = shapes[1]
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
      steps = ckpt.all_steps()
      if step is not None and step not in steps:
        raise CheckpointError(f"The tokenizer run {workdir} has no checkpoint of step {step} "
                              f"(it has {sorted(steps)}).")
      parts, got = ckpt.restore_newest_intact(
          None, steps=None if step is None else [step], parts=target,
          all_finite=lambda t: all(np.isfinite(x).all() for x in jax.tree.leaves(t)
                                   if np.issubdtype(np.asarray(x).dtype, np.inexact)))
    finally:
      ckpt.close()
    if got is None:
      raise CheckpointError(f"The tokenizer run {workdir} has no checkpoint yet.")
    scale = read_latent_scale(workdir)
    tree = jax.device_put(next(iter(parts[k] for k in parts if k != "model_state")))
    return cls(config, ae, image_shape, tree, jax.device_put(parts.get("model_state", {})),
               latent_scale=scale if scale is not None else 1.0, workdir=workdir, step=got,
               fingerprint=checkpoint.fingerprint(ckpt.step_dir(got)))

  @classmethod
  def from_run(cls, exp, state, workdir: str, params: Optional[str] = None
               ) -> "Tokenizer":
    """The tokenizer of a run already loaded (`generate.load_run`'s ``exp, state``)."""
    exp.paradigm.require("reconstructs", "a frozen tokenizer", exp.config, workdir)
    params = params or DEFAULT_PARAMS
    tree = state.ema_params if params == "ema" else state.params
    scale = read_latent_scale(workdir)
    p = exp.paradigm
    return cls(exp.config, p.ae, p.image_shape, jax.device_get(tree),
               jax.device_get(state.model_state),
               latent_scale=scale if scale is not None else 1.0, workdir=workdir)

  # -- as a frozen network -------------------------------------------------------------
  def abstract_weights(self):
    params, state = autoencoder_shapes(self.ae, self.image_shape)
    return {"params": params, **state}

  def identity(self):
    return dict(workdir=fileio.absolute(self.workdir) if self.workdir else None,
                step=self.step, fingerprint=self.fingerprint, kind=self.kind,
                latent_shape=list(self.latent_shape), latent_scale=self.latent_scale)

  # -- shapes ---------------------------------------------------------------------
  @property
  def params(self):
    """The autoencoder's trained parameters (``variables["params"]``)."""
    return self.variables["params"]

  @property
  def vocab_size(self) -> Optional[int]:
    """Number of codes (``None`` for continuous latents; 2^embed_dim for "lfq", whose
    codebook is implicit)."""
    return None if self.kind == "kl" else int(self.config.model.codebook_size)

  @property
  def grid_shape(self) -> Any:
    """Token grid (h, w) ("vq", "lfq", "kl"; (T', h, w) for videos), or the list of
    (s, s) scales ("msvq")."""
    if self.kind == "msvq":
      return [(s, s) for s in self.config.model.scales]
    return tuple(self.latent_shape[:-1])

  @property
  def latent_shape(self) -> Tuple[int, ...]:
    """Shape of one example's bottleneck vectors (h, w, embed_dim); (T', h, w,
    embed_dim) for videos."""
    x = jax.ShapeDtypeStruct((1,) + self.image_shape, jnp.float32)
    h = jax.eval_shape(lambda v, x: self.ae.apply(v, x, method="encode_features"),
                       self.stored_weights, x)
    width = h.shape[-1] // 2 if self.kind == "kl" else h.shape[-1]
    return tuple(h.shape[1:-1]) + (width,)

  # -- pure functions of the variables ----------------------------------------------------
  def encode_fn(self, variables, images):
    out = self.ae.apply(variables, images, method="encode")
    return out * self.latent_scale if self.kind == "kl" else out

  def decode_fn(self, variables, codes):
    if self.kind == "kl":
      codes = codes / self.latent_scale
    return jnp.clip(self.ae.apply(variables, codes, method="decode_codes"), -1, 1)

  def embed_fn(self, variables, codes):
    return self.ae.apply(variables, codes, method="codes_to_embeddings")

  # -- multi-scale ("msvq") pieces VAR trains and samples with ------------------------------
  def _quantizer_call(self, variables, name: str, *args):
    if self.kind != "msvq":
      raise ValueError(f"{name} needs a multi-scale VQ tokenizer; {self.workdir} is "
                       f"{self.kind!r}.")
    return self.ae.apply(variables, *args,
                         method=lambda ae, *a: getattr(ae.quantizer, name)(*a))

  def teacher_forcing_fn(self, variables, codes):
    """VAR's inputs from per-scale codes (list of (N, s, s)): f_hat after scale k
    area-resized to scale k+1, for k < S (a list of S - 1 (N, s, s, code_dim) maps)."""
    return self._quantizer_call(variables, "teacher_forcing_inputs", codes)

  def next_input_fn(self, variables, scale_index: int, f_hat, codes_nss):
    """One sampling step: (f_hat + scale ``scale_index``'s codes, the next scale's input).
    ``f_hat`` starts as zeros of (N,) + `latent_shape`."""
    return self._quantizer_call(variables, "next_autoregressive_input", scale_index, f_hat,
                                codes_nss)

  def decode_features_fn(self, variables, f_hat):
    """Images in [-1, 1] from bottleneck-space features (msvq's accumulated f_hat)."""
    return jnp.clip(self.ae.apply(variables, f_hat, method="decode"), -1, 1)

  # -- conveniences on the stored variables (eager; also while a step is traced) ----------
  def encode(self, images):
    return self._encode(self.stored_weights, jnp.asarray(images, jnp.float32))

  def decode(self, codes):
    return self._decode(self.stored_weights, codes)

  def codes_to_embeddings(self, codes):
    return self._embed(self.stored_weights, codes)


# -------------------------------------- which tokenizer a token or latent run uses


def tokens_meta(config, required: bool = True) -> Optional[dict]:
  """``tokens.json`` of the pre-computed codes the config trains on (else None).

  Args:
    config: the run's config.
    required: raise a DataError naming `jaxgen tokenize` when ``config.data.data_dir``
      holds no ``tokens.json``; if False, return None then (validation, ``jaxgen info``
      and sampling do without the codes).
  """
  if config.data.name != "tokens":
    return None
  from jaxgen.tokenizers import precompute  # pylint: disable=g-import-not-at-top
  if not required and not precompute.has_meta(config.data.get("data_dir")):
    return None
  return precompute.read_meta(config.data.get("data_dir"))


def tokenizer_workdir(config, required: bool = True) -> str:
  """The configured tokenizer run, else the one that wrote the pre-computed codes
  (``required``: as in `tokens_meta`; without a ``tokens.json`` only the configured
  run is known)."""
  configured = config.tokenizer.workdir if "tokenizer" in config else ""
  meta = tokens_meta(config, required)
  written_by = (meta or {}).get("tokenizer_workdir") or ""
  if configured and written_by and fileio.absolute(configured) != fileio.absolute(written_by):
    raise ConfigError(
        f"config.data.data_dir={config.data.data_dir} holds codes written by the tokenizer "
        f"{written_by}, but config.tokenizer.workdir={configured}: codes of one tokenizer "
        "mean nothing to another. Re-run `jaxgen tokenize --workdir "
        f"{configured} --out DIR`, or set config.tokenizer.workdir={written_by}.")
  return configured or written_by


def image_data_config(config) -> ml_collections.ConfigDict:
  """The image dataset behind a token run (for evaluation against real images): the
  tokenizer run's ``config.data`` when the run trains on codes, else its own."""
  if config.data.name != "tokens":
    return config.data
  workdir = tokenizer_workdir(config)
  path = os.path.join(workdir, "config.json")
  if not workdir or not fileio.isfile(path):
    raise ConfigError(f"Cannot find the images behind {config.data.data_dir}: its tokenizer "
                      f"run {workdir!r} has no config.json. Set config.tokenizer.workdir.")
  return ml_collections.ConfigDict(json.loads(fileio.read_text(path))["data"])


def _unboxed(tree):
  return nn.meta.unbox(tree)


def build_autoencoder(config, spec) -> Tuple[Any, Tuple[int, ...]]:
  """The autoencoder module a tokenizer run's ``config`` describes, and the shape of
  the images it takes (the dataset ``spec``'s, after ``config.data.pp``)."""
  image_shape = preprocessed_shape(config.data.pp, spec.image_shape)
  ae = registry.MODELS.get(config.model.name)(
      config.model, image_shape=image_shape, num_classes=spec.num_classes,
      dtype=jnp.dtype(config.train.compute_dtype))
  return ae, image_shape


def autoencoder_shapes(ae, image_shape) -> Tuple[Any, Any]:
  """``(params, model_state)`` of ``ae`` as abstract arrays, with their logical-axis
  boxes: the parameters, and the non-gradient collections (a VQ codebook's statistics)."""
  def init(rng):
    variables = dict(ae.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                             train=False))
    return variables.pop("params"), variables
  return jax.eval_shape(init, jax.random.PRNGKey(0))


def load_frozen_tokenizer(config, workdir: str, kinds: Sequence[str], who: str
                          ) -> "Tokenizer":
  """The tokenizer ``config.tokenizer`` names (``workdir`` resolved by the caller):
  its ``params`` ("" = the tokenizer's default) and ``step`` (None = the newest intact
  checkpoint), checked to be one of ``kinds`` ("vq", "msvq", "lfq", "kl"); ``who`` names the
  model that needs it in the error."""
  t = config.tokenizer
  tok = Tokenizer.from_workdir(workdir, params=t.params or None, step=t.step)
  check_kind(tok.kind, workdir, kinds, who)
  return tok


_KINDS = {"vq": "a single-scale VQ tokenizer (configs/fmnist_vqgan.py or _vitvq.py)",
          "msvq": "a multi-scale VQ tokenizer (configs/fmnist_msvq.py)",
          "lfq": "a lookup-free (LFQ) tokenizer (configs/mfmnist_video_tokenizer.py)",
          "kl": "a KL-VAE tokenizer (configs/fmnist_vae.py)"}


def check_kind(kind: str, where: str, kinds: Sequence[str], who: str) -> None:
  """Raises a `ConfigError` unless a tokenizer (or code files) at ``where`` of
  bottleneck ``kind`` is one of ``kinds``, which ``who`` (a model) needs."""
  if kind not in kinds:
    raise ConfigError(f"{where} holds {kind!r} codes; {who} needs "
                      + " or ".join(_KINDS[k] for k in kinds) + ".")


def read_latent_scale(workdir: str) -> Optional[float]:
  path = os.path.join(workdir, SCALE_FILE)
  if not fileio.isfile(path):
    return None
  return float(json.loads(fileio.read_text(path))["scale"])


def compute_latent_scale(latents: Sequence[np.ndarray]) -> float:
  """LDM's scale factor: 1 / std of the (unscaled) latents of training images, so the
  latents a flow or diffusion model sees have unit variance."""
  flat = np.concatenate([np.asarray(z, np.float64).ravel() for z in latents])
  return float(1.0 / max(flat.std(), 1e-8))


def fit_latent_scale(tok, spec: datasets.DatasetSpec, *, split: str, pp: str, num: int,
                     batch_size: int = 250) -> float:
  """LDM's scale factor of a KL tokenizer (`compute_latent_scale`) from the
  unscaled latents of ``num`` images of ``split``; leaves ``tok`` using it."""
  ds = pipeline.eval_dataset(spec, split=split, pp=pp, batch_size=batch_size)
  tok.latent_scale = 1.0
  latents, n = [], 0
  for batch in ds:
    latents.append(np.asarray(tok.encode(batch["image"])))
    n += len(batch["image"])
    if n >= num:
      break
  tok.latent_scale = compute_latent_scale(latents)
  return tok.latent_scale


def ensure_latent_scale(tok, spec: datasets.DatasetSpec, *, split: str, pp: str, num: int
                        ) -> Optional[float]:
  """A KL tokenizer's latent scale: fitted on ``num`` images of ``split``
  (`fit_latent_scale`) and written beside its run when the run has none yet (then
  returned), else left as the run's (None)."""
  if tok.kind != "kl" or read_latent_scale(tok.workdir) is not None:
    return None
  scale = fit_latent_scale(tok, spec, split=split, pp=pp, num=num)
  write_latent_scale(tok.workdir, scale, num_examples=num)
  return scale


def write_latent_scale(workdir: str, scale: float, num_examples: int,
                       source: Optional[str] = None) -> str:
  """Writes ``<workdir>/latent_scale.json``: ``scale`` fitted on ``num_examples``
  images, or (``source``, 0 examples) taken from where ``source`` says."""
  path = os.path.join(workdir, SCALE_FILE)
  record = {"scale": scale, "num_examples": num_examples}
  if source is not None:
    record["source"] = source
  fileio.write_text(path, json.dumps(record))
  return path
