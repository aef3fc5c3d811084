"""Paper-scale tokenizers on ImageNet 256x256, for real hardware (TPU pod / GPU cluster).

  :variant=vqgan   taming-transformers VQGAN f16, 1024 codes of 256 dims, attention at
                   16, L1 + LPIPS + PatchGAN (hinge, adaptive weight, disc_start 250k)
  :variant=vitvq   ViT-VQGAN-S (patch 8 -> 32x32 codes), 8192 factorised (32-d) and
                   l2-normalised codes, l2 + LPIPS + GAN
  :variant=msvq    VAR's multi-scale VQ-VAE: 4096 codes of 32 dims, 10 scales
                   (1,2,3,4,5,6,8,10,13,16), 4 shared phi convs, 3x3 quant convs
                   (108.95M parameters, as vae_ch160v4096z32.pth)
  :variant=kl      LDM / Stable Diffusion KL-f8 (32x32x4 latents, what DiT uses)

LPIPS weights cannot be downloaded by jaxgen: pass
``--config.paradigm.perceptual_weights=/path/lpips_vgg.npz`` (or the official .pth;
see jaxgen.losses.perceptual). ImageNet comes from TFDS ``imagenet2012`` (manual
download). ``runlocal`` shrinks batch and steps for a smoke test of the wiring, e.g.

  launch/tpu_pod.sh NAME ZONE train --config configs/imagenet256_tokenizer.py:variant=vqgan \\
      --workdir gs://BUCKET/vqgan --config.paradigm.perceptual_weights=gs://BUCKET/lpips.npz
"""

import common
from jaxgen.config import parse_arg

MODELS = {
    "vqgan": dict(name="vqgan", variant="vqgan_f16", bottleneck="vq", embed_dim=256,
                  codebook_size=1024, code_dim=256, beta=0.25),
    "vitvq": dict(name="vit_vqgan", variant="vitvq_small", bottleneck="vq", embed_dim=32,
                  codebook_size=8192, code_dim=32, l2_normalize=True, factorized=True,
                  beta=0.25),
    "msvq": dict(name="vqgan", variant="vqgan_f16", channels=160, z_channels=32,
                 bottleneck="msvq", embed_dim=32, codebook_size=4096, code_dim=32,
                 scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_phi=4, phi_ratio=0.5,
                 beta=0.25, quant_conv_kernel=3),
    "kl": dict(name="kl_vae", variant="kl_f8", bottleneck="kl", embed_dim=4),
}


def get_config(arg=None):
  arg = parse_arg(arg)
  variant = arg.get("variant", "vqgan")
  c = common.tokenizer_config()
  c.data = common.ml_collections.ConfigDict(dict(
      name="imagenet2012", data_dir="", source_dir="", image_size=256,
      pp="center_crop(256)|scale(-1, 1)|flip_lr", train_split="train",
      eval_split="validation"))
  c.model = common.ml_collections.ConfigDict(MODELS[variant])
  c.paradigm.perceptual = "lpips"
  c.paradigm.perceptual_weight = 1.0
  c.paradigm.perceptual_weights = ""
  c.paradigm.disc_weight = 0.8 if variant == "vqgan" else 0.1
  c.paradigm.disc_start = 250_001 if variant == "vqgan" else 50_001
  c.paradigm.disc_channels = 64
  c.paradigm.disc_layers = 3
  if variant == "kl":
    c.paradigm.bottleneck_weight = 1e-6   # LDM's kl_weight
    c.paradigm.disc_weight = 0.5
  if variant == "vitvq":
    c.paradigm.rec_loss = "l2"
  c.optim.lr = 4.5e-6 * 96 if variant == "vqgan" else 1e-4  # taming: base_lr * batch
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 0.0
  c.train.batch_size = 256
  c.train.num_steps = 500_000
  c.train.compute_dtype = "bfloat16"
  c.train.log_every = 100
  c.train.sample_every = 10_000
  c.train.ckpt_every = 5_000
  c.mesh = common.ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  if arg.get("runlocal"):
    c.train.batch_size = 8
    c.train.num_steps = 10
    c.train.compute_dtype = "float32"
    c.paradigm.perceptual = "none"
    c.paradigm.perceptual_weight = 0.0
  return c
