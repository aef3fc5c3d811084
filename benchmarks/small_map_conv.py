"""Convolutions on maps no larger than their kernel: im2col + matmul vs XLA's conv.

  python benchmarks/small_map_conv.py              # PatchGAN + a GAN tokenizer step
  python benchmarks/small_map_conv.py --no-step    # the discriminator alone

XLA's CPU backend computes the gradients of such convolutions (a PatchGAN's stride-1
4x4 conv on its 4x4 map at 32x32 inputs) 20-30x slower than their forward pass;
`jaxgen.nn.layers.conv_general_dilated` writes them as im2col + one matmul on CPU. This
prints, in one run, the time of each with the rewrite on and off
(`layers.small_map_im2col`): the PatchGAN forward + backward on 72 frames of 32x32 (9
frames x batch 8, what the video tokenizer's GAN sees) at 16, 32 and 64 channels
(taming's), then a whole train step of the causal video VAE with its GAN on. Only the
ratios mean something across machines.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgen import config as config_lib  # pylint: disable=wrong-import-position
from jaxgen.nn import layers  # pylint: disable=wrong-import-position
from jaxgen.tokenizers import nets  # pylint: disable=wrong-import-position

STEP_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                           "mfmnist_video_tokenizer.py:kl=1,setting=directed")


def discriminator_seconds(channels: int, frames: int, enabled: bool, iters: int) -> float:
  disc = nets.PatchGANDiscriminator(channels=channels)
  x = jax.random.normal(jax.random.PRNGKey(0), (frames, 32, 32, 1))
  params = disc.init(jax.random.PRNGKey(1), x)
  with layers.small_map_im2col(enabled):  # read at trace time: jit inside
    step = jax.jit(jax.grad(lambda p, x: jnp.mean(disc.apply(p, x) ** 2), (0, 1)))
    jax.block_until_ready(step(params, x))
  return bench_utils.time_fn(step, params, x, iters=iters)


def step_seconds(enabled: bool, iters: int) -> float:
  config = config_lib.load_config_file(STEP_CONFIG)
  config.paradigm.disc_weight = 0.5
  config.paradigm.disc_start = 0
  config.paradigm.disc_channels = 64
  config.train.compute_dtype = "float32"
  with layers.small_map_im2col(enabled):
    sec, _ = train_throughput.measure(config, config.train.batch_size, iters)
  return sec


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=72)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--no-step", action="store_true", help="skip the tokenizer train step")
  args = p.parse_args()
  print(f"devices {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"PatchGAN (3 layers) forward + backward, {args.frames} frames of 32x32x1:")
  for ch in (16, 32, 64):
    plain = discriminator_seconds(ch, args.frames, False, args.iters)
    fast = discriminator_seconds(ch, args.frames, True, args.iters)
    print(f"  {ch:3d} channels   conv {plain * 1e3:8.1f} ms   im2col {fast * 1e3:8.1f} ms"
          f"   speed-up {plain / fast:5.2f}x", flush=True)
  if not args.no_step:
    plain, fast = step_seconds(False, args.iters), step_seconds(True, args.iters)
    print("causal video KL-VAE + PatchGAN (64 channels) train step, batch 8 x 9 frames:")
    print(f"  conv {plain * 1e3:8.1f} ms   im2col {fast * 1e3:8.1f} ms   speed-up "
          f"{plain / fast:5.2f}x")


if __name__ == "__main__":
  main()
