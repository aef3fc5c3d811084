"""MAGE's own VQGAN (jaxgen.convert.mage_vq, `jaxgen convert --from mage-vq`): a small
``VQModel`` LTH14/mage's PyTorch port of MaskGIT's VQGAN built with random weights and
saved as its ``vqgan_jax_strongaug.ckpt`` is (tests/data/make_mage_vq_reference.py) is
read without torch and converted onto jaxgen's MaskGIT-layout VQGAN, which then gives
the official codes exactly and its decodings to 1e-4 (fp32). A wrong shape, a missing
or an extra tensor, a file of another model or a mid-block count jaxgen's layout cannot
hold is an error naming the key (and both shapes). Slow tier: the converted run is a
frozen VQ tokenizer with those codes, CLI errors are one line, the official size is the
``maskgit_f16`` variant with the official module's parameter count, and a converted
MAGE run samples through a converted MAGE VQGAN."""

import os
import re

import jax
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import mage_vq, maskgit, torch_pickle

DATA = os.path.join(ROOT, "tests", "data")
CKPT = os.path.join(DATA, "mage_vq_tiny_official.ckpt")
# The official VQModel at MAGE's config/vqgan.yaml size (make_mage_vq_reference.py --count)
OFFICIAL_PARAMETERS = 54_515_587


