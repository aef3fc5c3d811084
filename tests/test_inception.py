"""FID Inception-v3: weight loading without torch (npz, torch zip, legacy torch stream),
parameter count, and forward passes against an independent NumPy reference.

No real weights can be downloaded here, so random weights are written in the
pytorch-fid state-dict layout (names / shapes taken from the module's own tree through
the inverse name mapping) by small writers that follow ``torch.save``'s formats.
"""

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from jaxgen.eval import frechet
from jaxgen.eval import inception as inc

# --------------------------------------------------------------- random state dicts


def _random_state_dict(seed=0):
  """Plausible random weights (He-scaled convs, BN stats near identity), float32."""
  rng = np.random.default_rng(seed)
  out = collections.OrderedDict()
  for name, shape in inc.torch_state_dict_shapes().items():
    if name.endswith("conv.weight"):
      a = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    elif name.endswith(("bn.weight", "running_var")):
      a = rng.uniform(0.5, 1.5, shape)
    elif name == "fc.weight":
      a = rng.normal(0, 1 / np.sqrt(shape[1]), shape)
    else:  # bn.bias, running_mean, fc.bias
      a = rng.normal(0, 0.1, shape)
    out[name] = a.astype(np.float32)
  return out


# ------------------------------------------------- torch.save-format writers (no torch)

_FAKE_TORCH, _FAKE_UTILS = "_fake_torch_for_test", "_fake_torch_utils_for_test"
_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


@contextlib.contextmanager
def _fake_torch_modules():
  """Registers stand-ins under private names so the stdlib pickler can emit globals;
  the names are rewritten to ``torch`` / ``torch._utils`` in the bytes afterwards."""
  torch_mod, utils_mod = types.ModuleType(_FAKE_TORCH), types.ModuleType(_FAKE_UTILS)
  for cls_name in _STORAGE_NAMES.values():
    setattr(torch_mod, cls_name, type(cls_name, (), {"__module__": _FAKE_TORCH}))

  def _rebuild_tensor_v2(*args):
    raise AssertionError("only for pickling")
  _rebuild_tensor_v2.__module__ = _FAKE_UTILS
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
  sys.modules[_FAKE_TORCH], sys.modules[_FAKE_UTILS] = torch_mod, utils_mod
  try:
    yield torch_mod, utils_mod
  finally:
    del sys.modules[_FAKE_TORCH], sys.modules[_FAKE_UTILS]


def _real_globals(data: bytes) -> bytes:
  # Protocol-2 GLOBAL opcodes are "c<module>\n<name>\n": plain text, safe to rewrite.
  data = data.replace(f"c{_FAKE_UTILS}\n".encode(), b"ctorch._utils\n")
  return data.replace(f"c{_FAKE_TORCH}\n".encode(), b"ctorch\n")


class _Storage:
  def __init__(self, key, flat):
    self.key, self.flat = key, flat


