"""google-research/maskgit's checkpoints (jaxgen.convert.maskgit, `jaxgen convert --from
maskgit-vq`): a small VQVAE the official Flax code built with random weights and saved
as the released msgpack checkpoints are (tests/data/make_maskgit_reference.py) is read
without TensorFlow and converted; jaxgen's MaskGIT-layout VQGAN then gives the official
codes exactly and its decodings to 1e-4 (fp32; measured 1.2e-7). A wrong shape, a
missing or an extra tensor, or a file that is no msgpack checkpoint, is an error naming
the key and both shapes. The converted run loads as a frozen VQ tokenizer (slow)."""

import json
import os
import re

import flax
import jax
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import maskgit

DATA = os.path.join(ROOT, "tests", "data")
TOKENIZER = os.path.join(DATA, "maskgit_tokenizer_tiny.msgpack")


def _reference():
  with np.load(os.path.join(DATA, "maskgit_tokenizer_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _variables(params, fields):
  """The autoencoder's variables: the parameters and zero codebook-usage statistics."""
  usage = np.zeros((fields["codebook_size"],), np.float32)
  return {"params": params, "vq_stats": {"quantizer": {"usage": usage}}}


def _write(tmp_path, flat, name="ckpt"):
  """A flat ``{"encoder.Conv_0.kernel": array}`` dict saved as the official layout."""
  nested = flax.traverse_util.unflatten_dict(flat, sep=".")
  path = str(tmp_path / name)
  with open(path, "wb") as f:
    f.write(flax.serialization.to_bytes({"params": nested}))
  return path


def test_converted_tokenizer_equals_official():
  fields, params = maskgit.load_tokenizer(TOKENIZER)
  assert (fields["layout"], fields["channels"], fields["channel_mult"],
          fields["num_res_blocks"], fields["codebook_size"], fields["code_dim"],
          fields["quant_proj"], fields["unit_range"]) == ("maskgit", 8, (1, 2), 2, 8, 8,
                                                          False, True)
  module = maskgit.build_tokenizer(fields)
  ref = _reference()
  variables = _variables(params, fields)
  codes, decoded = jax.jit(lambda v, x, i: (
      module.apply(v, x, method="encode"), module.apply(v, i, method="decode_codes")))(
          variables, 2.0 * ref["x"] - 1.0, ref["indices"])  # jaxgen's images are [-1, 1]
  np.testing.assert_array_equal(np.asarray(codes), ref["indices"])
  assert len(np.unique(ref["indices"])) == fields["codebook_size"]  # every code used
  got = (np.asarray(decoded) + 1.0) / 2.0
  print(f"decoded: max abs diff {np.abs(got - ref['decoded']).max():.2e}")
  np.testing.assert_allclose(got, ref["decoded"], atol=1e-4, rtol=0)
  assert float(np.abs(ref["decoded"]).mean()) > 0.05  # a real output, not a zero-init one


def test_wrong_missing_or_extra_tensors_are_named(tmp_path):
  flat = maskgit.read_variables(TOKENIZER)
  key = "decoder.ResBlock_4.Conv_2.kernel"  # the official shortcut (width 16 -> 8)
  assert flat[key].shape == (1, 1, 8, 8)
  with pytest.raises(ValueError, match=re.escape(f"{key} has shape (1, 1, 16, 8), ") +
                     r"the MaskGIT VQGAN .* expects \(1, 1, 8, 8\)"):
    maskgit.load_tokenizer(_write(tmp_path, dict(flat, **{key: np.zeros((1, 1, 16, 8),
                                                                          np.float32)})))
  missing = {k: v for k, v in flat.items() if k != "encoder.GroupNorm_0.bias"}
  with pytest.raises(ValueError, match=r"1 of its \d+ tensors are missing, e\.g\. "
                     r"encoder\.GroupNorm_0\.bias"):
    maskgit.load_tokenizer(_write(tmp_path, missing))
  extra = dict(flat, **{"encoder.ResBlock_0.Conv_0.bias": np.zeros((8,), np.float32)})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. "
                     r"encoder\.ResBlock_0\.Conv_0\.bias"):
    maskgit.load_tokenizer(_write(tmp_path, extra))
  with pytest.raises(ValueError, match="not a Flax msgpack checkpoint"):
    maskgit.load_tokenizer(os.path.join(DATA, "dit_tiny_official.pt"))
  with pytest.raises(ValueError, match="not a MaskGIT tokenizer checkpoint.*quantizer"):
    maskgit.load_tokenizer(_write(tmp_path, {k: v for k, v in flat.items()
                                             if not k.startswith("quantizer.")}))


@pytest.mark.slow
def test_official_size_fits_the_maskgit_f16_variant():
  """A checkpoint of the released tokenizer's shapes (no data: broadcast zeros; sizes
  of maskgit/configs/vqgan_config.py) is the maskgit_f16 variant, tensor for tensor,
  with the official VQVAE's 54,515,587 parameters (jax.eval_shape of its module)."""
  from jaxgen.convert import safetensors_io, torch_pickle  # pylint: disable=import-outside-toplevel
  from jaxgen.tokenizers import nets  # pylint: disable=import-outside-toplevel
  fields = dict(nets.autoencoder_variant("maskgit_f16"), in_channels=3, code_dim=256,
                name="vqgan", bottleneck="vq", quant_proj=False, unit_range=True,
                variant="maskgit_f16")
  expected = maskgit.tokenizer_shapes(fields)
  state = {k: np.broadcast_to(np.float32(0), shape) for k, shape in
           safetensors_io.checkpoint_shapes(maskgit.tokenizer_key_map(fields),
                                            expected).items()}
  assert sum(v.size for v in state.values()) == 54_515_587
  got = maskgit.infer_tokenizer_fields(torch_pickle.StateDictReader(state, "released"))
  assert got == {k: fields[k] for k in got}
  assert maskgit.OFFICIAL_TOKENIZER == {k: fields[k] for k in maskgit.OFFICIAL_TOKENIZER}


# ------------------------------------------------------------------- the converted run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The tiny tokenizer converted by `jaxgen convert --from maskgit-vq` (once)."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path_factory.mktemp("maskgit_vq") / "vq")
  assert cli.main(["convert", "--from", "maskgit-vq", "--ckpt", TOKENIZER, "--out", wd]) == 0
  return wd


@pytest.mark.slow
def test_converted_run_is_a_frozen_vq_tokenizer(run_dir):
  """The run loads as a frozen VQ tokenizer (ImageNet 256x256 by default) whose codes
  are the official ones and whose decodings are the official ones in [-1, 1]; its
  config is the VQGAN recipe with the MaskGIT net (float32, no LPIPS); step 0's
  parameters and EMA are the weights."""
  from jaxgen.tokenizers import base  # pylint: disable=import-outside-toplevel
  tok = base.Tokenizer.from_workdir(run_dir)
  assert (tok.kind, tok.image_shape, tok.vocab_size, tuple(tok.grid_shape)) == (
      "vq", (256, 256, 3), 8, (128, 128))
  ref = _reference()
  np.testing.assert_array_equal(np.asarray(tok.encode(2.0 * ref["x"] - 1.0)), ref["indices"])
  np.testing.assert_allclose(tok.decode(ref["indices"]),
                             np.clip(2.0 * ref["decoded"] - 1.0, -1, 1), atol=1e-4, rtol=0)
  c = json.load(open(os.path.join(run_dir, "config.json"), encoding="utf-8"))
  assert (c["paradigm"]["name"], c["model"]["name"], c["model"]["layout"],
          c["model"]["quant_proj"], c["model"]["unit_range"], c["paradigm"]["perceptual"],
          c["train"]["compute_dtype"]) == ("tokenizer", "vqgan", "maskgit", False, True,
                                           "none", "float32")
  _, params = maskgit.load_tokenizer(TOKENIZER)
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
    f.write(b"\xc1 not a checkpoint")
  for argv, says in (
      (["--ckpt", TOKENIZER, "--out", str(exists)], "already holds checkpoints"),
      (["--ckpt", bad, "--out", str(tmp_path / "x")], "not a Flax msgpack checkpoint"),
      (["--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "x")], "no such file"),
      (["--ckpt", TOKENIZER, "--out", str(tmp_path / "x"), "--latent-scale", "2"],
       "for --from sd-vae"),
      (["--ckpt", TOKENIZER, "--out", str(tmp_path / "x"), "--source-dataset",
        "fashion_mnist"], "encodes 3-channel images, fashion_mnist has 1")):
    assert cli.main(["convert", "--from", "maskgit-vq"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error: ") and err.count("\n") == 1 and says in err, err
