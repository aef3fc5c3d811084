"""PyTorch checkpoints read without torch: ``torch.save`` files (the zip format since
1.6 and the older single-stream format) through a restricted unpickler that rebuilds
tensors (as NumPy arrays) and plain containers only, and refuses anything else.

A PyTorch Lightning ``.ckpt`` also holds training state beside its ``state_dict``:
optimizer moments, the epoch, and callbacks keyed by their classes
(``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``), which the strict
reader refuses. `read_lightning_state_dict` reads such a file with inert stand-ins for
every other global (nothing they name is imported or run), takes its ``state_dict``
(whose values must all be tensors) and reads only the tensors in it from the zip.

  state = read_state_dict("weights.pth")   # {name: np.ndarray}
  state, skipped = read_lightning_state_dict("last.ckpt")   # skipped: ["epoch", ...]
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np


_STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2",
                   "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for ``torch.FloatStorage`` & co. in the pickle: just the element type."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass
class _Storage:
  """A storage named by a persistent id; its bytes are read after unpickling."""
  key: str
  dtype: np.dtype
  numel: int
  view: Optional[Tuple[int, int]] = None  # legacy (offset, size) view of the root


@dataclasses.dataclass
class _PendingTensor:
  storage: _Storage
  offset: int
  size: Tuple[int, ...]
  stride: Tuple[int, ...]

  def materialize(self, data: Dict[str, np.ndarray]) -> np.ndarray:
    flat = data[self.storage.key]
    if self.storage.view is not None:
      start, length = self.storage.view
      flat = flat[start:start + length]
    size, stride = tuple(self.size), tuple(self.stride)
    if 0 in size:
      return np.zeros(size, flat.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if self.offset < 0 or last >= len(flat) or min(stride, default=0) < 0:
      raise ValueError(f"tensor of size {size} / stride {stride} at offset {self.offset} "
                       f"does not fit its storage of {len(flat)} elements.")
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], size, [s * flat.itemsize for s in stride], writeable=False)
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class Opaque:
  """An inert stand-in for a global outside the allowlist (a lenient read): the class
  ``stand_in`` makes answers to being called, ``__new__`` and ``__setstate__`` by
  recording its arguments; nothing of the named class or function is imported or run.
  ``origin`` names it ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")."""
  origin = ""

  def __new__(cls, *args, **kwargs):
    del args, kwargs
    return object.__new__(cls)

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"<{self.origin} object>"