class _Tensor:
  """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, storage, offset, size, stride, rebuild):
    self.args = (storage, offset, tuple(size), tuple(stride), False,
                 collections.OrderedDict())
    self.rebuild = rebuild

  def __reduce__(self):
    return self.rebuild, self.args


def _contiguous_stride(shape):
  return tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))


def _tensor_objects(state, rebuild, key_fn):
  """State dict of _Tensor objects over _Storage objects, with a shared storage (offsets)
  and a transposed (non-contiguous) tensor among the plain contiguous ones."""
  out, storages = collections.OrderedDict(), []

  def new_storage(flat):
    storages.append(_Storage(key_fn(len(storages)), np.ascontiguousarray(flat)))
    return storages[-1]

  shared = ("Conv2d_1a_3x3.bn.running_mean", "Conv2d_1a_3x3.bn.running_var")
  both = new_storage(np.concatenate([state[shared[0]], state[shared[1]]]))
  for name, arr in state.items():
    if name in shared:
      offset = 0 if name == shared[0] else len(state[shared[0]])
      out[name] = _Tensor(both, offset, arr.shape, (1,), rebuild)
    elif name == "fc.weight":  # stored column-major: stride (1, rows)
      st = new_storage(arr.T.reshape(-1))
      out[name] = _Tensor(st, 0, arr.shape, (1, arr.shape[0]), rebuild)
    else:
      st = new_storage(arr.reshape(-1))
      out[name] = _Tensor(st, 0, arr.shape, _contiguous_stride(arr.shape), rebuild)
    if name.endswith("bn.running_var"):  # real BN state dicts carry an int64 counter
      counter = name.replace("running_var", "num_batches_tracked")
      out[counter] = _Tensor(new_storage(np.array([7], np.int64)), 0, (), (), rebuild)
  out._metadata = collections.OrderedDict({"": {"version": 1}})
  return out, storages


def _pickle_with_ids(obj, pid_fn) -> bytes:
  buf = io.BytesIO()
  pickler = pickle.Pickler(buf, protocol=2)
  pickler.persistent_id = pid_fn
  pickler.dump(obj)
  return _real_globals(buf.getvalue())


def write_torch_zip(path, state):
  """``torch.save`` >= 1.6 layout: archive/data.pkl with persistent ids
  ('storage', torch.FloatStorage, key, 'cpu', numel) + archive/data/<key> raw LE bytes."""
  with _fake_torch_modules() as (torch_mod, utils_mod):
    objs, storages = _tensor_objects(state, utils_mod._rebuild_tensor_v2, str)

    def pid(o):
      if isinstance(o, _Storage):
        storage_type = getattr(torch_mod, _STORAGE_NAMES[o.flat.dtype])
        return ("storage", storage_type, o.key, "cpu", o.flat.size)
      return None
    data_pkl = _pickle_with_ids(objs, pid)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", data_pkl)
    zf.writestr("archive/byteorder", "little")
    for st in storages:
      zf.writestr(f"archive/data/{st.key}", st.flat.astype(st.flat.dtype.newbyteorder("<"))
                  .tobytes())
    zf.writestr("archive/version", "3\n")


def write_torch_legacy(path, state):
  """Pre-1.6 ``torch.save`` stream: magic, protocol, sys_info, object (6-tuple persistent
  ids), sorted storage keys, then per storage an int64 count and raw bytes."""
  with _fake_torch_modules() as (torch_mod, utils_mod):
    objs, storages = _tensor_objects(state, utils_mod._rebuild_tensor_v2,
                                     lambda i: str(94000000 + 64 * i))

    def pid(o):
      if isinstance(o, _Storage):
        storage_type = getattr(torch_mod, _STORAGE_NAMES[o.flat.dtype])
        return ("storage", storage_type, o.key, "cpu", o.flat.size, None)
      return None
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        0x1950a86a20f9469cfc6c, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 8}}))
    body = _pickle_with_ids(objs, pid)
  by_key = {st.key: st for st in storages}
  keys = sorted(by_key)
  with open(path, "wb") as f:
    f.write(head + body + pickle.dumps(keys, protocol=2))
    for key in keys:
      flat = by_key[key].flat
      f.write(struct.pack("<q", flat.size) + flat.tobytes())


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  d = tmp_path_factory.mktemp("fid_inception")
  state = _random_state_dict()
  paths = {"npz": str(d / "weights.npz"), "zip": str(d / "pt_inception.pth"),
           "legacy": str(d / "pt_inception_legacy.pth")}
  np.savez(paths["npz"], **state)
  write_torch_zip(paths["zip"], state)
  write_torch_legacy(paths["legacy"], state)
  return state, paths


@pytest.fixture(scope="module")
def variables(weights):
  return inc.load_fid_inception(weights[1]["zip"])


# --------------------------------------------------------------- NumPy reference model


def np_conv_bn(sd, name, x, stride=1, pad=(0, 0)):
  """BasicConv2d in float64 from the PyTorch-layout (OIHW) weights."""
  w = sd[name + ".conv.weight"].astype(np.float64)
  x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
  win = sliding_window_view(x, w.shape[2:], axis=(1, 2))[:, ::stride, ::stride]
  y = np.tensordot(win, w, axes=([3, 4, 5], [1, 2, 3]))
  mean, var = sd[name + ".bn.running_mean"], sd[name + ".bn.running_var"]
  y = (y - mean) / np.sqrt(var.astype(np.float64) + 1e-3)
  return np.maximum(y * sd[name + ".bn.weight"] + sd[name + ".bn.bias"], 0)


def np_avg_pool_3x3(x):
  """3x3/1, pad 1, padding excluded from the count (count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = sliding_window_view(np.pad(x, pad), (3, 3), axis=(1, 2)).sum((-1, -2))
  ones = np.pad(np.ones(x.shape[1:3]), 1)
  count = sliding_window_view(ones, (3, 3)).sum((-1, -2))
  return total / count[None, :, :, None]


def np_max_pool_3x3(x, stride, pad):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
  return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::stride, ::stride].max((-1, -2))


