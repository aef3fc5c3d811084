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
])
def test_impossible_values_fail_validation(key, value, message):
  c = config_lib.apply_overrides(config_lib.load_config_file(QUICKSTART), [(key, value)])
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(c)


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
