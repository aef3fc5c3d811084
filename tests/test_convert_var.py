"""VAR's checkpoints (jaxgen.convert.var, `jaxgen convert --from var-vae / var`): a tiny
VQVAE and VAR transformer built by the official code (tests/data/make_var_reference.py:
FoundationVision/VAR, random weights) are read without torch and converted. jaxgen's
multi-scale VQ tokenizer then gives the official multi-scale indices exactly, the
official f_hat of them and its reconstruction to 1e-4 (fp32; measured 4e-7, 3e-6), and
jaxgen's VAR the official teacher-forced logits (measured 1e-7). A wrong shape, a
missing or an extra tensor is an error naming the key and both shapes (the default
tier: 3.8 s of CPU). Slow: with the same draws, the official sampler's first two scale
steps (guided logits, codes, f_hat); the converted runs as a frozen tokenizer (indices,
``decode(indices)``, teacher-forcing inputs) and a sampling VAR run; one-line CLI
errors; the parameter counts at the official sizes."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import safetensors_io, torch_pickle
from jaxgen.convert import var as var_convert

DATA = os.path.join(ROOT, "tests", "data")
VAE = os.path.join(DATA, "var_tiny_vae.pth")
VAR = os.path.join(DATA, "var_tiny_d2.pth")
SCALES = (1, 2, 3, 4, 6, 8)


def _reference():
  with np.load(os.path.join(DATA, "var_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def _flat(maps):
  return np.concatenate([np.asarray(m).reshape(m.shape[0], -1, *m.shape[3:]) for m in maps], 1)


def _variables(fields, params):
  return {"params": params,
          "vq_stats": {"quantizer": {"usage": jnp.zeros((fields["codebook_size"],))}}}


def _compiled(fn, *args):
  """``jax.jit(fn)`` compiled for ``args`` without LLVM's optimisations on CPU: these
  tiny graphs run in milliseconds, and the optimised compile would be most of the
  test's time."""
  lowered = jax.jit(fn).lower(*args)
  if jax.default_backend() == "cpu":
    return lowered.compile({"xla_backend_optimization_level": 0,
                            "xla_llvm_disable_expensive_passes": True})
  return lowered.compile()


@pytest.fixture(scope="module")
def vae():
  return var_convert.load_var_vae(VAE, SCALES)