def np_stem(sd, x):
  x = np_conv_bn(sd, "Conv2d_1a_3x3", x, stride=2)
  x = np_conv_bn(sd, "Conv2d_2a_3x3", x)
  x = np_max_pool_3x3(np_conv_bn(sd, "Conv2d_2b_3x3", x, pad=(1, 1)), 2, 0)
  x = np_conv_bn(sd, "Conv2d_4a_3x3", np_conv_bn(sd, "Conv2d_3b_1x1", x))
  return np_max_pool_3x3(x, 2, 0)


def np_block_a(sd, p, x):
  c = lambda n, h, **k: np_conv_bn(sd, f"{p}.{n}", h, **k)  # noqa: E731
  b5 = c("branch5x5_2", c("branch5x5_1", x), pad=(2, 2))
  b3 = c("branch3x3dbl_1", x)
  b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", b3, pad=(1, 1)), pad=(1, 1))
  bp = c("branch_pool", np_avg_pool_3x3(x))
  return np.concatenate([c("branch1x1", x), b5, b3, bp], -1)


def np_block_b(sd, p, x):
  c = lambda n, h, **k: np_conv_bn(sd, f"{p}.{n}", h, **k)  # noqa: E731
  bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x), pad=(1, 1))
  bd = c("branch3x3dbl_3", bd, stride=2)
  return np.concatenate([c("branch3x3", x, stride=2), bd, np_max_pool_3x3(x, 2, 0)], -1)


def np_block_c(sd, p, x):
  c = lambda n, h, **k: np_conv_bn(sd, f"{p}.{n}", h, **k)  # noqa: E731
  row, col = (0, 3), (3, 0)  # padding of the 1x7 and the 7x1 convs
  b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x), pad=row), pad=col)
  bd = c("branch7x7dbl_2", c("branch7x7dbl_1", x), pad=col)
  bd = c("branch7x7dbl_4", c("branch7x7dbl_3", bd, pad=row), pad=col)
  bd = c("branch7x7dbl_5", bd, pad=row)
  bp = c("branch_pool", np_avg_pool_3x3(x))
  return np.concatenate([c("branch1x1", x), b7, bd, bp], -1)


def np_block_d(sd, p, x):
  c = lambda n, h, **k: np_conv_bn(sd, f"{p}.{n}", h, **k)  # noqa: E731
  b3 = c("branch3x3_2", c("branch3x3_1", x), stride=2)
  b7 = c("branch7x7x3_2", c("branch7x7x3_1", x), pad=(0, 3))
  b7 = c("branch7x7x3_4", c("branch7x7x3_3", b7, pad=(3, 0)), stride=2)
  return np.concatenate([b3, b7, np_max_pool_3x3(x, 2, 0)], -1)


