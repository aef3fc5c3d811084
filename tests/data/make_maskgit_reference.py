"""Makes the MaskGIT tokenizer and transformer parity data of
tests/test_convert_maskgit.py by running the OFFICIAL google-research/maskgit Flax code
once (never imported by the tests).

Ran with: google-research/maskgit at commit 1db23594e1bd328ee78eadcd148a19281cd0f5b8
(2022-11-18; `maskgit/nets/vqgan_tokenizer.py`, `maskgit/nets/layers.py`,
`maskgit/libml/losses.py`, `maskgit/nets/maskgit_transformer.py` unmodified), jax 0.10.2, flax 0.12.8, numpy on CPU (jaxgen's
/work/main/.venv), as

  python tests/data/make_maskgit_reference.py /path/to/maskgit   # its checkout (root)

It instantiates the official ``vqgan_tokenizer.VQVAE`` (train=False, as
``maskgit/inference.py`` does) at a small size: filters 8, channel_multipliers (1, 2)
(f2: widths 8, 16, so a width change and the official shortcut), 2 res blocks, 8
codes of 8 dims, swish, GroupNorm, average-pool downsampling (``conv_downsample`` False,
as the released config). The one change to the official code: its GroupNorm has 32
groups, which needs widths that are multiples of 32 and a checkpoint over this test's
size budget, so ``layers.get_norm_layer`` gives gcd(32, C) groups (what jaxgen's
GroupNorm does; 32 at the official widths), here groups of one channel. Every parameter is drawn
at random (zero-initialised biases included, GroupNorm scales around 1) and the codebook
is set to encoder outputs of random images plus noise, so codes are spread. It writes

  tests/data/maskgit_tokenizer_tiny.msgpack  the variables as the released
      ``tokenizer_imagenet256_checkpoint`` stores them (``flax.serialization.to_bytes``
      of ``{"params": ...}``, read by ``maskgit.utils.restore_from_path``);
  tests/data/maskgit_tokenizer_tiny_outputs.npz  ``x`` (2, 16, 16, 3) images in
      [0, 1] (MaskGIT's pixel range), ``indices`` (official ``encode_to_indices``),
      ``decoded`` (official ``decode_from_indices`` of those indices).

and the official ``maskgit_transformer.Transformer`` (BERT: post-LN blocks, LayerNorm
eps 1e-12, tanh GELU, MLM head tied to the word embeddings plus a bias) as
``maskgit/inference.py`` builds it, for those 8 codes and 10 classes (vocabulary 8 +
10 + 1: codes, class tokens ``codebook_size + label``, the [MASK] token id -1, i.e. the
last row), over a 7x7 code grid (50 positions with the class token; the grid of an
f4 tokenizer on 28x28 Fashion-MNIST, 10 classes, for the end-to-end test): hidden 16, 2
layers, 2 heads, MLP 32, every parameter random. It writes

  tests/data/maskgit_transformer_tiny.msgpack  ``flax.serialization.to_bytes`` of its
      variables, as ``maskgit_imagenet256_checkpoint``;
  tests/data/maskgit_transformer_tiny_outputs.npz  ``input_ids`` (2, 50) (class token,
      then codes with about half of them -1 = [MASK]) and ``logits`` (2, 50, 19), the
      official ``apply(variables, input_ids, deterministic=True)``.
"""

