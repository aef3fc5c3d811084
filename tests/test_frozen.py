"""Frozen networks (`jaxgen.frozen`): a tokenizer's weights enter the jitted train step
and sampler as arguments, sharded on the mesh, never as constants of the program; a
run refuses a tokenizer other than the one it was trained with."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import image_token_config, init_only_run, tiny_tokenizer_config
from jaxgen import errors, frozen, generate
from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import base as tok_base
from jaxgen.train import loop


@pytest.fixture(scope="module")
def big_tokenizer(fake_fmnist_dir, data_dir, tmp_path_factory):
  """A VQ tokenizer of about 2.6M parameters (f4: 8x8 codes of 32), initialised only."""
  c = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "vq", gan=False)
  c.model.update(channels=64, channel_mult=(1, 2, 2))
  return init_only_run(c, str(tmp_path_factory.mktemp("big_tok") / "tokenizer"))


def _abstract_batch(exp):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                  sharding=mesh_lib.batch_sharding(exp.mesh, v.ndim))
          for k, v in exp.paradigm.example_batch(exp.config.train.batch_size).items()}


def test_tokenizer_loads_only_the_autoencoder_and_matches_its_checkpoint(big_tokenizer):
  tok = tok_base.Tokenizer.from_workdir(big_tokenizer)
  exp, state, _ = generate.load_run(big_tokenizer, data=False)
  want = jax.device_get(state.params["autoencoder"])
  got = jax.device_get(tok.params)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert "discriminator" not in tok.params and set(tok.variables) >= {"params"}
  assert tok.step == 0 and tok.fingerprint  # identified by its manifest
  n = sum(x.size for x in jax.tree.leaves(tok.variables))
  assert n > 2_000_000, n
  del exp


@pytest.mark.parametrize("paradigm", [
    "maskgit",
    # The same mechanism on VAR's programs: lowering them twice costs ~30 s, so slow.
    pytest.param("var", marks=[pytest.mark.uses_shared_fixtures, pytest.mark.slow])])
def test_train_step_and_sampler_carry_no_tokenizer_constants(
    request, fake_fmnist_dir, data_dir, paradigm):
  """The lowered programs hold < 1 MB of constants with a 3.8M-parameter (15 MB)
  tokenizer; the same step and sampler jitted the old way (closing over the weights)
  hold the encoder's and the decoder's weights, so the measure sees constants when
  they are there."""
  if paradigm == "var":  # the session's multi-scale tokenizer (tiny)
    tok_dir = request.getfixturevalue("msvq_run")[0]
    c = image_token_config("var", tok_dir, fake_fmnist_dir, data_dir, grid=(1, 2, 3, 4, 6, 8))
  else:
    tok_dir = request.getfixturevalue("big_tokenizer")
    c = image_token_config("maskgit", tok_dir, fake_fmnist_dir, data_dir)
  exp = loop.build(c, jax.devices()[:1], load_data=False)
  assert set(exp.frozen.networks) == {"tokenizer"}
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(exp.frozen.values))
  _, step = loop.make_train_step(exp)
  with mesh_lib.activate(exp.mesh):
    step_bytes = frozen.embedded_constant_bytes(step.lower(exp.abstract_state,
                                                           _abstract_batch(exp)))
    labels = jnp.zeros((4,), jnp.int32)
    key = jax.random.PRNGKey(0)
    sample = generate.sample_fn(exp)
    sample_bytes = frozen.embedded_constant_bytes(sample.lower(exp.abstract_state.params,
                                                               key, labels))
    closed = jax.jit(lambda p, r, y: exp.paradigm.sample(p, r, y))
    closed_sample = frozen.embedded_constant_bytes(closed.lower(exp.abstract_state.params,
                                                                key, labels))
    closed = jax.jit(functools.partial(exp.paradigm.train_step, tx=exp.tx,
                                       schedule=exp.schedule))
    closed_step = frozen.embedded_constant_bytes(closed.lower(exp.abstract_state,
                                                              _abstract_batch(exp)))
  print(f"{paradigm}: tokenizer {weight_bytes} bytes; constants as arguments: step "
        f"{step_bytes}, sampler {sample_bytes}; closed over: step {closed_step}, "
        f"sampler {closed_sample}")
  assert step_bytes < 1 << 20 and sample_bytes < 1 << 20, (step_bytes, sample_bytes)
  assert closed_step + closed_sample > 0.9 * weight_bytes, (closed_step, closed_sample)
  if paradigm == "maskgit":
    assert weight_bytes > 8e6


def test_frozen_weights_are_placed_with_the_mesh_rules(big_tokenizer, fake_fmnist_dir,
                                                       data_dir):
  """On a 2x4 (data x fsdp) mesh a tokenizer weight with an "embed"-named axis that 4
  divides is split over fsdp, as a trained parameter would be."""
  import ml_collections
  c = image_token_config("maskgit", big_tokenizer, fake_fmnist_dir, data_dir)
  c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4, tensor=1))
  exp = loop.build(c, jax.devices(), load_data=False)
  shardings = jax.tree.leaves(exp.frozen.shardings)
  assert any("fsdp" in str(s.spec) for s in shardings)
  for v, s in zip(jax.tree.leaves(exp.frozen.values), shardings):
    assert v.sharding == s


@pytest.mark.slow  # the default tier's budget: the refusal end to end (sampling and a
# resumed run refuse a tokenizer with another fingerprint): test_latent.py (default)
def test_a_run_refuses_another_tokenizer_than_its_own(fake_fmnist_dir, data_dir, tmp_path):
  """Two tiny tokenizers of the same shapes, other weights."""
  c = tiny_tokenizer_config(fake_fmnist_dir, data_dir, "vq", gan=False)
  c.model.channel_mult = (1, 2, 2)
  own, other = str(tmp_path / "own_tok"), str(tmp_path / "other_tok")
  init_only_run(c, own, other)
  built = {k: loop.build(image_token_config("maskgit", d, fake_fmnist_dir, data_dir),
                         jax.devices()[:1], load_data=False) for k, d in (("own", own),
                                                                          ("other", other))}
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  frozen.write_record(wd, built["own"].frozen.networks)  # what `jaxgen train` writes
  record = frozen.read_record(wd)["tokenizer"]
  assert record["workdir"] == os.path.abspath(own) and record["step"] == 0
  assert record["fingerprint"] and record["latent_shape"] == [8, 8, 8]
  frozen.check_record(wd, built["own"].frozen.networks)  # its own tokenizer: fine
  with pytest.raises(errors.ConfigError, match=r"trained with the tokenizer .*own_tok step 0 "
                     r"\(fingerprint=\w+\), but this command loads .*other_tok step 0"):
    frozen.check_record(wd, built["other"].frozen.networks)