def _stand_in(module: str, name: str) -> type:
  return type(name, (Opaque,), {"origin": f"{module}.{name}"})


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a state dict; refuses every global but tensors, storages, OrderedDict
  (``lenient``: gives an inert `Opaque` class for every other one instead)."""

  def __init__(self, file, lenient: bool = False):
    super().__init__(file, encoding="utf-8")
    self.storages: Dict[str, _Storage] = {}
    self.lenient = lenient

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if self.lenient:
      return _stand_in(module, name)
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of "
                                 "a plain tensor state dict.")

  def persistent_load(self, pid):
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage" or not isinstance(pid[1], _StorageType):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid[:2]!r}.")
    storage_type, key, _, numel = pid[1:5]
    key = str(key)
    root = self.storages.setdefault(key, _Storage(key, storage_type.dtype, int(numel)))
    view = pid[5] if len(pid) > 5 else None  # legacy: (view_key, offset, size)
    if view is None:
      return root
    return _Storage(key, root.dtype, int(view[2]), (int(view[1]), int(view[2])))


def _resolve(obj, data):
  """``obj`` with its tensors materialised (``data``: storage key -> flat array, a
  mapping that may read storages on demand)."""
  if isinstance(obj, _PendingTensor):
    return obj.materialize(data)
  if isinstance(obj, dict):
    return {k: _resolve(v, data) for k, v in obj.items()}
  return obj


class _ZipStorages:
  """Storage key -> flat array, each read from the zip when first asked for (a
  Lightning checkpoint's optimizer moments are never read)."""

  def __init__(self, zf: zipfile.ZipFile, prefix: str, storages: Dict[str, _Storage]):
    self.zf, self.prefix, self.storages, self.cache = zf, prefix, storages, {}
    self.order = "<"
    if prefix + "byteorder" in zf.namelist():
      self.order = ">" if zf.read(prefix + "byteorder").strip() == b"big" else "<"

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.cache:
      st = self.storages[key]
      raw = self.zf.read(f"{self.prefix}data/{key}")
      self.cache[key] = np.frombuffer(raw, st.dtype.newbyteorder(self.order), count=st.numel)
    return self.cache[key]


def _load_torch_zip(zf: zipfile.ZipFile, pkl_name: str, lenient: bool = False):
  """(the unpickled object with pending tensors, its storages)."""
  prefix = pkl_name[:-len("data.pkl")]
  with zf.open(pkl_name) as f:
    unpickler = _TorchUnpickler(f, lenient)
    obj = unpickler.load()
  return obj, _ZipStorages(zf, prefix, unpickler.storages)


def _load_torch_legacy(path: str, lenient: bool = False):
  """The pre-1.6 ``torch.save`` stream: magic, version, sys info, object, storage keys,
  then per storage an int64 element count and its raw bytes. (object, storages)."""
  with open(path, "rb") as f:
    if _TorchUnpickler(f).load() != _LEGACY_MAGIC:
      raise ValueError(f"{path} is neither a torch checkpoint, a zip nor an .npz file.")
    _TorchUnpickler(f).load()  # protocol version
    sys_info = _TorchUnpickler(f).load()
    order = "<" if sys_info.get("little_endian", True) else ">"
    unpickler = _TorchUnpickler(f, lenient)
    obj = unpickler.load()
    keys = _TorchUnpickler(f).load()
    data = {}
    for key in keys:
      st = unpickler.storages[str(key)]
      numel = int(np.frombuffer(f.read(8), order + "i8")[0])
      dtype = st.dtype.newbyteorder(order)
      data[str(key)] = np.frombuffer(f.read(numel * dtype.itemsize), dtype, count=numel)
  return obj, data


def _load(path: str, lenient: bool, use):
  """``use(object, storages)`` of a torch checkpoint (zip or legacy) at ``path``, or of
  an ``.npz`` file's arrays (no storages); unpickling errors as ValueError."""
  try:
    if not zipfile.is_zipfile(path):
      return use(*_load_torch_legacy(path, lenient))
    with zipfile.ZipFile(path) as zf:
      pkls = sorted((n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"),
                    key=len)
      if pkls:
        return use(*_load_torch_zip(zf, pkls[0], lenient))
  except (pickle.UnpicklingError, EOFError, KeyError) as e:
    raise ValueError(f"{path} could not be read as a torch checkpoint: {e}") from e
  with np.load(path) as f:
    return use({k: f[k] for k in f.files}, {})


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Name -> numpy array from a torch checkpoint (zip or legacy) or an ``.npz``."""
  state = _load(path, False, _resolve)
  if not isinstance(state, dict):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
  return state


def _describe(obj) -> str:
  if isinstance(obj, type) and issubclass(obj, Opaque):
    return f"the class {obj.origin}"
  if isinstance(obj, Opaque):
    return f"a pickled {obj.origin} object"
  return f"a {type(obj).__name__}"


def read_lightning_state_dict(path: str) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """``(state dict, skipped)`` of a PyTorch Lightning ``.ckpt`` (its ``state_dict``; the
  other top-level entries, named in ``skipped``, are not read: epoch, optimizer states,
  callbacks, ...) or of a plain state dict (``skipped`` empty). Globals outside the
  allowlist become inert stand-ins (`Opaque`), never run.

  Raises:
    ValueError: the file is not a torch checkpoint, holds no dict, or its state dict
      holds something other than tensors (named with its key).
  """
  def use(obj, storages):
    if not isinstance(obj, dict):
      raise ValueError(f"{path} holds {_describe(obj)}, not a state dict or a Lightning "
                       "checkpoint (a dict with a 'state_dict').")
    skipped = []
    if isinstance(obj.get("state_dict"), dict):
      skipped = sorted(str(k) for k in obj if k != "state_dict")
      obj = obj["state_dict"]
    bad = [(k, v) for k, v in obj.items() if not isinstance(v, _PendingTensor)
           and not isinstance(v, np.ndarray)]
    if bad:
      key, value = bad[0]
      raise ValueError(f"{path}: its state dict entry {key!r} is {_describe(value)}, not "
                       f"a tensor ({len(bad)} such entries); save the model's "
                       "state_dict() alone.")
    return _resolve(obj, storages), skipped
  return _load(path, True, use)




class StateDictReader:
  """The `safetensors_io.CheckpointReader` interface (source, keys, shape, get) over a
  state dict in memory, e.g. one `read_state_dict` read."""

  def __init__(self, state: Dict[str, np.ndarray], source: str):
    self.state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    self.source = source

  def keys(self):
    return sorted(self.state)

  def __contains__(self, key: str) -> bool:
    return key in self.state

  def shape(self, key: str) -> Tuple[int, ...]:
    return tuple(self.state[key].shape)

  def get(self, key: str) -> np.ndarray:
    return self.state[key]
