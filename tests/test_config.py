"""Config loading, overrides and validation errors that name the field."""

import os

import pytest

from jaxgen import config as config_lib
from jaxgen.config import ConfigError

from helpers import ROOT

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def test_quickstart_loads_and_validates():
  c = config_lib.load_config_file(QUICKSTART)
  config_lib.validate(c)


def test_override_sets_typed_values():
  c = config_lib.load_config_file(QUICKSTART)
  rest, ov = config_lib.split_overrides(
      ["train", "--config.train.num_steps=7", "--config.optim.lr", "1e-3",
       "--config.model.variant=tiny", "--config.optim.ema_warmup=false"])
  assert rest == ["train"]
  c = config_lib.apply_overrides(c, ov)
  assert c.train.num_steps == 7 and c.optim.lr == 1e-3
  assert c.model.variant == "tiny" and c.optim.ema_warmup is False


def test_unknown_key_names_the_field_and_suggests():
  c = config_lib.load_config_file(QUICKSTART)
  with pytest.raises(ConfigError, match=r"config\.train\.num_step.*Did you mean num_steps"):
    config_lib.apply_overrides(c, [("train.num_step", "3")])
  with pytest.raises(ConfigError, match="<top level> has no field 'trian'"):
    config_lib.apply_overrides(c, [("trian.num_steps", "3")])


def test_wrong_type_is_refused():
  c = config_lib.load_config_file(QUICKSTART)
  with pytest.raises(ConfigError, match="config.train.num_steps expects a int"):
    config_lib.apply_overrides(c, [("train.num_steps", "many")])


@pytest.mark.parametrize("key,value,message", [
    ("paradigm.name", "flwo", "config.paradigm.name='flwo' is unknown. Did you mean flow"),
    ("model.name", "ditt", "config.model.name='ditt' is unknown"),
    ("optim.schedule", "linear", "config.optim.schedule='linear'"),
    ("paradigm.time_sampling", "beta", "config.paradigm.time_sampling='beta'"),
    ("sample.solver", "rk4", "config.sample.solver='rk4'"),
    ("optim.grad_accum", "3", "grad_accum=3 must be >= 1 and divide"),
    ("train.batch_size", "0", "config.train.batch_size=0 must be positive"),
    ("train.autocast", "true", "config.train.autocast=True rounds matmul operands to "
     "config.train.compute_dtype, which is float32"),
])
def test_impossible_values_fail_validation(key, value, message):
  c = config_lib.apply_overrides(config_lib.load_config_file(QUICKSTART), [(key, value)])
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(c)


def test_autocast_is_refused_where_the_paradigm_does_not_apply_it():
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "fmnist_maskgit.py"))
  c = config_lib.apply_overrides(c, [("train.compute_dtype", "bfloat16"),
                                     ("train.autocast", "true")])
  with pytest.raises(ConfigError, match="autocast is not implemented for the 'maskgit' "
                     r"paradigm \(it is for: .*flow"):
    config_lib.validate(c)
  config_lib.validate(config_lib.apply_overrides(c, [("train.autocast", "false")]))


def test_parse_arg_literals():
  a = config_lib.parse_arg("variant=S/2,runlocal,steps=3")
  assert a.variant == "S/2" and a.runlocal is True and a.steps == 3


def test_missing_config_file():
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load_config_file("configs/nope.py")


def test_a_bad_config_argument_is_a_config_error_naming_it():
  # get_config's own ValueError (an int argument given a word; an unknown choice)
  # reaches the user as one ConfigError line, not a traceback.
  with pytest.raises(ConfigError, match=r"mfmnist_video_tokenizer.py: get_config\("
                     r"'kl=1,latent_channels=x'\) failed: ValueError: invalid literal"):
    config_lib.load_config_file(os.path.join(ROOT, "configs",
                                             "mfmnist_video_tokenizer.py:kl=1,latent_channels=x"))
  with pytest.raises(ConfigError, match="objective='foo'; use flow or ddpm. Check the "
                     "arguments"):
    config_lib.load_config_file(os.path.join(ROOT, "configs",
                                             "mfmnist_video_dit.py:objective=foo"))


def test_video_configs_take_the_latent_size_from_the_vae():
  """``mfmnist_video_tokenizer:kl=1,downsample=2`` builds a causal VAE with one (space
  and time) downsampling: 9x32x32 clips -> 5x16x16 latents; ``mfmnist_video_dit:
  latents=DIR`` reads the latents' shape from DIR's tokens.json and patches them into
  4x4 tokens a latent frame (``CPU/4`` for 16x16, ``CPU/2`` for 8x8)."""
  import json  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxgen.tokenizers import nets  # pylint: disable=g-import-not-at-top
  cfgs = os.path.join(ROOT, "configs")
  c = config_lib.load_config_file(os.path.join(cfgs, "mfmnist_video_tokenizer.py:kl=1,"
                                               "downsample=2"))
  fields = {k: c.model[k] for k in ("channels", "z_channels", "embed_dim", "channel_mult",
                                    "temporal_downsample")}
  enc, _ = nets.build_nets(c.model.variant, image_channels=1, **fields)
  x = jax.ShapeDtypeStruct((1, 9, 32, 32, 1), jnp.float32)
  out = jax.eval_shape(lambda x: enc.init_with_output(jax.random.PRNGKey(0), x)[0], x)
  assert out.shape == (1, 5, 16, 16, 2 * 4)   # mean and log-variance
  # ``:ft=1``: no temporal downsampling, 9 frames -> 9 latent frames of 8x8
  c = config_lib.load_config_file(os.path.join(cfgs, "mfmnist_video_tokenizer.py:kl=1,ft=1"))
  enc, _ = nets.build_nets(c.model.variant, image_channels=1, **{
      k: c.model[k] for k in fields if k in c.model})
  out = jax.eval_shape(lambda x: enc.init_with_output(jax.random.PRNGKey(0), x)[0], x)
  assert out.shape == (1, 9, 8, 8, 2 * 4)
  with pytest.raises(ConfigError, match="ft=4; use 2"):
    config_lib.load_config_file(os.path.join(cfgs, "mfmnist_video_tokenizer.py:ft=4"))
  with pytest.raises(ConfigError, match="downsample=3; use 4"):
    config_lib.load_config_file(os.path.join(cfgs, "mfmnist_video_tokenizer.py:downsample=3"))
  with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "tokens.json"), "w") as f:
      json.dump(dict(code_shape=[5, 16, 16, 4]), f)
    dit = config_lib.load_config_file(os.path.join(cfgs, f"mfmnist_video_dit.py:latents={d}"))
  assert tuple(dit.data.code_shape) == (5, 16, 16, 4) and dit.model.variant == "CPU/4"
  dit = config_lib.load_config_file(os.path.join(cfgs, "mfmnist_video_dit.py:latents=/none"))
  assert tuple(dit.data.code_shape) == (5, 8, 8, 4) and dit.model.variant == "CPU/2"
