"""The Stable Diffusion VAE (jaxgen.convert.sd_vae, `jaxgen convert --from sd-vae`): a
diffusers ``AutoencoderKL`` saved as sd-vae-ft-mse is saved
(tests/data/make_sd_vae_reference.py:
a tiny size, noised weights) is read without torch and converted; jaxgen's KL
autoencoder then gives diffusers' posterior moments and decodes to 1e-4 (fp32; measured
4e-7 and 2e-6). The older diffusers attention names and the LDM layout give the same
weights. A wrong shape, a missing or an extra tensor is an error naming the key and
both shapes. The converted run loads as a frozen KL tokenizer."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from helpers import ROOT
from jaxgen.convert import safetensors_io, sd_vae, torch_pickle

DATA = os.path.join(ROOT, "tests", "data")
TINY = os.path.join(DATA, "sd_vae_tiny")
WEIGHTS = os.path.join(TINY, "diffusion_pytorch_model.safetensors")
SCALE = 0.18215


def _reference():
  with np.load(os.path.join(DATA, "sd_vae_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def converted():
  return sd_vae.load_sd_vae(TINY)


def _state():
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  return load_file(WEIGHTS)


def _write(tmp_path, state, name="diffusion_pytorch_model.safetensors", config=True):
  """``state`` as a checkpoint directory (with the tiny model's config.json)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  d = tmp_path / "ckpt"
  d.mkdir(parents=True, exist_ok=True)
  path = str(d / name)
  if name.endswith(".safetensors"):
    save_file(state, path)
  else:
    np.savez(path, **state)
  if config:
    shutil.copy(os.path.join(TINY, "config.json"), d / "config.json")
  return path


def test_converted_vae_equals_diffusers(converted):
  fields, params = converted
  assert (fields["channels"], fields["channel_mult"], fields["num_res_blocks"],
          fields["z_channels"], fields["embed_dim"], fields["mid_attn"], fields["in_channels"],
          fields["latent_scale"], fields["layout"]) == (4, (1, 3, 3), 1, 4, 4, True, 3, SCALE,
                                                        "diffusers")
  module = sd_vae.build_module(fields)
  ref = _reference()
  moments = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode_features"))(
      params, _nhwc(ref["x"]))
  mean, logvar = np.split(_nchw(moments), 2, axis=1)
  decoded = jax.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))(
      params, _nhwc(ref["z"]))
  for name, got, want in (("mean", mean, ref["mean"]),
                          ("logvar", np.clip(logvar, -30, 20), ref["logvar"]),
                          ("decoded", _nchw(decoded), ref["decoded"])):
    print(f"{name}: max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=name)
    assert float(np.abs(want).mean()) > 0.05  # a real output, not a zero-init one


# diffusers' names (0.14+) -> LDM / CompVis kl-f8 names, for a state dict of 3 levels
_LDM_RENAMES = [
    (r"encoder\.down_blocks\.(\d)\.resnets\.(\d)\.", r"encoder.down.\1.block.\2."),
    (r"encoder\.down_blocks\.(\d)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.",
     lambda m: f"decoder.up.{2 - int(m.group(1))}.block.{m.group(2)}."),
    (r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.",
     lambda m: f"decoder.up.{2 - int(m.group(1))}.upsample."),
    (r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}."),
    (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
    (r"mid_block\.attentions\.0\.to_(q|k|v)\.", r"mid.attn_1.\1."),
    (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
    (r"conv_shortcut", "nin_shortcut"), (r"conv_norm_out", "norm_out"),
]


def test_old_diffusers_and_ldm_layouts_give_the_same_weights(converted, tmp_path):
  """diffusers < 0.14 (query/key/value/proj_attn) and the LDM layout (1x1 conv
  attention, decoder levels counted from the top, inside a whole model's state dict
  with its training loss) convert to the same parameters."""
  _, want = converted
  state = _state()
  old = {k.replace("to_out.0", "proj_attn").replace("to_q", "query").replace("to_k", "key")
         .replace("to_v", "value"): v for k, v in state.items()}
  _, params = sd_vae.load_sd_vae(_write(tmp_path, old))
  jax.tree.map(np.testing.assert_array_equal, params, want)
  ldm = {}
  for key, value in state.items():
    for pattern, repl in _LDM_RENAMES:
      key = re.sub(pattern, repl, key)
    if re.search(r"attn_1\.(q|k|v|proj_out)\.weight", key):
      value = value[:, :, None, None]  # LDM's attention projections are 1x1 convs
    ldm["first_stage_model." + key] = value
  ldm["loss.discriminator.main.0.weight"] = np.zeros((2, 3, 4, 4), np.float32)
  ldm["model.diffusion_model.out.0.weight"] = np.zeros((2,), np.float32)
  path = _write(tmp_path, ldm, "kl-f8.npz")
  fields, params = sd_vae.load_sd_vae(path)
  assert (fields["layout"], fields["prefix"]) == ("ldm", "first_stage_model.")
  jax.tree.map(np.testing.assert_array_equal, params, want)


def test_sizes_from_shapes_at_the_stable_diffusion_size():
  """Without a config.json the sizes come from the tensors: a state dict of SD's shapes
  (no data: broadcast zeros) is kl-f8 (128 * (1, 2, 4, 4), 2 blocks, 4 latent
  channels, scale 0.18215) and fits it tensor for tensor."""
  fields = dict(name="kl_vae", variant=None, arch="conv", channels=128,
                channel_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(),
                mid_attn=True, z_channels=4, embed_dim=4, bottleneck="kl", in_channels=3)
  expected = sd_vae.expected_shapes(fields)
  state = {k: np.broadcast_to(np.float32(0), shape) for k, shape in
           safetensors_io.checkpoint_shapes(sd_vae.key_map(fields), expected).items()}
  assert sum(v.size for v in state.values()) == 83_653_863  # diffusers' count of the SD VAE
  reader = torch_pickle.StateDictReader(state, "sd")
  got = sd_vae.infer_fields(reader)
  assert got == dict(fields, latent_scale=SCALE, layout="diffusers", prefix="")
  safetensors_io.check_tensors(reader, sd_vae.key_map(got, reader=reader), expected,
                               model="kl-f8")
  # DiT-XL/2 512 decodes 64x64x4 latents: the run of `--image-size 512` encodes 512 crops.
  from jaxgen import importer  # pylint: disable=import-outside-toplevel
  from jaxgen.data import datasets  # pylint: disable=import-outside-toplevel
  c = importer.sd_vae_config(got, image_size=512)
  assert datasets.describe(c.data).image_shape == (512, 512, 3)
  assert c.data.pp.startswith("center_crop(512)|")


def test_wrong_missing_or_extra_tensors_are_named(tmp_path):
  state = _state()
  key = "decoder.mid_block.attentions.0.to_k.weight"
  with pytest.raises(ValueError, match=re.escape(f"{key} has shape (12, 8), ") +
                     r"the KL autoencoder .* expects \(12, 12\)"):
    sd_vae.load_sd_vae(_write(tmp_path, dict(state, **{key: np.zeros((12, 8), np.float32)})))
  missing = {k: v for k, v in state.items() if k != "post_quant_conv.bias"}
  with pytest.raises(ValueError, match=r"1 of its \d+ tensors are missing, e\.g\. "
                     r"post_quant_conv\.bias"):
    sd_vae.load_sd_vae(_write(tmp_path, missing))
  extra = dict(state, **{"encoder.down_blocks.0.resnets.1.conv1.weight":
                         np.zeros((4, 4, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"has no place for, e\.g\. "
                     r"encoder\.down_blocks\.0\.resnets\.1\.conv1\.weight"):
    sd_vae.load_sd_vae(_write(tmp_path, extra))
  with pytest.raises(ValueError, match="not a Stable Diffusion VAE checkpoint"):
    sd_vae.load_sd_vae(os.path.join(DATA, "dit_tiny_official.pt"))
  with pytest.raises(ValueError, match=r"GroupNorm with 32 groups over widths \[4, 12, 12\].*"
                     "config.json"):
    sd_vae.load_sd_vae(_write(tmp_path / "no_config", state, config=False))
  config = json.load(open(os.path.join(TINY, "config.json"), encoding="utf-8"))
  with open(tmp_path / "ckpt" / "config.json", "w", encoding="utf-8") as f:
    json.dump(dict(config, shift_factor=0.1159, latent_channels=16), f)
  with pytest.raises(ValueError, match=r"shift_factor=0\.1159"):
    sd_vae.load_sd_vae(str(tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The tiny VAE converted by `jaxgen convert --from sd-vae` (once per module)."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path_factory.mktemp("sd_vae") / "vae")
  assert cli.main(["convert", "--from", "sd-vae", "--ckpt", TINY, "--out", wd]) == 0
  return wd


def test_converted_run_is_a_frozen_kl_tokenizer(run_dir):
  """The run loads as a frozen KL tokenizer (ImageNet 256x256 by default) whose scaled
  latents (scale 0.18215) and decodes are diffusers'."""
  from jaxgen.tokenizers import base  # pylint: disable=import-outside-toplevel
  tok = base.Tokenizer.from_workdir(run_dir)
  assert (tok.kind, tok.latent_scale, tok.image_shape, tok.latent_shape) == (
      "kl", SCALE, (256, 256, 3), (64, 64, 4))
  ref = _reference()
  np.testing.assert_allclose(tok.encode(_nhwc(ref["x"])), SCALE * _nhwc(ref["mean"]),
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(tok.decode(SCALE * _nhwc(ref["z"])),
                             np.clip(_nhwc(ref["decoded"]), -1, 1), atol=1e-4, rtol=0)


def test_converted_run_holds_the_weights_and_the_kl_f8_recipe(run_dir, capsys):
  """Its config is LDM's kl-f8 recipe with the checkpoint's sizes (float32, no LPIPS);
  step 0's parameters and EMA are the weights; `jaxgen info --workdir` reads it."""
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  from jaxgen.tokenizers import base  # pylint: disable=import-outside-toplevel
  c = json.load(open(os.path.join(run_dir, "config.json"), encoding="utf-8"))
  assert (c["paradigm"]["name"], c["model"]["name"], c["model"]["bottleneck"],
          c["model"]["channel_mult"], c["data"]["name"], c["paradigm"]["bottleneck_weight"],
          c["paradigm"]["perceptual"], c["train"]["compute_dtype"]) == (
              "tokenizer", "kl_vae", "kl", [1, 3, 3], "imagenet2012", 1e-6, "none", "float32")
  _, params = sd_vae.load_sd_vae(TINY)
  for which in ("raw", "ema"):  # step 0's parameters and EMA, read as a frozen tokenizer
    tok = base.Tokenizer.from_workdir(run_dir, params=which)
    assert tok.step == 0
    jax.tree.map(np.testing.assert_array_equal, tok.variables["params"], params)
  capsys.readouterr()
  assert cli.main(["info", "--workdir", run_dir]) == 0
  assert "parameters  0.03M" in capsys.readouterr().out


def test_convert_errors_are_one_line(tmp_path, capsys):
  from jaxgen import cli  # pylint: disable=import-outside-toplevel
  exists = tmp_path / "exists"
  (exists / "checkpoints").mkdir(parents=True)
  bad = str(tmp_path / "bad.bin")
  with open(bad, "wb") as f:
    f.write(b"not a checkpoint")
  for argv, says in (
      (["--ckpt", TINY, "--out", str(exists)], "already holds checkpoints"),
      (["--ckpt", bad, "--out", str(tmp_path / "x")], "could not be read"),
      (["--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "x")], "no such file"),
      (["--ckpt", TINY, "--out", str(tmp_path / "x"), "--num-heads", "2"], "for --from dit"),
      (["--ckpt", TINY, "--out", str(tmp_path / "x"), "--source-dataset", "fashion_mnist"],
       "encodes 3-channel images, fashion_mnist has 1"),
      (["--ckpt", TINY, "--out", str(tmp_path / "x"), "--image-size", "500"],
       "multiple of 8"),
      (["--ckpt", TINY, "--out", str(tmp_path / "x"), "--image-size", "512",
        "--source-dataset", "fashion_mnist"], "--image-size is for ImageNet")):
    assert cli.main(["convert", "--from", "sd-vae"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error: ") and err.count("\n") == 1 and says in err, err
