"""The small CNN of jaxgen's dataset classifiers (`jaxgen.eval.classifier`), whose
feature maps are also a tokenizer's perceptual loss (`jaxgen.losses.perceptual`)."""

import flax.linen as nn
import jax.numpy as jnp


class FeatureCNN(nn.Module):
  """[Conv3x3-ReLU-MaxPool] x (32, 64, 128) - Dense(256) = features - Dense(classes)."""
  num_classes: int = 10
  feature_dim: int = 256

  @nn.compact
  def __call__(self, x_uint8, train: bool = False):
    x = x_uint8.astype(jnp.float32) / 127.5 - 1.0
    for i, ch in enumerate((32, 64, 128)):
      x = nn.relu(nn.Conv(ch, (3, 3), name=f"conv{i}")(x))
      x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
    x = nn.Dropout(0.25, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    feats = nn.relu(nn.Dense(self.feature_dim, name="fc")(x))
    h = nn.Dropout(0.5, deterministic=not train)(feats)
    return nn.Dense(self.num_classes, name="head")(h), feats
