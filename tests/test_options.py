"""Typed sampling options and the one guidance rule (`jaxgen.samplers.options`,
`jaxgen.samplers.cfg`): each paradigm's declared options, filled from config.sample,
overridden by name with type conversion, unknown names and bad values refused naming
the paradigm / option; the guidance combination and schedule against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import registry
from jaxgen.errors import ConfigError
from jaxgen.samplers import cfg
from jaxgen.samplers import var as var_sampler


def _options(name):
  return registry.PARADIGMS.get(name).Options


@pytest.mark.parametrize("name", ["flow", "diffusion", "maskgit", "mage", "autoregressive",
                                  "var", "gan", "tokenizer"])
def test_every_paradigm_declares_typed_options_with_checked_defaults(name):
  o = _options(name)()
  o.check("sample")  # the declared defaults are valid
  assert set(o.names()) == set(o.defaults())
  if name not in ("gan", "tokenizer"):
    assert "cfg_scale" in o.names()


def test_overrides_are_converted_from_cli_strings_and_checked():
  o = _options("maskgit")().replace("maskgit", steps="12", cfg_scale="2.5",
                                    cfg_schedule="linear", top_k="3")
  assert (o.steps, o.cfg_scale, o.cfg_schedule, o.top_k) == (12, 2.5, "linear", 3)
  assert isinstance(o.steps, int) and isinstance(o.cfg_scale, float)
  m = _options("mage")().replace("mage", drop_masked="true")
  assert m.drop_masked is True
  assert _options("flow")().replace("flow", steps=None).steps == 20  # None keeps
  for field, value, msg in (("steps", "0", r"sample\.steps=0 must be >= 1"),
                            ("steps", "2.5", r"sample\.steps='2.5' must be a int"),
                            ("cfg_schedule", "cosine", r"cfg_schedule='cosine'; use one of "
                                                       "constant, linear"),
                            ("temperature", -1.0, "temperature=-1.0 must be >= 0")):
    with pytest.raises(ConfigError, match=msg):
      _options("maskgit")().replace("maskgit", **{field: value})
  with pytest.raises(ConfigError, match=r"drop_masked='maybe' must be true or false"):
    _options("mage")().replace("mage", drop_masked="maybe")


def test_an_option_a_paradigm_does_not_have_names_the_paradigm_and_its_options():
  with pytest.raises(ConfigError, match=r"the 'flow' paradigm has no sampling option "
                     r"'top_k'; its options are micro_batch, cfg_scale, steps, solver, shift\."):
    _options("flow")().replace("flow", top_k=5)
  with pytest.raises(ConfigError, match="'diffusion' paradigm has no sampling option "
                     "'shift'"):
    _options("diffusion")().replace("diffusion", shift=3.0)
  with pytest.raises(ConfigError, match="'gan' paradigm has no sampling option "
                     "'cfg_scale'; it takes no sampling options"):
    _options("gan")().replace("gan", cfg_scale=2.0)


def test_from_config_reads_the_options_and_refuses_other_fields():
  import ml_collections
  s = ml_collections.ConfigDict(dict(temperature=0.5, top_k=7, batch_size=64))
  o = _options("autoregressive").from_config(s, "autoregressive")
  assert (o.temperature, o.top_k, o.top_p, o.cfg_scale) == (0.5, 7, 1.0, 1.0)
  s.steps = 8
  with pytest.raises(ConfigError, match=r"config\.sample\.steps: the 'autoregressive'"):
    _options("autoregressive").from_config(s, "autoregressive")
  # the flow / diffusion preset section carries both's fields; each ignores the other's
  both = ml_collections.ConfigDict(dict(steps=4, solver="ddim", shift=1.0, eta=0.5,
                                        cfg_scale=1.0, cfg_channels=0,
                                        clip_denoised=False, batch_size=8))
  assert _options("diffusion").from_config(both, "diffusion").eta == 0.5
  both.solver = "euler"
  assert _options("flow").from_config(both, "flow").solver == "euler"


def test_traced_options_pass_unchecked_through_jit():
  o = _options("flow")()
  got = jax.jit(lambda s: jnp.asarray(o.replace("flow", cfg_scale=s).cfg_scale) * 2)(1.5)
  assert float(got) == 3.0


def test_combine_is_the_guidance_rule_on_a_doubled_batch():
  rng = np.random.default_rng(0)
  out = rng.normal(size=(6, 5, 4)).astype(np.float32)
  cond, uncond = out[:3], out[3:]
  np.testing.assert_allclose(cfg.combine(jnp.asarray(out), 2.5),
                             uncond + 2.5 * (cond - uncond), rtol=1e-6)
  part = np.asarray(cfg.combine(jnp.asarray(out), 2.5, channels=3))
  np.testing.assert_allclose(part[..., :3], (uncond + 2.5 * (cond - uncond))[..., :3],
                             rtol=1e-6)
  np.testing.assert_array_equal(part[..., 3:], cond[..., 3:])


def test_guidance_schedule_in_python_and_traced_steps():
  n, s = 8, 3.0
  ref = 1.0 + (s - 1.0) * (np.arange(n) + 1) / n  # linear: reaches s at the last step
  py = [cfg.guidance_scale(i, n, s, "linear") for i in range(n)]
  traced = jax.jit(jax.vmap(lambda i: cfg.guidance_scale(i, n, s, "linear")))(jnp.arange(n))
  np.testing.assert_allclose(py, ref, rtol=1e-12)
  np.testing.assert_allclose(traced, ref, rtol=1e-6)
  assert all(cfg.guidance_scale(i, n, s, "constant") == s for i in range(n))
  # VAR's rule, the first scale unguided: 1 + (s - 1) k / (S - 1)
  num = 10
  var = [var_sampler.guidance_scale(k, num, s, "linear") for k in range(num)]
  np.testing.assert_allclose(var, 1.0 + (s - 1.0) * np.arange(num) / (num - 1), rtol=1e-12)
  assert var_sampler.guidance_scale(0, 1, s, "linear") == 1.0
  with pytest.raises(ValueError, match="constant, linear"):
    cfg.guidance_scale(0, n, s, "cosine")
