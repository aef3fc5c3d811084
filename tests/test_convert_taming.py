"""taming-transformers' VQGAN (jaxgen.convert.taming, `jaxgen convert --from taming`):
the official ``VQModel`` at a tiny size with random weights, saved as a Lightning
``.ckpt`` (tests/data/make_taming_reference.py: callbacks keyed by a Lightning class,
optimizer states, ``loss.*`` tensors beside the ``state_dict``), is read without torch
and converted; jaxgen's VQGAN then gives taming's code indices exactly (also on a 32x16
image, where taming's fixed resolution still puts the attention at level 1: slow tier),
and its reconstruction and the decoding of given codes to 1e-4 (fp32; measured
7e-6, 6e-6; 9e-6 on the 32x16 image). A wrong
shape, a missing or an extra tensor is an error naming the key and both shapes; a
pickled object where a tensor should be is named. The converted run is a frozen VQ
tokenizer (slow tier)."""

import os
import pickle
import re
import sys
import types
import zipfile

import jax
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import safetensors_io, taming, torch_pickle

DATA = os.path.join(ROOT, "tests", "data")
CKPT = os.path.join(DATA, "taming_tiny_official.ckpt")
# tests/data/make_taming_reference.py's DDCONFIG, as a taming model.yaml
MODEL_YAML = """model:
  base_learning_rate: 4.5e-6
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 4
    n_embed: 16
    ddconfig:
      double_z: False
      z_channels: 8
      resolution: 16
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: [8]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
"""