import functools
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main(maskgit_root):
  sys.path.insert(0, maskgit_root)
  import flax  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from maskgit.nets import layers, vqgan_tokenizer  # pylint: disable=import-outside-toplevel

  official_norm = layers.get_norm_layer

  def get_norm_layer(train, dtype, norm_type="BN"):
    # At widths 8 and 16, gcd(32, C) groups are groups of one channel.
    assert official_norm(train, dtype, norm_type).func is nn.GroupNorm
    return functools.partial(nn.GroupNorm, dtype=dtype, num_groups=None, group_size=1)

  layers.get_norm_layer = get_norm_layer

  config = ml_collections.ConfigDict()
  config.vqvae = ml_collections.ConfigDict(dict(
      quantizer="vq", codebook_size=8, entropy_loss_ratio=0.1, entropy_temperature=0.01,
      entropy_loss_type="softmax", commitment_cost=0.25, filters=8, num_res_blocks=2,
      channel_multipliers=[1, 2], embedding_dim=8, conv_downsample=False,
      activation_fn="swish", norm_type="GN"))
  model = vqgan_tokenizer.VQVAE(config=config, dtype=jnp.float32, train=False)
  rng = np.random.default_rng(0)
  x = rng.uniform(0.0, 1.0, (2, 16, 16, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x, method=lambda m, v: m.decode_from_indices(
      m.encode_to_indices(v)))
  variables = flax.core.unfreeze(variables)

  def noised(path, leaf):
    name = path[-1].key
    if name == "scale":
      return (1.0 + 0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
    if name == "bias":
      return (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1
    return (rng.standard_normal(leaf.shape) * fan_in ** -0.5).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(noised, variables)
  feats = model.apply(variables, x, method=lambda m, v: m.encoder(v))
  flat = np.asarray(feats).reshape(-1, feats.shape[-1])
  pick = rng.choice(len(flat), config.vqvae.codebook_size, replace=False)
  variables["params"]["quantizer"]["codebook"] = (
      flat[pick] + 0.1 * flat.std() * rng.standard_normal(flat[pick].shape)
  ).astype(np.float32)
  indices = model.apply(variables, x, method=model.encode_to_indices)
  decoded = model.apply(variables, indices, method=model.decode_from_indices)
  # the margin between the nearest and the second-nearest code: codes are stable
  d = np.sort(((flat[:, None] - variables["params"]["quantizer"]["codebook"][None]) ** 2
               ).sum(-1), axis=1)
  print("codes used:", np.unique(np.asarray(indices)).size, "of", config.vqvae.codebook_size,
        "| smallest distance gap:", float((d[:, 1] - d[:, 0]).min()))
  with open(os.path.join(HERE, "maskgit_tokenizer_tiny.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(variables))
  np.savez(os.path.join(HERE, "maskgit_tokenizer_tiny_outputs.npz"), x=x,
           indices=np.asarray(indices, np.int32), decoded=np.asarray(decoded, np.float32))
  print(jax.tree.map(np.shape, variables))
  print("decoded mean |.|:", float(np.abs(np.asarray(decoded)).mean()))

  from maskgit.nets import maskgit_transformer  # pylint: disable=import-outside-toplevel
  codebook_size, num_classes, n = 8, 10, 49
  transformer = maskgit_transformer.Transformer(
      vocab_size=codebook_size + num_classes + 1, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.1,
      attention_probs_dropout_prob=0.1, max_position_embeddings=n + 1)
  labels = np.array([3, 7])
  codes = rng.integers(0, codebook_size, (2, n))
  codes = np.where(rng.uniform(size=(2, n)) < 0.5, -1, codes)  # the official [MASK] id
  input_ids = np.concatenate([codebook_size + labels[:, None], codes], 1).astype(np.int32)
  t_vars = flax.core.unfreeze(transformer.init(jax.random.PRNGKey(1), input_ids))
  t_vars = jax.tree_util.tree_map_with_path(noised, t_vars)
  logits = transformer.apply(t_vars, input_ids, deterministic=True)
  # -1 is the last row of the word embeddings (numpy-style indexing in nn.Embed)
  last = np.where(input_ids < 0, codebook_size + num_classes, input_ids)
  np.testing.assert_array_equal(logits, transformer.apply(t_vars, last, deterministic=True))
  with open(os.path.join(HERE, "maskgit_transformer_tiny.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(t_vars))
  np.savez(os.path.join(HERE, "maskgit_transformer_tiny_outputs.npz"), input_ids=input_ids,
           logits=np.asarray(logits, np.float32))
  print(jax.tree.map(np.shape, t_vars))
  print("logits std:", float(np.asarray(logits).std()))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/maskgit_src")
