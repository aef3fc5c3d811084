"""PyTorch checkpoints read without torch: ``torch.save`` files (the zip format since
1.6 and the older single-stream format) through a restricted unpickler that rebuilds
tensors (as NumPy arrays) and plain containers only, and refuses anything else.

  state = read_state_dict("weights.pth")   # {name: np.ndarray}
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import zipfile
from typing import Dict, Optional, Tuple

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


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a state dict; refuses every global but tensors, storages, OrderedDict."""

  def __init__(self, file):
    super().__init__(file, encoding="utf-8")
    self.storages: Dict[str, _Storage] = {}

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
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


def _resolve(obj, data: Dict[str, np.ndarray]):
  if isinstance(obj, _PendingTensor):
    return obj.materialize(data)
  if isinstance(obj, dict):
    return {k: _resolve(v, data) for k, v in obj.items()}
  return obj


def _read_torch_zip(zf: zipfile.ZipFile, pkl_name: str):
  prefix = pkl_name[:-len("data.pkl")]
  with zf.open(pkl_name) as f:
    unpickler = _TorchUnpickler(f)
    obj = unpickler.load()
  order = "<"
  if prefix + "byteorder" in zf.namelist():
    order = ">" if zf.read(prefix + "byteorder").strip() == b"big" else "<"
  data = {}
  for key, st in unpickler.storages.items():
    raw = zf.read(f"{prefix}data/{key}")
    data[key] = np.frombuffer(raw, st.dtype.newbyteorder(order), count=st.numel)
  return _resolve(obj, data)


def _read_torch_legacy(path: str):
  """The pre-1.6 ``torch.save`` stream: magic, version, sys info, object, storage keys,
  then per storage an int64 element count and its raw bytes."""
  with open(path, "rb") as f:
    if _TorchUnpickler(f).load() != _LEGACY_MAGIC:
      raise ValueError(f"{path} is neither a torch checkpoint, a zip nor an .npz file.")
    _TorchUnpickler(f).load()  # protocol version
    sys_info = _TorchUnpickler(f).load()
    order = "<" if sys_info.get("little_endian", True) else ">"
    unpickler = _TorchUnpickler(f)
    obj = unpickler.load()
    keys = _TorchUnpickler(f).load()
    data = {}
    for key in keys:
      st = unpickler.storages[str(key)]
      numel = int(np.frombuffer(f.read(8), order + "i8")[0])
      dtype = st.dtype.newbyteorder(order)
      data[str(key)] = np.frombuffer(f.read(numel * dtype.itemsize), dtype, count=numel)
  return _resolve(obj, data)


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Name -> numpy array from a torch checkpoint (zip or legacy) or an ``.npz``."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      pkls = sorted((n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"),
                    key=len)
      if pkls:
        try:
          state = _read_torch_zip(zf, pkls[0])
        except (pickle.UnpicklingError, EOFError, KeyError) as e:
          raise ValueError(f"{path} could not be read as a torch checkpoint: {e}") from e
      else:
        with np.load(path) as f:
          state = {k: f[k] for k in f.files}
  else:
    try:
      state = _read_torch_legacy(path)
    except (pickle.UnpicklingError, EOFError, KeyError) as e:
      raise ValueError(f"{path} could not be read as a torch checkpoint: {e}") from e
  if not isinstance(state, dict):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
  return state




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
