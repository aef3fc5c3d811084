"""Lazy reading of safetensors checkpoints (one file or sharded) and conversion to Linen
parameter trees through a key map, with every shape checked before anything is loaded.

A checkpoint is given as a directory (holding ``model.safetensors.index.json`` and its
shards, or one ``*.safetensors`` file), a ``.safetensors`` file, or an index ``.json``.
Tensors are read one at a time with `safetensors.safe_open` (NumPy; bfloat16 through
``ml_dtypes``), so a sharded 20 GB checkpoint never sits in host memory twice.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen import errors

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

Path = Tuple[str, ...]
# A 1x1 convolution's (out, in, 1, 1) kernel read as a Linen Dense kernel (in, out).
CONV_1X1 = "conv_1x1"
# Linen parameter path -> (checkpoint key, transpose). PyTorch ``nn.Linear`` stores
# (out, in); a Linen kernel is (in, out), so linear weights are transposed (True:
# all axes reversed); a tuple is an axis permutation (a conv's (out, in, kh, kw) ->
# Linen's (kh, kw, in, out) is (2, 3, 1, 0)); `CONV_1X1` reads a 1x1 conv as a Dense
# kernel. A tuple of keys is concatenated along the parameter's last axis (separate
# q, k, v projections as one fused qkv), each checked against its equal share.
KeyMap = Mapping[Path, Tuple[Union[str, Tuple[str, ...]], Union[bool, str, Tuple[int, ...]]]]


def resolve_safetensors(path: str, *, what: str, how_to_get: str) -> List[str]:
  """The safetensors files of a checkpoint given as a directory, file or index.

  Args:
    path: a directory, a ``.safetensors`` file or a ``model.safetensors.index.json``.
    what: what the checkpoint is, for error messages ("flan_t5_xl checkpoint").
    how_to_get: one sentence saying how to obtain the files, appended to errors.

  Returns:
    The list of files to read (several for a sharded checkpoint).

  Raises:
    FileNotFoundError: the path, or a shard the index names, does not exist.
    ValueError: the path is not a safetensors checkpoint.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: {path} does not exist. {how_to_get}")
  if os.path.isdir(path):
    return _files_of_directory(path, what, how_to_get)
  if path.endswith(".json"):
    return _files_of_index(path, what)
  if path.endswith(".safetensors"):
    return [path]
  if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
    raise ValueError(f"{what}: {path} is a PyTorch pickle; only safetensors are read. "
                     f"{_CONVERT_HINT} {how_to_get}")
  raise ValueError(f"{what}: {path} is neither a .safetensors file, an index .json nor "
                   f"a directory holding them. {how_to_get}")


_CONVERT_HINT = ("Download the *.safetensors files of the same repository instead, or "
                 "convert the .bin once where torch is installed "
                 "(`safetensors.torch.save_model`).")


def _files_of_directory(path: str, what: str, how_to_get: str) -> List[str]:
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    return _files_of_index(index, what)
  single = os.path.join(path, SINGLE_FILE)
  if os.path.exists(single):
    return [single]
  found = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if len(found) == 1:
    return found
  if len(found) > 1:
    raise ValueError(f"{what}: {path} holds {len(found)} .safetensors files but no "
                     f"{INDEX_FILE}; download the index too, or pass one file.")
  if glob.glob(os.path.join(path, "*.bin")):
    raise FileNotFoundError(f"{what}: {path} holds PyTorch .bin files but no "
                            f"safetensors. {_CONVERT_HINT} {how_to_get}")
  raise FileNotFoundError(f"{what}: {path} holds neither {INDEX_FILE} nor "
                          f"{SINGLE_FILE}. {how_to_get}")