def np_block_e(sd, p, x, pool):
  c = lambda n, h, **k: np_conv_bn(sd, f"{p}.{n}", h, **k)  # noqa: E731
  b3 = c("branch3x3_1", x)
  b3 = np.concatenate([c("branch3x3_2a", b3, pad=(0, 1)),
                       c("branch3x3_2b", b3, pad=(1, 0))], -1)
  bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x), pad=(1, 1))
  bd = np.concatenate([c("branch3x3dbl_3a", bd, pad=(0, 1)),
                       c("branch3x3dbl_3b", bd, pad=(1, 0))], -1)
  pooled = np_max_pool_3x3(x, 1, 1) if pool == "max" else np_avg_pool_3x3(x)
  return np.concatenate([c("branch1x1", x), b3, bd, c("branch_pool", pooled)], -1)


def np_resize_matrix(n_in, n_out):
  """PyTorch bilinear, align_corners=False: src = max((i + .5) * n_in / n_out - .5, 0)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = int(src)
    i1, lam = min(i0 + 1, n_in - 1), src - i0
    m[i, i0] += 1 - lam
    m[i, i1] += lam
  return m


def np_preprocess(images):
  x = images.astype(np.float64) / 255.0
  x = np.einsum("oh,nhwc->nowc", np_resize_matrix(x.shape[1], 299), x)
  x = np.einsum("ow,nhwc->nhoc", np_resize_matrix(x.shape[2], 299), x)
  return 2 * x - 1


def np_forward(sd, images):
  """(pool3 features, logits) of the whole FID Inception in float64."""
  x = np_stem(sd, np_preprocess(images))
  for p in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = np_block_a(sd, p, x)
  x = np_block_b(sd, "Mixed_6a", x)
  for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = np_block_c(sd, p, x)
  x = np_block_d(sd, "Mixed_7a", x)
  x = np_block_e(sd, "Mixed_7c", np_block_e(sd, "Mixed_7b", x, "avg"), "max")
  feats = x.mean((1, 2))
  return feats, feats @ sd["fc.weight"].T.astype(np.float64) + sd["fc.bias"]


# ------------------------------------------------------------------------------- tests


def _count_basic_convs():
  """Independent count from torchvision's Inception3 (aux_logits=False): every
  BasicConv2d is (in, out, kh, kw) -> in*out*kh*kw conv weights + 2*out BN affine."""
  convs = [(3, 32, 3, 3), (32, 32, 3, 3), (32, 64, 3, 3), (64, 80, 1, 1), (80, 192, 3, 3)]
  for cin, pool in ((192, 32), (256, 64), (288, 64)):  # InceptionA
    convs += [(cin, 64, 1, 1), (cin, 48, 1, 1), (48, 64, 5, 5), (cin, 64, 1, 1),
              (64, 96, 3, 3), (96, 96, 3, 3), (cin, pool, 1, 1)]
  convs += [(288, 384, 3, 3), (288, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3)]  # B
  for c7 in (128, 160, 160, 192):  # InceptionC
    convs += [(768, 192, 1, 1), (768, c7, 1, 1), (c7, c7, 1, 7), (c7, 192, 7, 1),
              (768, c7, 1, 1), (c7, c7, 7, 1), (c7, c7, 1, 7), (c7, c7, 7, 1),
              (c7, 192, 1, 7), (768, 192, 1, 1)]
  convs += [(768, 192, 1, 1), (192, 320, 3, 3), (768, 192, 1, 1), (192, 192, 1, 7),
            (192, 192, 7, 1), (192, 192, 3, 3)]  # InceptionD
  for cin in (1280, 2048):  # InceptionE
    convs += [(cin, 320, 1, 1), (cin, 384, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1),
              (cin, 448, 1, 1), (448, 384, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1),
              (cin, 192, 1, 1)]
  return len(convs), sum(i * o * h * w + 2 * o for i, o, h, w in convs)


def test_parameter_count():
  # Derivation: torchvision's Inception_V3_Weights meta says num_params = 27,161,264 for
  # inception_v3(aux_logits=True, 1000 classes) (parameters only, no BN buffers). The
  # AuxLogits head holds conv0 768*128 + 2*128 = 98,560, conv1 128*768*5*5 + 2*768 =
  # 2,459,136 and fc 768*1000 + 1000 = 769,000, i.e. 3,326,696; without it 23,834,568
  # (timm lists inception_v3.tv_in1k as 23.8 M). The 1008-class fc adds 8*2048 + 8 =
  # 16,392: 23,850,960. The layer table of `_count_basic_convs` gives the same number.
  # Adding BN running mean + var (2 * 17,216 channels) gives 23,885,392 state-dict floats.
  shapes = inc.variable_shapes()
  sizes = lambda tree: [int(np.prod(s.shape)) for _, s in inc._leaves(tree)]  # noqa: E731
  n_params, n_stats = sum(sizes(shapes["params"])), sum(sizes(shapes["batch_stats"]))
  n_convs, conv_total = _count_basic_convs()
  assert n_params == 23_850_960
  assert n_params == conv_total + 2048 * 1008 + 1008
  assert n_stats == 34_432 and n_params + n_stats == 23_885_392
  assert len(inc.torch_state_dict_shapes()) == 5 * n_convs + 2 == 472


def test_state_dict_names_and_shapes():
  shapes = inc.torch_state_dict_shapes()
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch1x1.bn.running_mean"] == (64,)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
  assert not any("Aux" in k for k in shapes)


@pytest.mark.parametrize("fmt", ["npz", "zip", "legacy"])
def test_loader_reads_every_format(weights, fmt):
  state, paths = weights
  if fmt == "zip":
    with zipfile.ZipFile(paths["zip"]) as zf:
      assert "archive/data.pkl" in zf.namelist()
  variables = inc.load_fid_inception(paths[fmt])
  back = inc.variables_to_state_dict(variables)
  assert set(back) == set(state)
  for name, arr in state.items():
    np.testing.assert_array_equal(back[name], arr, err_msg=name)
  kernel = variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"]
  assert kernel.dtype == np.float32
  oihw = state["Conv2d_1a_3x3.conv.weight"]
  np.testing.assert_array_equal(kernel, oihw.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  bn_stats = variables["batch_stats"]["Mixed_5b"]["branch_pool"]["bn"]
  np.testing.assert_array_equal(bn_stats["var"], state["Mixed_5b.branch_pool.bn.running_var"])


def test_missing_file_names_path_and_source(tmp_path):
  path = str(tmp_path / "nope" / "pt_inception-2015-12-05-6726825d.pth")
  with pytest.raises(FileNotFoundError) as e:
    inc.load_fid_inception(path)
  assert path in str(e.value) and inc.FID_WEIGHTS_URL in str(e.value)
  assert "github.com/mseitzer/pytorch-fid/releases" in inc.FID_WEIGHTS_URL


def test_bad_shape_names_parameter_and_shapes(weights, tmp_path):
  state = dict(weights[0])
  state["Mixed_5b.branch5x5_2.conv.weight"] = np.zeros((64, 48, 3, 3), np.float32)
  path = str(tmp_path / "bad.npz")
  np.savez(path, **state)
  with pytest.raises(ValueError) as e:
    inc.load_fid_inception(path)
  msg = str(e.value)
  assert "Mixed_5b.branch5x5_2.conv.weight" in msg
  assert "(64, 48, 3, 3)" in msg and "(64, 48, 5, 5)" in msg


def test_missing_tensor_is_reported(weights, tmp_path):
  state = dict(weights[0])
  del state["fc.bias"]
  path = str(tmp_path / "short.npz")
  np.savez(path, **state)
  with pytest.raises(ValueError, match="fc.bias"):
    inc.load_fid_inception(path)


class _Evil:
  def __reduce__(self):
    return (os.getcwd, ())


def test_torch_reader_refuses_foreign_globals(tmp_path):
  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
  with pytest.raises(ValueError, match="refusing to load global (posix|os|nt).getcwd"):
    inc.load_fid_inception(path)


@pytest.mark.parametrize("size", [(32, 24), (400, 350)])
def test_resize_matches_pytorch_bilinear(size):
  images = np.random.default_rng(1).integers(0, 256, (1,) + size + (3,), np.uint8)
  got = np.asarray(inc.preprocess(images))
  # Both implementations place samples in float32 (error ~ 299 * 2^-24 in the weights);
  # align_corners=True or antialiasing would be off by > 1e-2.
  np.testing.assert_allclose(got, np_preprocess(images), atol=1e-4)


def test_stem_matches_numpy(variables, weights):
  x = np.random.default_rng(2).uniform(-1, 1, (2, 79, 83, 3)).astype(np.float32)
  got = inc.FIDInceptionV3().apply(variables, x, method=inc.FIDInceptionV3.stem)
  want = np_stem(weights[0], x.astype(np.float64))
  assert got.shape == want.shape == (2, 7, 8, 192)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", ["Mixed_5b", "Mixed_7c"])
def test_block_matches_numpy(variables, weights, block):
  sd = weights[0]
  if block == "Mixed_5b":  # FID InceptionA: avg pool without padding in the count
    module, ref, shape = inc.InceptionA(32), np_block_a, (2, 7, 9, 192)
  else:  # last FID InceptionE: max pool branch
    module, shape = inc.InceptionE("max"), (2, 3, 4, 2048)
    ref = lambda sd, p, x: np_block_e(sd, p, x, "max")  # noqa: E731
  x = np.random.default_rng(3).normal(0, 1, shape).astype(np.float32)
  sub = {c: variables[c][block] for c in ("params", "batch_stats")}
  got = np.asarray(module.apply(sub, x))
  want = ref(sd, block, x.astype(np.float64))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # the default tier's budget: every block vs NumPy above (default), and
# the whole network's features through test_adm.py's sharded extraction (default)
def test_features_match_numpy_and_grey_is_repeated(variables, weights):
  rng = np.random.default_rng(4)
  grey = rng.integers(0, 256, (2, 32, 32, 1), np.uint8)
  rgb = np.concatenate([grey, rng.integers(0, 256, (2, 32, 32, 2), np.uint8)], -1)
  feats, logits = inc.inception_features(rgb, variables, batch_size=2, return_logits=True)
  assert feats.shape == (2, inc.FEATURE_DIM) and feats.dtype == np.float32
  assert logits.shape == (2, inc.NUM_CLASSES) and logits.dtype == np.float32
  want_f, want_l = np_forward(weights[0], rgb)
  scale = np.abs(want_f).max()
  assert np.isfinite(feats).all() and scale > 1e-3
  np.testing.assert_allclose(feats, want_f, rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(logits, want_l, rtol=1e-4, atol=1e-4 * np.abs(want_l).max())
  from_grey = inc.inception_features(grey, variables, batch_size=2)
  from_rgb = inc.inception_features(np.repeat(grey, 3, -1), variables, batch_size=2)
  np.testing.assert_array_equal(from_grey, from_rgb)


def test_rejects_float_images(variables):
  with pytest.raises(ValueError, match="uint8"):
    inc.inception_features(np.zeros((2, 8, 8, 3), np.float32), variables)


def test_fid_from_features_reuses_frechet():
  rng = np.random.default_rng(5)
  a, b = rng.normal(0, 1, (64, 16)), rng.normal(0.5, 1.2, (64, 16))
  assert inc.fid_from_features(a, b) == pytest.approx(frechet.frechet_distance_features(a, b))
  assert inc.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
