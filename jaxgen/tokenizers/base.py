"""The ``Tokenizer`` interface: a trained autoencoder, loaded from its workdir, frozen.

Every token-based paradigm (MaskGIT, MAGE, raster AR, VAR) and latent flow/diffusion
uses one::

  tok = Tokenizer.from_workdir("runs/vqgan")
  codes = tok.encode(images)            # int32 (N, h, w); list of (N, s, s) for "msvq";
                                        # float latents (N, h, w, c) for "kl" (scaled)
  images = tok.decode(codes)            # [-1, 1]
  emb = tok.codes_to_embeddings(codes)  # (N, h, w, embed_dim)
  tok.grid_shape, tok.vocab_size, tok.latent_shape

The methods are pure functions of explicit parameters underneath
(``tok.encode_fn(params, images)``), so a paradigm can pass ``tok.params`` into its own
jitted, sharded step instead of baking them into the compiled program as constants.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import fileio

SCALE_FILE = "latent_scale.json"


class Tokenizer:
  """A frozen autoencoder: encode / decode / codes_to_embeddings and its shapes."""

  def __init__(self, paradigm, params, model_state, *, latent_scale: float = 1.0,
               workdir: Optional[str] = None):
    self.paradigm = paradigm
    self.ae = paradigm.ae
    self.params = params["autoencoder"] if "autoencoder" in params else params
    self.model_state = dict(model_state or {})
    self.kind = paradigm.config.model.bottleneck
    self.latent_scale = float(latent_scale)
    self.workdir = workdir
    self.image_shape = tuple(paradigm.image_shape)
    self._encode = jax.jit(self.encode_fn)
    self._decode = jax.jit(self.decode_fn)
    self._embed = jax.jit(self.embed_fn)

  # -- construction -----------------------------------------------------------------
  @classmethod
  def from_workdir(cls, workdir: str, params: Optional[str] = None,
                   step: Optional[int] = None) -> "Tokenizer":
    """Loads the newest (or ``step``) checkpoint of a tokenizer run.

    ``params``: "raw" (default for tokenizers: the trained weights) or "ema". Reads no
    training data (its dataset is only described).
    """
    from jaxgen import generate  # pylint: disable=g-import-not-at-top
    exp, state, _ = generate.load_run(workdir, step=step, data=False)
    return cls.from_run(exp, state, workdir, params)

  @classmethod
  def from_run(cls, exp, state, workdir: str, params: Optional[str] = None
               ) -> "Tokenizer":
    """The tokenizer of a run already loaded (`generate.load_run`'s ``exp, state``)."""
    if exp.config.paradigm.name != "tokenizer":
      raise ValueError(f"{workdir} holds a {exp.config.paradigm.name!r} run, not a "
                       "tokenizer; train one with configs/fmnist_vqgan.py (or _vitvq, "
                       "_msvq, _vae).")
    params = params or exp.paradigm.default_params
    tree = state.ema_params if params == "ema" else state.params
    scale = read_latent_scale(workdir)
    return cls(exp.paradigm, jax.device_get(tree), jax.device_get(state.model_state),
               latent_scale=scale if scale is not None else 1.0, workdir=workdir)

  # -- shapes ---------------------------------------------------------------------
  @property
  def vocab_size(self) -> Optional[int]:
    """Number of codes (``None`` for continuous latents)."""
    return None if self.kind == "kl" else int(self.paradigm.config.model.codebook_size)

  @property
  def grid_shape(self) -> Any:
    """Token grid (h, w) ("vq", "kl"), or the list of (s, s) scales ("msvq")."""
    if self.kind == "msvq":
      return [(s, s) for s in self.paradigm.config.model.scales]
    return tuple(self.latent_shape[:-1])

  @property
  def latent_shape(self) -> Tuple[int, ...]:
    """Shape of one example's bottleneck vectors (h, w, embed_dim)."""
    x = jax.ShapeDtypeStruct((1,) + self.image_shape, jnp.float32)
    h = jax.eval_shape(lambda p, x: self.ae.apply(self._vars(p), x, method="encode_features"),
                       self.params, x)
    width = h.shape[-1] // 2 if self.kind == "kl" else h.shape[-1]
    return tuple(h.shape[1:-1]) + (width,)

  # -- pure functions of the parameters -------------------------------------------------
  def _vars(self, params):
    return {"params": params, **self.model_state}

  def encode_fn(self, params, images):
    out = self.ae.apply(self._vars(params), images, method="encode")
    return out * self.latent_scale if self.kind == "kl" else out

  def decode_fn(self, params, codes):
    if self.kind == "kl":
      codes = codes / self.latent_scale
    return jnp.clip(self.ae.apply(self._vars(params), codes, method="decode_codes"), -1, 1)

  def embed_fn(self, params, codes):
    return self.ae.apply(self._vars(params), codes, method="codes_to_embeddings")

  # -- multi-scale ("msvq") pieces VAR trains and samples with ------------------------------
  def _quantizer_call(self, params, name: str, *args):
    if self.kind != "msvq":
      raise ValueError(f"{name} needs a multi-scale VQ tokenizer; {self.workdir} is "
                       f"{self.kind!r}.")
    return self.ae.apply(self._vars(params), *args,
                         method=lambda ae, *a: getattr(ae.quantizer, name)(*a))

  def teacher_forcing_fn(self, params, codes):
    """VAR's inputs from per-scale codes (list of (N, s, s)): f_hat after scale k
    area-resized to scale k+1, for k < S (a list of S - 1 (N, s, s, code_dim) maps)."""
    return self._quantizer_call(params, "teacher_forcing_inputs", codes)

  def next_input_fn(self, params, scale_index: int, f_hat, codes_nss):
    """One sampling step: (f_hat + scale ``scale_index``'s codes, the next scale's input).
    ``f_hat`` starts as zeros of (N,) + `latent_shape`."""
    return self._quantizer_call(params, "next_autoregressive_input", scale_index, f_hat,
                                codes_nss)

  def decode_features_fn(self, params, f_hat):
    """Images in [-1, 1] from bottleneck-space features (msvq's accumulated f_hat)."""
    return jnp.clip(self.ae.apply(self._vars(params), f_hat, method="decode"), -1, 1)

  # -- conveniences on the stored parameters ---------------------------------------------
  def encode(self, images):
    return self._encode(self.params, jnp.asarray(images, jnp.float32))

  def decode(self, codes):
    return self._decode(self.params, codes)

  def codes_to_embeddings(self, codes):
    return self._embed(self.params, codes)


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


def write_latent_scale(workdir: str, scale: float, num_examples: int) -> str:
  path = os.path.join(workdir, SCALE_FILE)
  fileio.write_text(path, json.dumps({"scale": scale, "num_examples": num_examples}))
  return path