def _files_of_index(index: str, what: str) -> List[str]:
  try:
    with open(index, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{what}: {index} is not a safetensors index (a JSON file with a "
                     f"'weight_map'): {e}") from e
  root = os.path.dirname(index)
  files = [os.path.join(root, name) for name in sorted(set(weight_map.values()))]
  missing = [f for f in files if not os.path.exists(f)]
  if missing:
    raise FileNotFoundError(f"{what}: {index} names {len(missing)} shard(s) that are "
                            f"missing: {', '.join(missing)}. Download every file its "
                            "weight_map lists into the same directory.")
  return files


class CheckpointReader:
  """Key -> tensor access over one or several safetensors files, read lazily."""

  def __init__(self, files: Sequence[str]):
    safe_open = errors.import_optional("safetensors", "text").safe_open
    self.files = list(files)
    self._handles = {}
    self._where: Dict[str, str] = {}
    for f in self.files:
      try:
        handle = safe_open(f, framework="numpy")
      except Exception as e:  # SafetensorError and OSError alike
        raise ValueError(f"{f} could not be read as a safetensors file: {e}") from e
      self._handles[f] = handle
      for key in handle.keys():
        self._where[key] = f

  @property
  def source(self) -> str:
    """The file, or the directory and shard count, for messages."""
    if len(self.files) == 1:
      return self.files[0]
    return f"{os.path.dirname(self.files[0])} ({len(self.files)} shards)"

  def keys(self) -> List[str]:
    return sorted(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def shape(self, key: str) -> Tuple[int, ...]:
    return tuple(self._handles[self._where[key]].get_slice(key).get_shape())

  def get(self, key: str) -> np.ndarray:
    return self._handles[self._where[key]].get_tensor(key)


def _layout_shape(shape: Tuple[int, ...], transpose) -> Tuple[int, ...]:
  """The checkpoint's shape of a parameter of Linen shape ``shape``."""
  if isinstance(transpose, str):
    if transpose != CONV_1X1:
      raise AssertionError(f"unknown layout {transpose!r}")
    return tuple(reversed(shape)) + (1, 1)
  if transpose is True:
    return tuple(reversed(shape))
  if transpose:
    return tuple(shape[int(i)] for i in np.argsort(transpose))
  return tuple(shape)


def _to_linen(arr: np.ndarray, transpose) -> np.ndarray:
  if isinstance(transpose, str):  # CONV_1X1
    return arr.reshape(arr.shape[:2]).T
  if transpose is True:
    return arr.T
  return np.transpose(arr, transpose) if transpose else arr


def _parts(key, shape: Tuple[int, ...]) -> List[Tuple[str, Tuple[int, ...]]]:
  """(checkpoint key, Linen shape) of each tensor a parameter of ``shape`` is made of:
  one, or the equal shares of the last axis of a tuple of keys."""
  if isinstance(key, str):
    return [(key, shape)]
  if shape[-1] % len(key):
    raise AssertionError(f"{len(key)} keys cannot share the last axis of {shape}")
  return [(k, shape[:-1] + (shape[-1] // len(key),)) for k in key]


def checkpoint_shapes(key_map: KeyMap, expected: Mapping[Path, Tuple[int, ...]]
                      ) -> Dict[str, Tuple[int, ...]]:
  """Checkpoint key -> the shape ``key_map`` expects of it (for parameters of
  ``expected`` shapes)."""
  return {key: _layout_shape(shape, transpose) for path, (keys, transpose) in key_map.items()
          for key, shape in _parts(keys, tuple(expected[path]))}


def check_tensors(reader: CheckpointReader, key_map: KeyMap,
                  expected: Mapping[Path, Tuple[int, ...]], *, model: str,
                  owned_prefixes: Iterable[str] = (), ignore: Iterable[str] = (),
                  hint: Optional[Callable[[CheckpointReader], str]] = None) -> None:
  """Checks every tensor of ``key_map`` against ``expected`` without reading any
  (the arguments as `convert_tensors`'s).

  Raises:
    ValueError: tensors are missing, unexpected, or of the wrong shape.
  """
  if set(key_map) != set(expected):
    raise AssertionError(f"key map and module disagree: "
                         f"{sorted(set(key_map) ^ set(expected))[:5]}")
  wanted = checkpoint_shapes(key_map, expected)
  missing = [key for key in wanted if key not in reader]
  if missing:
    raise ValueError(
        f"{reader.source} is not a {model} checkpoint: {len(missing)} of its "
        f"{len(wanted)} tensors are missing, e.g. {', '.join(missing[:3])}.")
  used = set(wanted) | set(ignore)
  prefixes = tuple(owned_prefixes)
  extra = [k for k in reader.keys() if prefixes and k.startswith(prefixes) and k not in used]
  bad = [f"{key} has shape {reader.shape(key)}, {model} expects {want}"
         for key, want in wanted.items() if reader.shape(key) != want]
  if bad or extra:
    lines = bad[:4] + ([f"... and {len(bad) - 4} more"] if len(bad) > 4 else [])
    if extra:
      lines.append(f"{len(extra)} tensor(s) {model} has no place for, e.g. "
                   f"{', '.join(extra[:3])}")
    tip = f" {hint(reader)}" if hint else ""
    raise ValueError(f"{reader.source} does not fit {model}:\n  " + "\n  ".join(lines) + tip)


def convert_tensors(reader: CheckpointReader, key_map: KeyMap,
                    expected: Mapping[Path, Tuple[int, ...]], *, model: str,
                    owned_prefixes: Iterable[str] = (), ignore: Iterable[str] = (),
                    hint: Optional[Callable[[CheckpointReader], str]] = None,
                    dtype=jnp.float32) -> dict:
  """Checks every tensor of ``key_map`` against ``expected``, then loads them.

  Args:
    reader: the checkpoint.
    key_map: Linen path -> (checkpoint key or keys, transpose).
    expected: Linen path -> shape, e.g. from ``jax.eval_shape`` of the module's init.
    model: the model's name for messages ("t5_v1_1_small").
    owned_prefixes: checkpoint keys under these prefixes belong to this model; one
      that ``key_map`` does not use (a 9th layer of an 8-layer model) is an error.
    ignore: keys under ``owned_prefixes`` that are known and unused.
    hint: returns a sentence appended to shape errors (e.g. which size it looks like).
    dtype: dtype of the returned parameters.

  Returns:
    The nested parameter dict (plain ``jax.Array`` leaves).

  Raises:
    ValueError: tensors are missing, unexpected, or of the wrong shape.
  """
  check_tensors(reader, key_map, expected, model=model, owned_prefixes=owned_prefixes,
                ignore=ignore, hint=hint)
  flat = {}
  for path, (keys, transpose) in key_map.items():
    arrs = [_to_linen(reader.get(key), transpose)
            for key, _ in _parts(keys, tuple(expected[path]))]
    arr = arrs[0] if len(arrs) == 1 else np.concatenate(arrs, axis=-1)
    flat[path] = jnp.asarray(arr, dtype=dtype)
  return traverse_util.unflatten_dict(flat)


def flat_shapes(tree) -> Dict[Path, Tuple[int, ...]]:
  """Path -> shape of a (possibly boxed, abstract) parameter tree."""
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(meta.unbox(tree))
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}