def _reference():
  with np.load(os.path.join(DATA, "taming_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def test_converted_vqgan_equals_taming():
  fields, params, notes = taming.load_taming(CKPT)
  assert "pytorch_lightning" not in sys.modules  # the callbacks' class was never imported
  assert notes == [
      "skipped the checkpoint's training entries callbacks, epoch, global_step, "
      "lr_schedulers, optimizer_states, pytorch-lightning_version (not read)",
      "ignored 10 loss.* tensors (the training loss: LPIPS and the PatchGAN "
      "discriminator, not part of the tokenizer)"]
  assert {k: fields[k] for k in ("channels", "channel_mult", "num_res_blocks",
                                 "attn_resolutions", "resolution", "z_channels",
                                 "embed_dim", "codebook_size")} == dict(
      channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,),
      resolution=256, z_channels=8, embed_dim=4, codebook_size=16)  # = level 1 attends
  module, ref = taming.build_module(fields), _reference()

  def encode(m, x):  # Autoencoder.encode, keeping the quant_conv features
    h = m.encode_features(x)
    return h, m.quantizer(h)[1]["indices"]

  @jax.jit
  def run(variables, x, codes):
    h, indices = module.apply(variables, x, method=encode)
    decoded = module.apply(variables, jax.numpy.concatenate([indices, codes]),
                           method="decode_codes")  # one decoder call for both
    return h, indices, decoded[:len(x)], decoded[len(x):]

  h, indices, rec, decoded = run(taming.variables(fields, params), _nhwc(ref["x"]),
                                 ref["codes"])
  np.testing.assert_array_equal(indices, ref["indices"])
  assert len(np.unique(ref["indices"])) > 8  # many codes in use
  for name, got, want in (("h", h, ref["h"]), ("rec", rec, ref["rec"]),
                          ("decoded", decoded, ref["decoded"])):
    print(f"{name}: max abs diff {np.abs(_nchw(got) - want).max():.2e}")
    np.testing.assert_allclose(_nchw(got), want, atol=1e-4, rtol=0, err_msg=name)
    assert float(np.abs(want).mean()) > 0.05  # a real output, not a zero-init one


def _torch_zip(path, obj):
  """``obj`` pickled as a torch zip checkpoint (no tensors: enough for the reader)."""
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
  return str(path)


def test_wrong_missing_or_extra_tensors_and_objects_are_named(tmp_path, monkeypatch):
  state, _ = torch_pickle.read_lightning_state_dict(CKPT)
  fields = taming.infer_fields(torch_pickle.StateDictReader(state, "tiny"))
  expected, name = taming.expected_shapes(fields), taming.model_name(fields)

  def check(st):
    reader = torch_pickle.StateDictReader(st, "tiny")
    safetensors_io.check_tensors(reader, taming.key_map(fields, reader), expected,
                                 model=name, owned_prefixes=taming.OWNED)

  check(state)
  key = "decoder.up.1.attn.0.k.weight"
  with pytest.raises(ValueError, match=re.escape(f"{key} has shape (64, 32, 1, 1), the "
                                                 "VQGAN") + r".* expects \(64, 64, 1, 1\)"):
    check(dict(state, **{key: np.zeros((64, 32, 1, 1), np.float32)}))
  with pytest.raises(ValueError, match=r"1 of its \d+ tensors are missing, e\.g\. "
                     r"quantize\.embedding\.weight"):
    check({k: v for k, v in state.items() if k != taming.CODEBOOK})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. quantize\.used"):
    check(dict(state, **{"quantize.used": np.zeros((16,), np.float32)}))
  with pytest.raises(ValueError, match="not a taming VQGAN checkpoint"):
    taming.load_taming(os.path.join(DATA, "dit_tiny_official.pt"))
  # a pickled object where a tensor or a state dict should be: named, never run
  lightning = types.ModuleType("fake_lightning")

  class Callback:
    pass

  Callback.__module__, Callback.__qualname__ = "fake_lightning", "Callback"
  lightning.Callback = Callback
  monkeypatch.setitem(sys.modules, "fake_lightning", lightning)
  path = _torch_zip(tmp_path / "a.ckpt", {"state_dict": {"encoder.conv_in.weight": 1.5},
                                          "callbacks": {Callback: {"best": 0.5}}})
  with pytest.raises(ValueError, match="state dict entry 'encoder.conv_in.weight' is a "
                     "float, not a tensor"):
    taming.load_taming(path)
  path = _torch_zip(tmp_path / "b.ckpt", Callback())
  with pytest.raises(ValueError, match="holds a pickled fake_lightning.Callback object, "
                     "not a state dict"):
    taming.load_taming(path)
  with pytest.raises(ValueError, match="refusing to load global fake_lightning.Callback"):
    torch_pickle.read_state_dict(path)  # the strict reader refuses it


@pytest.mark.slow
def test_model_yaml_gives_the_same_vqgan(tmp_path):
  """With the checkpoint's model.yaml the sizes are taming's own (resolution 16,
  attention at 8): the same levels attend, the same parameters; on a 32x16 image
  (level 1 is 16 high, but attends by taming's fixed resolution) the same codes and
  reconstruction (VQModel.forward's)."""
  yaml_path = tmp_path / "model.yaml"
  yaml_path.write_text(MODEL_YAML)
  fields, params, _ = taming.load_taming(CKPT, str(yaml_path))
  assert (fields["resolution"], fields["attn_resolutions"]) == (16, (8,))
  _, want, _ = taming.load_taming(CKPT)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  ref = _reference()
  module, variables = taming.build_module(fields), taming.variables(fields, params)
  got = jax.jit(lambda v, x: module.apply(v, x))(variables, _nhwc(ref["x_tall"]))
  np.testing.assert_array_equal(got[1]["indices"], ref["indices_tall"])
  print(f"rec_tall: max abs diff {np.abs(_nchw(got[0]) - ref['rec_tall']).max():.2e}")
  np.testing.assert_allclose(_nchw(got[0]), ref["rec_tall"], atol=1e-4, rtol=0)
  yaml_path.write_text(MODEL_YAML.replace("vqgan.VQModel", "vqgan.GumbelVQ"))
  with pytest.raises(ValueError, match="not Gumbel"):
    taming.load_taming(CKPT, str(yaml_path))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The tiny VQGAN converted by `jaxgen convert --from taming` (once per module)."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path_factory.mktemp("taming") / "vqgan")
  assert cli.main(["convert", "--from", "taming", "--ckpt", CKPT, "--out", wd]) == 0
  return wd


@pytest.mark.slow
def test_converted_run_is_a_frozen_vq_tokenizer(run_dir):
  """The run loads as a frozen VQ tokenizer (ImageNet 256x256 by default) whose codes
  and decodes are taming's; its config is taming's recipe with the checkpoint's sizes."""
  from jaxgen.tokenizers import base  # pylint: disable=import-outside-toplevel
  tok = base.Tokenizer.from_workdir(run_dir)
  assert (tok.kind, tok.image_shape, tok.step) == ("vq", (256, 256, 3), 0)
  assert tok.config.model.resolution == 256 and tok.config.model.codebook_size == 16
  ref = _reference()
  np.testing.assert_array_equal(tok.encode(_nhwc(ref["x_tall"])), ref["indices_tall"])
  np.testing.assert_allclose(tok.decode(ref["codes"]), np.clip(_nhwc(ref["decoded"]), -1, 1),
                             atol=1e-4, rtol=0)


@pytest.mark.slow
def test_convert_errors_are_one_line(tmp_path, capsys):
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "x")
  for argv, says in (
      (["--from", "taming", "--ckpt", CKPT, "--out", out, "--config",
        str(tmp_path / "none.yaml")], "no such file"),
      (["--from", "taming", "--ckpt", os.path.join(DATA, "dit_tiny_official.pt"), "--out",
        out], "not a taming VQGAN checkpoint"),
      (["--from", "sd-vae", "--ckpt", CKPT, "--out", out, "--config", "m.yaml"],
       "--config is for --from taming")):
    assert cli.main(["convert"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error:") and err.count("\n") == 1 and says in err, err


@pytest.mark.slow
@pytest.mark.parametrize("codes,official", [(1024, 72_141_699), (16384, 76_073_859)])
def test_sizes_from_shapes_at_the_published_sizes(codes, official):
  """A state dict of vqgan_imagenet_f16_1024's (_16384's) shapes (no data: broadcast
  zeros; with loss.* tensors) is the taming_f16_1024 (_16384) variant and fits it tensor
  for tensor; its count is the official VQModel's without the loss (printed by
  ``make_taming_reference.py --count``)."""
  fields = dict(name="vqgan", variant=None, arch="conv", mid_attn=True, codebook_size=codes,
                code_dim=256, bottleneck="vq", in_channels=3, prefix="", **taming.PUBLISHED)
  expected = taming.expected_shapes(fields)
  state = {k: np.broadcast_to(np.float32(0), shape) for k, shape in
           safetensors_io.checkpoint_shapes(taming.key_map(fields), expected).items()}
  assert sum(v.size for v in state.values()) == official
  state["loss.discriminator.main.0.weight"] = np.zeros((64, 3, 4, 4), np.float32)
  reader = torch_pickle.StateDictReader(state, "published")
  got = taming.infer_fields(reader)
  assert got == dict(fields, variant=f"taming_f16_{codes}")
  safetensors_io.check_tensors(reader, taming.key_map(got, reader), expected,
                               model=taming.model_name(got), owned_prefixes=taming.OWNED)
