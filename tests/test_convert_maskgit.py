"""google-research/maskgit's checkpoints (jaxgen.convert.maskgit, `jaxgen convert --from
maskgit-vq` and `--from maskgit`): a small VQVAE and a small transformer the official
Flax code built with random weights and saved as the released msgpack checkpoints are
(tests/data/make_maskgit_reference.py) are read without TensorFlow and converted;
jaxgen's MaskGIT-layout VQGAN then gives the official codes exactly and its decodings to
1e-4 (fp32; measured 1.2e-7), and jaxgen's MaskGIT transformer in the BERT layout the
official logits over the codes to 1e-4 (measured 0: the same operations). A wrong
shape, a missing or an extra tensor, or a file that is no msgpack checkpoint, is an
error naming the key and both shapes. The converted tokenizer run loads as a frozen VQ
tokenizer, and a converted transformer run samples images through a converted
tokenizer (slow)."""

import json
import math
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
TRANSFORMER = os.path.join(DATA, "maskgit_transformer_tiny.msgpack")
NUM_CLASSES = 10  # the tiny transformer's (fashion_mnist's)


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


def test_converted_transformer_equals_official():
  """The official input ids (class token ``codebook_size + label``, codes, [MASK] = -1)
  as jaxgen's labels and tokens ([MASK] = ``codebook_size``): the same logits over the
  codes (the official sampler's ``logits[..., :codebook_size]``)."""
  fields, params = maskgit.load_transformer(TRANSFORMER, NUM_CLASSES)
  assert (fields["depth"], fields["hidden_size"], fields["num_heads"], fields["mlp_dim"],
          fields["grid_size"], fields["codebook_size"], fields["layout"]) == (
              2, 16, 2, 32, (7, 7), 8, "bert")
  module = maskgit.build_transformer(fields)
  with np.load(os.path.join(DATA, "maskgit_transformer_tiny_outputs.npz")) as f:
    ids, want = f["input_ids"], f["logits"]
  k = fields["codebook_size"]
  tokens = np.where(ids[:, 1:] < 0, k, ids[:, 1:])
  assert 0.3 < (tokens == k).mean() < 0.7  # masked and given codes
  logits = jax.jit(module.apply)({"params": params}, tokens, ids[:, 0] - k)
  want = want[:, 1:, :k]
  print(f"logits: max abs diff {np.abs(np.asarray(logits) - want).max():.2e}")
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)
  assert float(want.std()) > 0.1


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
  flat = maskgit.read_variables(TRANSFORMER)
  key = "TransformerLayer_1.Attention_0.self_attention.value.kernel"
  with pytest.raises(ValueError, match=re.escape(f"{key} has shape (16, 2, 4), ") +
                     r"the MaskGIT transformer .* expects \(16, 2, 8\)"):
    maskgit.load_transformer(_write(tmp_path, dict(flat, **{key: np.zeros(
        (16, 2, 4), np.float32)})), NUM_CLASSES)
  with pytest.raises(ValueError, match="cannot hold 1000 classes"):
    maskgit.load_transformer(TRANSFORMER, 1000)


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


@pytest.mark.slow
def test_official_transformer_size_is_maskgit_imagenet():
  """The released transformer's tensors (sizes of maskgit_class_cond_config.py: 24 x
  768, 16 heads, MLP 3072, 1024 codes + 1000 classes + [MASK], 257 positions; no data:
  broadcast zeros) are the maskgit_imagenet size in the BERT layout and pass the checks;
  172,457,193 parameters, the official module's count (jax.eval_shape of it); jaxgen's
  has the null class's row more and the 1001 non-code biases of the head less."""
  from jaxgen.convert import safetensors_io, torch_pickle  # pylint: disable=import-outside-toplevel
  fields = dict(depth=24, hidden_size=768, num_heads=16, mlp_dim=3072, grid_size=(16, 16),
                codebook_size=1024, num_classes=1000)
  shapes = maskgit.official_transformer_shapes(fields)
  assert sum(math.prod(s) for s in shapes.values()) == 172_457_193
  reader = torch_pickle.StateDictReader(
      {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}, "released")
  got = maskgit.infer_transformer_fields(reader, 1000)
  assert (got["variant"], got["layout"]) == ("maskgit_imagenet", "bert")
  assert {k: got[k] for k in fields} == fields
  safetensors_io.check_tensors(reader, {(k,): (k, False) for k in shapes},
                               {(k,): s for k, s in shapes.items()}, model="maskgit")
  ours = maskgit.transformer_shapes(got)
  assert sum(math.prod(s) for s in ours.values()) == 172_457_193 + 768 - 1001


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
  for argv, says in (
      (["--ckpt", TOKENIZER], "not a MaskGIT transformer checkpoint"),
      (["--ckpt", TRANSFORMER], "cannot hold 1000 classes"),  # ImageNet's, by default
      (["--ckpt", TRANSFORMER, "--latent-scale", "2"], "for --from sd-vae")):
    assert cli.main(["convert", "--from", "maskgit", "--out", str(tmp_path / "x")] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error: ") and err.count("\n") == 1 and says in err, err


def _grey_tokenizer_checkpoint(tmp_path):
  """A random official-layout tokenizer checkpoint for 28x28 grey images: f4 (7x7 codes,
  the tiny transformer's grid) and the tiny transformer's 8 codes."""
  fields = dict(name="vqgan", variant=None, arch="conv", layout="maskgit", channels=8,
                channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                mid_attn=False, z_channels=8, embed_dim=8, codebook_size=8, code_dim=8,
                bottleneck="vq", quant_proj=False, unit_range=True, in_channels=1)
  from jaxgen.convert import safetensors_io  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  shapes = safetensors_io.checkpoint_shapes(maskgit.tokenizer_key_map(fields),
                                            maskgit.tokenizer_shapes(fields))
  flat = {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()}
  return _write(tmp_path, flat, "grey_tokenizer")


@pytest.mark.slow
def test_converted_maskgit_samples_through_a_converted_tokenizer(tmp_path):
  """`--from maskgit --tokenizer RUN`: the run holds the weights (parameters and EMA)
  and the paper's recipe (cosine schedule, 8 steps, choice temperature 4.5), records
  its tokenizer, and `jaxgen sample` decodes its codes into images through it."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  from jaxgen.generate import load_run  # pylint: disable=import-outside-toplevel
  tok = str(tmp_path / "vq")
  assert cli.main(["convert", "--from", "maskgit-vq", "--ckpt",
                   _grey_tokenizer_checkpoint(tmp_path), "--out", tok,
                   "--source-dataset", "fashion_mnist"]) == 0
  wd = str(tmp_path / "maskgit")
  assert cli.main(["convert", "--from", "maskgit", "--ckpt", TRANSFORMER, "--out", wd,
                   "--tokenizer", tok, "--source-dataset", "fashion_mnist"]) == 0
  exp, state, _ = load_run(wd, data=False)
  _, params = maskgit.load_transformer(TRANSFORMER, NUM_CLASSES)
  for tree in (state.params, state.ema_params):
    jax.tree.map(np.testing.assert_array_equal, tree, params)
  c = exp.config
  assert (c.paradigm.name, c.paradigm.mask_schedule, c.sample.steps,
          c.sample.choice_temperature, c.model.layout) == ("maskgit", "cosine", 8, 4.5,
                                                           "bert")
  assert exp.paradigm.tokenizer is not None
  assert os.path.isfile(os.path.join(wd, "frozen_networks.json"))
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", wd, "--num", "4", "--steps", "2", "--batch-size",
                   "4", "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape == (4, 28, 28, 1) and f["arr_0"].dtype == np.uint8
