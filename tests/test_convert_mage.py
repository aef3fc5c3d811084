"""Official MAGE checkpoints (jaxgen.convert.mage): a ``{"model": state_dict}`` the
official code saved (tests/data/make_mage_reference.py: LTH14/mage's
MaskedGenerativeEncoderViT at a tiny width, random weights) is read without torch and
converted; jaxgen's MAGE in the official layout then gives the official model's logits
(training forward with its token drop and mask, generator forward) and its
linear-probe features to 1e-4 (fp32). A wrong shape, a missing or an extra tensor is an
error naming the key and both shapes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import mage as mage_convert
from jaxgen.convert import torch_pickle

DATA = os.path.join(ROOT, "tests", "data")
CKPT = os.path.join(DATA, "mage_tiny_official.pth")
HEADS = dict(num_heads=2, decoder_num_heads=3)  # not in a state dict; tiny: not official


def _reference():
  with np.load(os.path.join(DATA, "mage_tiny_official_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def test_converted_mage_equals_the_official_model():
  fields, params = mage_convert.load_mage(CKPT, **HEADS)
  assert (fields["hidden_size"], fields["depth"], fields["decoder_hidden_size"],
          fields["decoder_depth"], fields["grid_size"], fields["codebook_size"],
          fields["vocab_classes"]) == (16, 2, 24, 2, (16, 16), 16, 1000)
  module = mage_convert.build_module(fields)
  ref = _reference()
  codes = ref["codes"].astype(np.int32)
  # One program for both logits (cheaper to compile than two): the training forward
  # (the official drop given as the drop mask, its slots padding: equal to dropping)
  # and the generator's (nothing dropped, [MASK] seen); then the probe's features.
  tokens = np.concatenate([np.where(ref["mask"], module.mask_id, codes),
                           np.where(ref["gen_mask"], module.mask_id, codes)])
  drop = np.concatenate([ref["drop"], np.zeros_like(ref["drop"])])

  def forward(p, tokens, drop, codes):
    labels = jnp.zeros((tokens.shape[0],), jnp.int32)  # not read: unconditional
    logits = module.apply({"params": p}, tokens, labels, drop)[0]
    feats = module.apply({"params": p}, codes, labels[:2], method="features")
    return logits, feats

  logits, feats = jax.jit(forward)(params, tokens, drop, codes)
  np.testing.assert_allclose(np.asarray(logits[:2]), ref["logits"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logits[2:]), ref["gen_logits"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(feats), ref["features"], atol=1e-4, rtol=0)
  assert ref["drop"].sum() == 2 * 128 and (ref["mask"] >= ref["drop"]).all()
  assert float(np.abs(ref["logits"]).std()) > 0.05  # real outputs, not flat ones


def _write(tmp_path, state):
  path = str(tmp_path / "ckpt.npz")
  np.savez(path, **state)
  return path


def test_wrong_missing_or_extra_tensors_are_named(tmp_path):
  state = torch_pickle.read_state_dict(CKPT)["model"]
  bad = dict(state)
  bad["decoder_blocks.1.mlp.fc1.weight"] = np.zeros((64, 24), np.float32)
  with pytest.raises(ValueError, match=r"decoder_blocks\.1\.mlp\.fc1\.weight has shape "
                     r"\(64, 24\), MAGE \(.*\) expects \(96, 24\)"):
    mage_convert.load_mage(_write(tmp_path, bad), **HEADS)
  missing = {k: v for k, v in state.items() if k != "mlm_layer.ln.bias"}
  with pytest.raises(ValueError, match=r"1 of its .* tensors are missing, e\.g\. "
                     r"mlm_layer\.ln\.bias"):
    mage_convert.load_mage(_write(tmp_path, missing), **HEADS)
  extra = dict(state, **{"blocks.0.attn.extra.weight": np.zeros((2,), np.float32)})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. blocks\.0\.attn\.extra"):
    mage_convert.load_mage(_write(tmp_path, extra), **HEADS)
  with pytest.raises(ValueError, match="none of the official MAGE sizes"):
    mage_convert.load_mage(CKPT)  # width 16: the heads must be given
  with pytest.raises(ValueError, match="not an official MAGE checkpoint"):
    mage_convert.load_mage(_write(tmp_path, {"w": np.zeros(3, np.float32)}))


def test_official_sizes_need_no_head_count():
  """The published ViT-B / ViT-L (inferred from shapes only) get their heads (12 / 16,
  decoder 16) and their variant names; the checkpoint's (1, N, D) decoder positions are
  read as the official code stores them."""
  def state(width, depth):
    return {"token_emb.word_embeddings.weight": np.zeros((2025, width), np.float32),
            "decoder_embed.weight": np.zeros((width, width), np.float32),
            "decoder_pos_embed_learned": np.zeros((1, 257, width), np.float32),
            **{f"blocks.{i}.mlp.fc1.weight": np.zeros((4 * width, width), np.float32)
               for i in range(depth)},
            **{f"decoder_blocks.{i}.mlp.fc1.weight": np.zeros((4 * width, width),
                                                              np.float32)
               for i in range(8)}}
  for width, depth, name, heads in ((768, 12, "vit_base", 12), (1024, 24, "vit_large", 16)):
    f = mage_convert.infer_fields(state(width, depth), name)
    assert (f["variant"], f["num_heads"], f["decoder_num_heads"], f["depth"],
            f["codebook_size"], f["grid_size"], f["vocab_classes"]) == (
                name, heads, 16, depth, 1024, (16, 16), 1000)


def _vq_tokenizer(root, fake_fmnist_dir, data_dir):
  """A tiny VQ tokenizer run of the reference's 16x16 codes from 16 entries
  (initialised only; the real one is MAGE's VQGAN, converted separately)."""
  from helpers import init_only_run, tiny_tokenizer_config
  c = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "vq", gan=False)
  c.model.codebook_size = 16
  return init_only_run(c, str(root / "vq"))