def _reference():
  with np.load(os.path.join(DATA, "mage_vq_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _variables(params, fields):
  """The autoencoder's variables: the parameters and zero codebook-usage statistics."""
  usage = np.zeros((fields["codebook_size"],), np.float32)
  return {"params": params, "vq_stats": {"quantizer": {"usage": usage}}}


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def _write(tmp_path, state, name="ckpt.npz"):
  """A state dict as a file jaxgen's torch reader takes (an .npz of the tensors)."""
  path = str(tmp_path / name)
  np.savez(path, **state)
  return path


def test_converted_tokenizer_equals_mage():
  """MAGE feeds its VQGAN images in [0, 1] (jaxgen's nets take [-1, 1] and map them
  there, ``unit_range``); the codes are ``VQModel.encode``'s, the decodings of given
  codes ``gen_img_uncond.py``'s (``decode(get_codebook_entry(codes))``)."""
  fields, params, notes = mage_vq.load_tokenizer(CKPT)
  assert (fields["layout"], fields["channels"], fields["channel_mult"],
          fields["num_res_blocks"], fields["codebook_size"], fields["code_dim"],
          fields["quant_proj"], fields["unit_range"], notes) == (
              "maskgit", 32, (1, 2), 2, 16, 8, False, True, [])
  module = maskgit.build_tokenizer(fields)
  ref = _reference()
  codes, decoded = jax.jit(lambda v, x, i: (
      module.apply(v, x, method="encode"), module.apply(v, i, method="decode_codes")))(
          _variables(params, fields), 2.0 * _nhwc(ref["x"]) - 1.0, ref["codes"])
  np.testing.assert_array_equal(np.asarray(codes), ref["indices"])
  assert len(np.unique(ref["indices"])) == fields["codebook_size"]  # every code used
  got = (np.asarray(decoded).transpose(0, 3, 1, 2) + 1.0) / 2.0
  print(f"decoded: max abs diff {np.abs(got - ref['decoded']).max():.2e}")
  np.testing.assert_allclose(got, ref["decoded"], atol=1e-4, rtol=0)
  assert float(ref["decoded"].std()) > 0.1  # a real output, not a zero-init one


def test_wrong_missing_or_extra_tensors_are_named(tmp_path):
  state = torch_pickle.read_state_dict(CKPT)
  key = "decoder.up.0.block.0.nin_shortcut.weight"  # the shortcut (width 64 -> 32)
  assert state[key].shape == (32, 32, 1, 1)
  with pytest.raises(ValueError, match=re.escape(f"{key} has shape (32, 64, 1, 1), ") +
                     r"MAGE's VQGAN .* expects \(32, 32, 1, 1\)"):
    mage_vq.load_tokenizer(_write(tmp_path, dict(state, **{key: np.zeros(
        (32, 64, 1, 1), np.float32)})))
  missing = {k: v for k, v in state.items() if k != "encoder.norm_out.bias"}
  with pytest.raises(ValueError, match=r"1 of its \d+ tensors are missing, e\.g\. "
                     r"encoder\.norm_out\.bias"):
    mage_vq.load_tokenizer(_write(tmp_path, missing))
  extra = dict(state, **{"encoder.down.0.block.0.conv1.bias": np.zeros((32,), np.float32)})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. "
                     r"encoder\.down\.0\.block\.0\.conv1\.bias"):
    mage_vq.load_tokenizer(_write(tmp_path, extra))
  one_block = {k: v for k, v in state.items() if ".block.1." not in k}
  with pytest.raises(ValueError, match="2 mid blocks with 1 ResNet blocks per level"):
    mage_vq.load_tokenizer(_write(tmp_path, one_block))
  with pytest.raises(ValueError, match="not a MAGE VQGAN checkpoint.*quantize.embedding"):
    mage_vq.load_tokenizer(os.path.join(DATA, "dit_tiny_official.pt"))
  with pytest.raises(FileNotFoundError, match="vqgan_jax_strongaug.ckpt"):
    mage_vq.load_tokenizer(str(tmp_path / "none.ckpt"))
  # a whole MAGE model's state dict: the tokenizer under vqgan., the rest not read
  whole = dict({f"vqgan.{k}": v for k, v in state.items()},
               **{"blocks.0.norm1.weight": np.ones((4,), np.float32)})
  fields, params, notes = mage_vq.load_tokenizer(_write(tmp_path, whole))
  assert "vqgan." in notes[0] and "prefix" not in fields
  _, want, _ = mage_vq.load_tokenizer(CKPT)
  jax.tree.map(np.testing.assert_array_equal, params, want)


# ----------------------------------------------------------------------------- slow tier


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The tiny tokenizer converted by `jaxgen convert --from mage-vq` (once)."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path_factory.mktemp("mage_vq") / "vq")
  assert cli.main(["convert", "--from", "mage-vq", "--ckpt", CKPT, "--out", wd]) == 0
  return wd


@pytest.mark.slow
def test_converted_run_is_a_frozen_vq_tokenizer(run_dir):
  """The run loads as a frozen VQ tokenizer (ImageNet 256x256 by default) whose codes
  and reconstructions are MAGE's (its images in [0, 1] are jaxgen's in [-1, 1]); its
  config is the VQGAN recipe with the MaskGIT-layout net (float32, no LPIPS); step 0's
  parameters and EMA are the weights."""
  import json  # pylint: disable=import-outside-toplevel
  from jaxgen.tokenizers import base  # pylint: disable=import-outside-toplevel
  tok = base.Tokenizer.from_workdir(run_dir)
  assert (tok.kind, tok.image_shape, tok.vocab_size, tuple(tok.grid_shape)) == (
      "vq", (256, 256, 3), 16, (128, 128))
  ref = _reference()
  x = 2.0 * _nhwc(ref["x"]) - 1.0
  np.testing.assert_array_equal(np.asarray(tok.encode(x)), ref["indices"])
  np.testing.assert_allclose(tok.decode(ref["codes"]),
                             np.clip(2.0 * _nhwc(ref["decoded"]) - 1.0, -1, 1), atol=1e-4,
                             rtol=0)
  rec = tok.decode(tok.encode(x))  # VQModel.forward's reconstruction, in [-1, 1]
  diff = np.abs(np.asarray(rec) - np.clip(2.0 * _nhwc(ref["rec"]) - 1.0, -1, 1)).max()
  print(f"reconstruction: max abs diff {diff:.2e} (in [-1, 1])")
  assert diff < 2e-4
  c = json.load(open(os.path.join(run_dir, "config.json"), encoding="utf-8"))
  assert (c["paradigm"]["name"], c["model"]["name"], c["model"]["layout"],
          c["model"]["quant_proj"], c["model"]["unit_range"], c["paradigm"]["perceptual"],
          c["train"]["compute_dtype"]) == ("tokenizer", "vqgan", "maskgit", False, True,
                                           "none", "float32")
  _, params, _ = mage_vq.load_tokenizer(CKPT)
  for which in ("raw", "ema"):
    tok = base.Tokenizer.from_workdir(run_dir, params=which)
    assert tok.step == 0
    jax.tree.map(np.testing.assert_array_equal, tok.variables["params"], params)


@pytest.mark.slow
def test_convert_errors_are_one_line(tmp_path, capsys):
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  exists = tmp_path / "exists"
  (exists / "checkpoints").mkdir(parents=True)
  bad = str(tmp_path / "bad")
  with open(bad, "wb") as f:
    f.write(b"\x80\x02 not a checkpoint")
  state = torch_pickle.read_state_dict(CKPT)
  one_block = _write(tmp_path, {k: v for k, v in state.items() if ".block.1." not in k})
  for argv, says in (
      (["--ckpt", CKPT, "--out", str(exists)], "already holds checkpoints"),
      (["--ckpt", bad, "--out", str(tmp_path / "x")], "could not be read as a torch"),
      (["--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "x")], "no such file"),
      (["--ckpt", os.path.join(DATA, "dit_tiny_official.pt"), "--out",
        str(tmp_path / "x")], "not a MAGE VQGAN checkpoint"),
      (["--ckpt", one_block, "--out", str(tmp_path / "x")], "2 mid blocks"),
      (["--ckpt", CKPT, "--out", str(tmp_path / "x"), "--tokenizer", "runs/vq"],
       "for --from dit / mage / maskgit / var"),
      (["--ckpt", CKPT, "--out", str(tmp_path / "x"), "--source-dataset",
        "fashion_mnist"], "encodes 3-channel images, fashion_mnist has 1")):
    assert cli.main(["convert", "--from", "mage-vq"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error: ") and err.count("\n") == 1 and says in err, err


@pytest.mark.slow
def test_official_size_is_the_maskgit_f16_variant():
  """A checkpoint of MAGE's config/vqgan.yaml shapes (no data: broadcast zeros) is the
  maskgit_f16 variant, tensor for tensor, with the official VQModel's 54,515,587
  parameters (counted by make_mage_vq_reference.py --count; jax.eval_shape of jaxgen's
  net gives the same)."""
  from jaxgen.convert import safetensors_io  # pylint: disable=import-outside-toplevel
  from jaxgen.tokenizers import nets  # pylint: disable=import-outside-toplevel
  fields = dict(nets.autoencoder_variant("maskgit_f16"), in_channels=3, code_dim=256,
                name="vqgan", bottleneck="vq", quant_proj=False, unit_range=True,
                variant="maskgit_f16")
  expected = maskgit.tokenizer_shapes(fields)
  assert sum(int(np.prod(s)) for s in expected.values()) == OFFICIAL_PARAMETERS
  state = {k: np.broadcast_to(np.float32(0), shape) for k, shape in
           safetensors_io.checkpoint_shapes(mage_vq.key_map(dict(fields, prefix="")),
                                            expected).items()}
  assert sum(v.size for v in state.values()) == OFFICIAL_PARAMETERS
  assert "encoder.mid.block_2.conv2.weight" in state  # the port's names
  got = mage_vq.infer_fields(torch_pickle.StateDictReader(state, "published"))
  assert got == dict({k: fields[k] for k in got if k != "prefix"}, prefix="")
  assert got["variant"] == "maskgit_f16"


def _f16_checkpoint(tmp_path):
  """A random MAGE-VQGAN-layout checkpoint at f16 (16x16 codes of 256x256 images, the
  grid of the tiny MAGE reference) with its 16 codes: widths 32, 2 blocks."""
  from jaxgen.convert import safetensors_io  # pylint: disable=import-outside-toplevel
  fields = maskgit.tokenizer_fields("f16", channels=32, widths=[32] * 5, num_res_blocks=2,
                                    codebook=(16, 8), encoder_out=8, in_channels=3)
  shapes = safetensors_io.checkpoint_shapes(mage_vq.key_map(dict(fields, prefix="")),
                                            maskgit.tokenizer_shapes(fields))
  rng = np.random.default_rng(0)
  return _write(tmp_path, {k: (rng.standard_normal(s) * 0.1).astype(np.float32)
                           for k, s in shapes.items()}, "f16.ckpt.npz")


@pytest.mark.slow
def test_converted_mage_samples_through_a_converted_mage_vq(tmp_path):
  """`--from mage --tokenizer RUN` with RUN a `--from mage-vq` run: the MAGE run
  records it as its frozen tokenizer and `jaxgen sample` decodes its codes into
  256x256 images through it (tiny MAGE reference, 16x16 codes from 16 entries)."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  from jaxgen.generate import load_run  # pylint: disable=import-outside-toplevel
  tok = str(tmp_path / "vq")
  assert cli.main(["convert", "--from", "mage-vq", "--ckpt", _f16_checkpoint(tmp_path),
                   "--out", tok]) == 0
  wd = str(tmp_path / "mage")
  assert cli.main(["convert", "--from", "mage", "--ckpt",
                   os.path.join(DATA, "mage_tiny_official.pth"), "--out", wd,
                   "--tokenizer", tok, "--num-heads", "2", "--decoder-num-heads", "3"]) == 0
  exp, _, _ = load_run(wd, data=False)
  assert exp.paradigm.tokenizer is not None
  assert os.path.isfile(os.path.join(wd, "frozen_networks.json"))
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", wd, "--num", "2", "--steps", "2", "--batch-size",
                   "2", "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape == (2, 256, 256, 3) and f["arr_0"].dtype == np.uint8
