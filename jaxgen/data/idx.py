"""Reader for the IDX format of (Fashion-)MNIST, with checks that name the bad file."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np


from jaxgen.errors import DataError  # noqa: F401  (re-exported)


_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str, expect_ndim: int, fix: str = "") -> np.ndarray:
  """Reads a (gzipped) IDX file; raises DataError naming ``path`` if it is corrupt."""
  if not os.path.isfile(path):
    raise DataError(f"Data file {path} does not exist. {fix}")
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f"Data file {path} is truncated or not a valid gzip file ({e}). "
                    f"{fix}") from None
  if len(raw) < 4:
    raise DataError(f"Data file {path} is too short to be an IDX file. {fix}")
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code not in _DTYPES or ndim != expect_ndim:
    raise DataError(f"Data file {path} is not an IDX file of {expect_ndim} dimensions "
                    f"(magic {raw[:4].hex()}). {fix}")
  header = 4 + 4 * ndim
  dims = struct.unpack(">" + "I" * ndim, raw[4:header])
  dtype = np.dtype(_DTYPES[dtype_code])
  need = int(np.prod(dims)) * dtype.itemsize
  if len(raw) - header != need:
    raise DataError(f"Data file {path} is truncated or padded: header says {dims} "
                    f"({need} bytes) but it holds {len(raw) - header}. {fix}")
  return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