@pytest.mark.slow
def test_converted_mage_samples_and_probes_through_its_tokenizer(tmp_path, fake_fmnist_dir,
                                                                  data_dir):
  """`jaxgen convert --from mage` writes a run: step 0's parameters and EMA are the
  checkpoint's weights, its config the paper's recipe in the official layout; without a
  tokenizer sampling is one error line naming the codes it needs; with one it samples
  images through it. The run's paradigm reproduces the official training forward with
  jaxgen's own token dropping (only the kept tokens in the encoder)."""
  from jaxgen import cli
  from jaxgen.generate import load_run
  from jaxgen.train import checkpoint
  _, params = mage_convert.load_mage(CKPT, **HEADS)
  bare = str(tmp_path / "bare")
  heads = ["--num-heads", "2", "--decoder-num-heads", "3"]
  assert cli.main(["convert", "--from", "mage", "--ckpt", CKPT, "--out", bare,
                   "--source-dataset", "fashion_mnist"] + heads) == 0
  c = checkpoint.read_config(bare)
  assert (c["paradigm"]["name"], c["model"]["vocab_classes"], c["model"]["feature_pool"],
          c["sample"]["steps"], c["sample"]["choice_temperature"]) == (
              "mage", 1000, "mean_norm", 20, 6.0)
  assert cli.main(["sample", "--workdir", bare, "--num", "2", "--steps", "2",
                   "--out", str(tmp_path / "x.npz")]) == 2
  assert cli.main(["convert", "--from", "mage", "--ckpt", CKPT, "--out", bare] + heads) == 2
  assert cli.main(["convert", "--from", "sd-vae", "--ckpt", CKPT, "--out",
                   str(tmp_path / "y"), "--decoder-num-heads", "3"]) == 2

  tok = _vq_tokenizer(tmp_path, fake_fmnist_dir, data_dir)
  wd = str(tmp_path / "mage")
  assert cli.main(["convert", "--from", "mage", "--ckpt", CKPT, "--out", wd, "--tokenizer",
                   tok, "--source-dataset", "fashion_mnist"] + heads) == 0
  exp, state, _ = load_run(wd, data=False)
  for tree in (state.params, state.ema_params):
    jax.tree.map(np.testing.assert_array_equal, tree, params)
  assert exp.paradigm.tokenizer is not None
  assert os.path.isfile(os.path.join(wd, "frozen_networks.json"))
  ref = _reference()
  model = exp.paradigm.model
  keep = ref["codes"].shape[1] - int(ref["drop"][0].sum())
  logits, _ = model.apply({"params": state.params},
                          np.where(ref["mask"], model.mask_id, ref["codes"]).astype(np.int32),
                          np.zeros((2,), np.int32), ref["drop"], keep)
  np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)
  feats = exp.paradigm.features(state.params, jnp.asarray(ref["codes"]))
  np.testing.assert_allclose(np.asarray(feats), ref["features"], atol=1e-4, rtol=0)
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", wd, "--num", "2", "--steps", "2", "--batch-size",
                   "2", "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape[0] == 2 and f["arr_0"].dtype == np.uint8
