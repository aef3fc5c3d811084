"""Tokenizer networks: shapes/dtypes at the named sizes (paper sizes abstractly at
256x256x3 via jax.eval_shape, CPU sizes run at 32x32x1), parameter counts against the
published number where one exists and an independent closed-form count of the reference
architecture otherwise, the PatchGAN discriminator, logical axis names."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.sharding import mesh as mesh_lib
from jaxgen.tokenizers import nets

PAPER = ("vqgan_f16", "maskgit_f16", "kl_f8", "vitvq_small", "vitvq_base")
CPU = ("fmnist_tiny", "fmnist_small", "fmnist_kl_tiny", "fmnist_vit_tiny")


def _abstract(module, *inputs):
  return jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), *inputs)))


def _np_params(module, *inputs, seed=0):
  """Random parameters filled in NumPy from the abstract init (no jitted init to compile:
  the random-number kernels of an init dominate compile time on a loaded CPU)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 2500
    return rng.normal(0.0, fan_in ** -0.5, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract(module, *inputs))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _latent_channels(kw):
  return kw["z_channels"] * (2 if kw.get("double_z") else 1)


def _nets_and_counts(name, size, channels):
  kw = nets.autoencoder_variant(name)
  enc, dec = nets.build_nets(name, channels)
  f = nets.downsampling_factor(name)
  x = jnp.zeros((1, size, size, channels))
  z = jnp.zeros((1, size // f, size // f, kw["z_channels"]))
  n_enc, n_dec = (_count(_abstract(m, v)["params"]) for m, v in ((enc, x), (dec, z)))
  return enc, dec, x, z, n_enc, n_dec


# ------------------------------------------------------------------ independent counts
# Closed-form parameter counts written from the reference constructors (taming
# ``diffusionmodules/model.py`` Encoder/Decoder, pix2pix NLayerDiscriminator, and the
# ViT-VQGAN layout documented in jaxgen.tokenizers.nets), not from our modules.


def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _res(cin, cout):  # norm1, conv1, norm2, conv2, nin_shortcut
  return 2 * cin + _conv(3, cin, cout) + 2 * cout + _conv(3, cout, cout) + (
      _conv(1, cin, cout) if cin != cout else 0)


def _attn(c):  # norm + q, k, v, proj_out 1x1 convs
  return 2 * c + 4 * _conv(1, c, c)


def taming_encoder_count(ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
                         in_channels, z_channels, double_z, mid_attn=True):
  n, res = _conv(3, in_channels, ch), resolution
  in_mult = (1,) + tuple(ch_mult)
  for level, mult in enumerate(ch_mult):
    block_in, block_out = ch * in_mult[level], ch * mult
    for _ in range(num_res_blocks):
      n += _res(block_in, block_out)
      block_in = block_out
      n += _attn(block_in) if res in attn_resolutions else 0
    if level != len(ch_mult) - 1:
      n += _conv(3, block_in, block_in)
      res //= 2
  n += 2 * _res(block_in, block_in) + (_attn(block_in) if mid_attn else 0)
  return n + 2 * block_in + _conv(3, block_in, (2 if double_z else 1) * z_channels)


def taming_decoder_count(ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
                         out_channels, z_channels, mid_attn=True):
  block_in = ch * ch_mult[-1]
  res = resolution // 2 ** (len(ch_mult) - 1)
  n = _conv(3, z_channels, block_in)
  n += 2 * _res(block_in, block_in) + (_attn(block_in) if mid_attn else 0)
  for level in reversed(range(len(ch_mult))):
    block_out = ch * ch_mult[level]
    for _ in range(num_res_blocks + 1):
      n += _res(block_in, block_out)
      block_in = block_out
      n += _attn(block_in) if res in attn_resolutions else 0
    if level != 0:
      n += _conv(3, block_in, block_in)
      res *= 2
  return n + 2 * block_in + _conv(3, block_in, out_channels)


def _maskgit_res(cin, cout):  # maskgit ResBlock: bias-free convs, 1x1 shortcut on the output
  return 2 * cin + _conv(3, cin, cout, False) + 2 * cout + _conv(3, cout, cout, False) + (
      _conv(1, cout, cout, False) if cin != cout else 0)


def maskgit_encoder_count(ch, ch_mult, num_res_blocks, in_channels, embedding_dim):
  """maskgit/nets/vqgan_tokenizer.py Encoder (avg-pool downsampling: no parameters)."""
  n, block_in = _conv(3, in_channels, ch, False), ch
  for mult in ch_mult:
    for _ in range(num_res_blocks):
      n += _maskgit_res(block_in, ch * mult)
      block_in = ch * mult
  n += num_res_blocks * _maskgit_res(block_in, block_in)
  return n + 2 * block_in + _conv(1, block_in, embedding_dim)


def maskgit_decoder_count(ch, ch_mult, num_res_blocks, out_channels, embedding_dim):
  """maskgit/nets/vqgan_tokenizer.py Decoder."""
  block_in = ch * ch_mult[-1]
  n = _conv(3, embedding_dim, block_in) + num_res_blocks * _maskgit_res(block_in, block_in)
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_res_blocks):
      n += _maskgit_res(block_in, ch * ch_mult[level])
      block_in = ch * ch_mult[level]
    if level > 0:
      n += _conv(3, block_in, block_in)
  return n + 2 * block_in + _conv(3, block_in, out_channels)


def _vit_blocks(d, depth, mlp):  # 2 LN, qkv, proj, fc1, fc2; then LN + tanh FFN
  block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
  return depth * block + 2 * d + (d * mlp + mlp) + (mlp * d + d)


def vit_encoder_count(p, d, depth, mlp, in_channels, z):
  return (p * p * in_channels * d + d) + _vit_blocks(d, depth, mlp) + (d * z + z)


def vit_decoder_count(p, d, depth, mlp, out_channels, z):
  return (z * d + d) + _vit_blocks(d, depth, mlp) + (d * p * p * out_channels
                                                      + p * p * out_channels)


def nlayer_discriminator_count(in_channels, ndf=64, n_layers=3):
  n = _conv(4, in_channels, ndf)
  mult = 1
  for k in range(1, n_layers + 1):
    prev, mult = mult, min(2 ** k, 8)
    n += _conv(4, ndf * prev, ndf * mult, bias=False) + 2 * ndf * mult  # conv + norm
  return n + _conv(4, ndf * mult, 1)


def _reference_counts(name, size, channels):
  kw = nets.autoencoder_variant(name)
  if kw["arch"] == "vit":
    mlp = int(kw["hidden_size"] * kw["mlp_ratio"])
    args = (kw["patch_size"], kw["hidden_size"], kw["depth"], mlp, channels,
            kw["z_channels"])
    return vit_encoder_count(*args), vit_decoder_count(*args)
  if kw.get("layout") == "maskgit":
    args = (kw["channels"], kw["channel_mult"], kw["num_res_blocks"], channels,
            kw["z_channels"])
    return maskgit_encoder_count(*args), maskgit_decoder_count(*args)
  common = (kw["channels"], kw["channel_mult"], kw["num_res_blocks"],
            kw["attn_resolutions"], size)
  mid = kw.get("mid_attn", True)
  return (taming_encoder_count(*common, channels, kw["z_channels"],
                               kw.get("double_z", False), mid),
          taming_decoder_count(*common, channels, kw["z_channels"], mid))


# ------------------------------------------------------------------ parameter counts


def test_kl_f8_matches_published_stable_diffusion_vae_count():
  # LDM kl-f8 = the Stable Diffusion VAE; diffusers' AutoencoderKL reports 83,653,863
  # parameters, which include quant_conv (8 -> 8, 1x1) and post_quant_conv (4 -> 4, 1x1).
  *_, n_enc, n_dec = _nets_and_counts("kl_f8", 256, 3)
  quant_convs = _conv(1, 8, 8) + _conv(1, 4, 4)
  assert n_enc + n_dec + quant_convs == 83_653_863


@pytest.mark.parametrize("name,size,channels", [(n, 256, 3) for n in PAPER]
                         + [(n, 32, 1) for n in CPU])
def test_parameter_counts_match_reference_formula(name, size, channels):
  *_, n_enc, n_dec = _nets_and_counts(name, size, channels)
  assert (n_enc, n_dec) == _reference_counts(name, size, channels)


def test_paper_size_counts():
  # Encoder + decoder (no quantizer, quant convs or loss nets), derived by the formula
  # above (no published number for these exact networks); pinned against regressions.
  # maskgit_f16 + its 1024 x 256 codebook = 54,515,587, the count of the official
  # VQVAE (jax.eval_shape of maskgit/nets/vqgan_tokenizer.py at vqgan_config.py's sizes).
  expected = {"vqgan_f16": 71_747_971, "maskgit_f16": 54_253_443, "kl_f8": 83_653_771,
              "vitvq_small": 54_870_240, "vitvq_base": 179_902_688}
  got = {n: sum(_nets_and_counts(n, 256, 3)[-2:]) for n in expected}
  assert got == expected


def test_discriminator_count_matches_pix2pix():
  d = nets.PatchGANDiscriminator()
  n6 = _count(_abstract(d, jnp.zeros((1, 256, 256, 6)))["params"])
  n3 = _count(_abstract(d, jnp.zeros((1, 256, 256, 3)))["params"])
  assert n6 == nlayer_discriminator_count(6) and n3 == nlayer_discriminator_count(3)
  assert round(n6 / 1e6, 3) == 2.769  # pix2pix prints "[Network D] ... 2.769 M" (6 ch in)
  assert n3 == 2_765_633  # taming's VQGAN discriminator (BatchNorm has the same 2C)


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", PAPER)
def test_paper_sizes_encode_decode_shapes_abstract(name):
  kw = nets.autoencoder_variant(name)
  enc, dec, x, z, *_ = _nets_and_counts(name, 256, 3)
  f = nets.downsampling_factor(name)
  p_enc, p_dec = _abstract(enc, x), _abstract(dec, z)
  out_z = jax.eval_shape(enc.apply, p_enc, jnp.zeros((2, 256, 256, 3), jnp.bfloat16))
  z_in = jnp.zeros((2, 256 // f, 256 // f, kw["z_channels"]))
  out_x = jax.eval_shape(dec.apply, p_dec, z_in)
  chex.assert_shape(out_z, (2, 256 // f, 256 // f, _latent_channels(kw)))
  chex.assert_shape(out_x, (2, 256, 256, 3))
  assert out_z.dtype == out_x.dtype == jnp.float32


@pytest.mark.parametrize("name", CPU)
def test_cpu_sizes_run_at_32x32x1(name):
  kw = nets.autoencoder_variant(name)
  enc, dec = nets.build_nets(name, 1)
  f = nets.downsampling_factor(name)
  assert enc.downsample_factor == dec.downsample_factor == f
  x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
  z = jax.jit(enc.apply)(_np_params(enc, x), x)
  chex.assert_shape(z, (2, 32 // f, 32 // f, _latent_channels(kw)))
  zq = z[..., :kw["z_channels"]]
  y = jax.jit(dec.apply)(_np_params(dec, zq), zq)
  chex.assert_shape(y, x.shape)
  chex.assert_type([z, y], jnp.float32)
  chex.assert_tree_all_finite([z, y])


def test_bfloat16_compute_and_dropout():
  enc, dec = nets.build_nets("fmnist_tiny", 1, dtype=jnp.bfloat16, dropout=0.1)
  x = jnp.ones((2, 32, 32, 1))
  p = _np_params(enc, x)
  train = jax.jit(lambda p, x, r: enc.apply(p, x, train=True, rngs={"dropout": r}))
  z_a, z_b = (train(p, x, jax.random.PRNGKey(i)) for i in (1, 2))
  assert z_a.dtype == jnp.float32
  assert not np.allclose(z_a, z_b)  # dropout active in training
  ev = jax.jit(enc.apply)
  chex.assert_trees_all_close(ev(p, x), ev(p, x))  # deterministic in eval


def test_conv_nets_take_any_number_of_spatial_axes():
  # (N, T, H, W, C): the convolutions and attention read the spatial axes from x.
  enc = nets.ConvEncoder(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(4,), out_channels=3)
  dec = nets.ConvDecoder(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(4,), out_channels=1)
  x = jnp.ones((1, 4, 8, 8, 1))
  pe = _np_params(enc, x)
  z = jax.jit(enc.apply)(pe, x)
  chex.assert_shape(z, (1, 2, 4, 4, 3))
  chex.assert_shape(jax.jit(dec.apply)(_np_params(dec, z), z), x.shape)
  assert pe["params"]["conv_in"]["Conv_0"]["kernel"].shape == (3, 3, 3, 1, 8)
  assert "down_0_attn_0" not in pe["params"] and "down_1_attn_0" in pe["params"]
  boxed = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), x))
  assert boxed["params"]["conv_in"]["Conv_0"]["kernel"].names == (
      "conv_t", "conv_h", "conv_w", "conv_in", "conv_out")


def test_attention_placed_at_attn_resolutions():
  params = _abstract(nets.build_nets("vqgan_f16", 3)[0], jnp.zeros((1, 256, 256, 3)))
  attn = sorted(k for k in params["params"] if "attn" in k)
  assert attn == ["down_4_attn_0", "down_4_attn_1", "mid_attn_1"]  # 16x16 level only


def test_vit_learned_position_embedding_and_errors():
  enc, dec = nets.build_nets("fmnist_vit_tiny", 1, pos_emb="learned")
  x = jnp.zeros((1, 32, 32, 1))
  p = _abstract(enc, x)
  assert p["params"]["pos_embedding"].shape == (64, 128)
  with pytest.raises(ValueError, match="divisible"):
    _abstract(enc, jnp.zeros((1, 30, 30, 1)))
  with pytest.raises(ValueError, match="divisible"):
    _abstract(nets.build_nets("fmnist_tiny", 1)[0], jnp.zeros((1, 30, 30, 1)))
  with pytest.raises(ValueError, match="Unknown autoencoder variant"):
    nets.autoencoder_variant("vqgan_f99")
  with pytest.raises(ValueError, match="channnels"):
    nets.build_nets("fmnist_tiny", 1, channnels=8)
  with pytest.raises(ValueError, match="channel_mult"):
    nets.build_nets("fmnist_vit_tiny", 1, channel_mult=(1, 2))


def test_vit_double_z_and_last_layer_paths():
  enc, dec = nets.build_nets("fmnist_vit_tiny", 1, double_z=True)
  chex.assert_shape(jax.eval_shape(enc.apply, _abstract(enc, jnp.zeros((1, 32, 32, 1))),
                                   jnp.zeros((1, 32, 32, 1))), (1, 8, 8, 32))
  p = _abstract(dec, jnp.zeros((1, 8, 8, 16)))["params"]
  path = nets.last_layer_path(p, prefix=("decoder",))
  assert path == ("decoder", "to_pixels", "Dense_0", "kernel")
  _, conv_dec = nets.build_nets("fmnist_tiny", 1)
  p = _abstract(conv_dec, jnp.zeros((1, 8, 8, 16)))["params"]
  assert nets.last_layer_path(p) == ("conv_out", "Conv_0", "kernel")
  assert p["conv_out"]["Conv_0"]["kernel"].shape == (3, 3, 32, 1)
  with pytest.raises(ValueError, match="conv_out"):
    nets.last_layer_path({"foo": {}})


def test_discriminator_shapes_and_norms():
  d = nets.PatchGANDiscriminator()
  chex.assert_shape(jax.eval_shape(lambda: d.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((2, 256, 256, 3)))[0]), (2, 30, 30, 1))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
  for norm in ("group", "none"):
    dn = nets.PatchGANDiscriminator(channels=16, norm=norm)
    p = _np_params(dn, x)
    logits = jax.jit(dn.apply)(p, x)
    chex.assert_shape(logits, (2, 2, 2, 1))
    chex.assert_tree_all_finite(logits)
    assert ("norm_1" in p["params"]) == (norm == "group")
    # Each example's logits depend on that example only (no batch statistics).
    chex.assert_trees_all_close(logits[:1], jax.jit(dn.apply)(p, x[:1]), atol=1e-5)
  with pytest.raises(ValueError, match="norm"):
    _abstract(nets.PatchGANDiscriminator(norm="batch"), x)


def test_parameters_carry_logical_axes_and_shard():
  enc = nets.build_nets("fmnist_small", 1)[0]
  boxed = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert all(isinstance(v, nn.Partitioned) and len(v.names) == v.value.ndim for v in leaves)
  m = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  shardings = mesh_lib.tree_shardings(boxed, m)
  spec = shardings["params"]["conv_out"]["Conv_0"]["kernel"].spec
  assert tuple(spec)[-1] == "tensor"  # 32 output channels split over tensor=2
  assert math.prod(m.devices.shape) == 8