def test_vqvae_and_var_equal_the_official_code(vae):
  ref = _reference()
  fields, params = vae
  assert (fields["channels"], fields["channel_mult"], fields["num_res_blocks"],
          fields["attn_resolutions"], fields["codebook_size"], fields["code_dim"],
          fields["num_phi"], fields["quant_conv_kernel"]) == (4, (1, 2), 1, (8,), 32, 8, 4, 3)
  ae = var_convert.build_vae_module(fields)

  def tokenizer(v, x):  # encode, f_hat of the indices, decode: one graph
    idx, f_hats = ae.apply(v, x, method=lambda m, x: m.quantizer._quantize(
        m.encode_features(x)))
    return idx, f_hats[-1], ae.apply(v, f_hats[-1], method="decode")

  args = (_variables(fields, params), _nhwc(ref["x"]))
  idx, f_hat, rec = _compiled(tokenizer, *args)(*args)
  np.testing.assert_array_equal(_flat(idx), ref["idx"])
  for name, got, want in (("f_hat", _nchw(f_hat), ref["f_hat"]), ("rec", _nchw(rec), ref["rec"])):
    print(f"{name}: max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=name)
    assert float(np.abs(want).mean()) > 0.05

  var_fields, var_params = var_convert.load_var(VAR, fields["scales"])
  assert (var_fields["depth"], var_fields["hidden_size"], var_fields["num_heads"],
          var_fields["num_classes"], var_fields["codebook_size"]) == (2, 16, 2, 10, 32)
  model = var_convert.build_var_module(var_fields)
  args = ({"params": var_params}, ref["tf"], ref["labels"])
  logits = _compiled(model.apply, *args)(*args)
  print(f"logits: max abs diff {np.abs(logits - ref['logits']).max():.2e}")
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


def test_wrong_missing_or_extra_tensors_are_named(vae, tmp_path):
  state = torch_pickle.read_state_dict(VAE)
  fields, params = vae
  key_map, expected = var_convert.vae_key_map(fields), safetensors_io.flat_shapes(params)

  def check(state):
    safetensors_io.check_tensors(
        torch_pickle.StateDictReader(state, "vae"), key_map, expected, model="VAR's VQVAE",
        owned_prefixes=("encoder.", "decoder.", "quant_conv.", "quantize."),
        ignore=("quantize.ema_vocab_hit_SV",))

  check(state)
  key = "quantize.quant_resi.qresi_ls.2.weight"
  with pytest.raises(ValueError, match=re.escape(f"{key} has shape (8, 4, 3, 3), VAR's VQVAE "
                                                 "expects (8, 8, 3, 3)")):
    check(dict(state, **{key: np.zeros((8, 4, 3, 3), np.float32)}))
  with pytest.raises(ValueError, match=r"1 of its \d+ tensors are missing, e\.g\. "
                     r"decoder\.up\.1\.attn\.0\.qkv\.weight"):
    check({k: v for k, v in state.items() if k != "decoder.up.1.attn.0.qkv.weight"})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. encoder\.down\.0\.attn\.0"):
    check(dict(state, **{"encoder.down.0.attn.0.norm.weight": np.ones(4, np.float32)}))
  with pytest.raises(ValueError, match="trained with 6 scales, not the 10"):
    var_convert.load_var_vae(VAE)  # VAR's default schedule: the usage buffer has 6 rows
  with pytest.raises(ValueError, match="not a VAR VQVAE checkpoint"):
    var_convert.load_var_vae(VAR)
  with pytest.raises(ValueError, match="not a VAR transformer checkpoint"):
    var_convert.load_var(VAE)
  bad = str(tmp_path / "var.npz")
  np.savez(bad, **dict(torch_pickle.read_state_dict(VAR),
                       **{"blocks.1.ada_lin.1.weight": np.zeros((96, 8), np.float32)}))
  with pytest.raises(ValueError, match=re.escape("blocks.1.ada_lin.1.weight has shape (96, 8), "
                                                 "VAR (width 16, depth 2, 2 heads) expects "
                                                 "(96, 16)")):
    var_convert.load_var(bad, SCALES)
  with pytest.raises(ValueError, match=r"6 scales of 130 tokens, not the tokenizer's"):
    var_convert.load_var(VAR, (1, 2, 3, 4))


# ----------------------------------------------------------------------------- slow


def _gumbel_draws(monkeypatch, gumbel):
  """jaxgen's VAR sampler with the reference's draws: argmax(logits + gumbel) at the
  first scales (greedy after them); records the guided logits and the draws."""
  from jaxgen.samplers import var as var_sampler  # pylint: disable=import-outside-toplevel
  seen = []

  def draw(rng, logits_blv, scale, **sampling):
    del rng, sampling
    k = len(seen)
    g = gumbel[k, :, :logits_blv.shape[1]] if k < len(gumbel) else 0.0
    idx = jnp.argmax(logits_blv + g, -1)
    seen.append((logits_blv, idx))
    return idx.reshape(idx.shape[0], scale, scale)

  monkeypatch.setattr(var_sampler, "_draw", draw)
  return seen


@pytest.mark.slow
def test_sampling_steps_equal_the_official_sampler(monkeypatch):
  """autoregressive_infer_cfg (cfg 1.5, the official draw replaced by argmax of fixed
  Gumbel noise added to the guided logits) and jaxgen's cached VAR sampler (cfg_scale
  2.5, linear, the same draw) give the same guided logits, codes and f_hat at the
  first two scales."""
  from jaxgen.samplers import var as var_sampler  # pylint: disable=import-outside-toplevel
  ref = _reference()
  fields, params = var_convert.load_var_vae(VAE, SCALES)
  ae, v = var_convert.build_vae_module(fields), _variables(fields, params)
  var_fields, var_params = var_convert.load_var(VAR, SCALES)
  model = var_convert.build_var_module(var_fields)
  seen = _gumbel_draws(monkeypatch, ref["gumbel"])
  f_hats = []

  def next_input(k, f_hat, idx):
    out = ae.apply(v, k, f_hat, idx, method=lambda m, *a: m.quantizer.next_autoregressive_input(*a))
    f_hats.append(out[0])
    return out

  labels = jnp.asarray(ref["step_labels"])
  decode = lambda x, y, c, k: model.apply({"params": var_params}, x, y, c, k, method="decode")
  var_sampler.decode_cached(
      decode, model.init_cache(4), next_input, labels, jax.random.PRNGKey(0), scales=SCALES,
      feature_shape=(8, 8, 8), null=jnp.full((2,), 10, jnp.int32), cfg_scale=2.5,
      cfg_schedule="linear")
  for k in range(2):
    np.testing.assert_allclose(seen[k][0], ref[f"step_logits_{k}"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(seen[k][1], ref[f"step_idx_{k}"])
  np.testing.assert_allclose(_nchw(f_hats[1]), ref["step_fhat"], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The tiny VQVAE and VAR converted by `jaxgen convert` (once per module)."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("var")
  vae, var = str(root / "vae"), str(root / "var")
  assert cli.main(["convert", "--from", "var-vae", "--ckpt", VAE, "--scales",
                   ",".join(map(str, SCALES)), "--out", vae]) == 0
  assert cli.main(["convert", "--from", "var", "--ckpt", VAR, "--tokenizer", vae,
                   "--source-dataset", "fashion_mnist", "--out", var]) == 0
  return vae, var


@pytest.mark.slow
def test_converted_runs_tokenize_and_sample(runs, tmp_path):
  """The VQVAE run loads as a frozen msvq tokenizer giving the official indices and
  reconstruction (clamped); the VAR run samples images through it."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  from jaxgen.tokenizers import base  # pylint: disable=import-outside-toplevel
  vae, var = runs
  tok = base.Tokenizer.from_workdir(vae)
  assert (tok.kind, tok.image_shape, tok.vocab_size) == ("msvq", (16, 16, 3), 32)
  ref = _reference()
  codes = tok.encode(_nhwc(ref["x"]))
  np.testing.assert_array_equal(_flat(codes), ref["idx"])
  np.testing.assert_allclose(tok.decode(codes), np.clip(_nhwc(ref["rec"]), -1, 1), atol=1e-4,
                             rtol=0)
  tf = tok.teacher_forcing_fn(tok.variables, codes)  # VAR's idxBl_to_var_input
  np.testing.assert_allclose(_flat(tf), ref["tf"], atol=1e-4, rtol=0)
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", var, "--num", "2", "--out", out]) == 0
  with np.load(out) as f:
    assert f["arr_0"].shape == (2, 16, 16, 3)


@pytest.mark.slow
def test_convert_errors_are_one_line(runs, tmp_path, capsys):
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  vae, _ = runs
  for argv, says in (
      (["var-vae", "--ckpt", VAE, "--out", vae], "already holds checkpoints"),
      (["var-vae", "--ckpt", VAE, "--out", str(tmp_path / "x")], "trained with 6 scales"),
      (["var-vae", "--ckpt", VAE, "--scales", "1,3,2", "--out", str(tmp_path / "x")],
       "increasing"),
      (["var", "--ckpt", VAR, "--scales", "1,2", "--out", str(tmp_path / "x")],
       "--scales is for --from var-vae"),
      (["var", "--ckpt", VAR, "--tokenizer", str(tmp_path), "--out", str(tmp_path / "x")],
       "is not a run"),
      (["var", "--ckpt", VAR, "--tokenizer", vae, "--out", str(tmp_path / "x")],
       "has 10 classes, imagenet2012 has 1000")):
    assert cli.main(["convert", "--from"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error: ") and err.count("\n") == 1 and says in err, err


@pytest.mark.slow
def test_parameter_counts_at_the_official_sizes():
  """jaxgen's VQVAE at vae_ch160v4096z32's sizes and VAR-d16..d30 have the official
  parameter counts (the official modules instantiated with build_vae_var's sizes:
  VQVAE 108,948,355 (with its 4 phi convs), VAR-d16 310,283,520, d20 600,917,136,
  d24 1,033,399,360, d30 2,010,020,356)."""
  vae = dict(name="vqgan", variant=None, arch="conv", channels=160,
             channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
             mid_attn=True, z_channels=32, embed_dim=32, bottleneck="msvq",
             codebook_size=4096, code_dim=32, scales=var_convert.VAR_SCALES, num_phi=4,
             phi_ratio=0.5, beta=0.25, quant_conv_kernel=3, in_channels=3,
             phi_layout="partial")
  count = lambda shapes: sum(int(np.prod(s)) for s in shapes.values())
  assert count(var_convert.vae_expected_shapes(vae)) == OFFICIAL_COUNTS["vae"]
  for depth in (16, 20, 24, 30):
    fields = dict(name="var", variant=None, depth=depth, hidden_size=64 * depth,
                  num_heads=depth, drop_path_rate=0.0, mlp_ratio=4.0,
                  scales=var_convert.VAR_SCALES, codebook_size=4096, code_dim=32,
                  attn_l2_norm=True, attn_impl="xla", num_classes=1000)
    assert count(var_convert.var_expected_shapes(fields)) == OFFICIAL_COUNTS[depth], depth


OFFICIAL_COUNTS = {"vae": 108_948_355, 16: 310_283_520, 20: 600_917_136, 24: 1_033_399_360,
                   30: 2_010_020_356}
