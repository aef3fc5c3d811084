"""Shared presets for jaxgen configs: every field any experiment may override.

A config file builds on ``base_config()`` and changes what its experiment needs.
Fields are documented here once.
"""

import ml_collections  # re-exported for configs: common.ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist",     # registered dataset (jaxgen.data.datasets)
      data_dir="",              # prepared TFDS data; "" = $JAXGEN_DATA_DIR or ~/.cache/jaxgen/tfds
      source_dir="",            # raw files (IDX for Fashion-MNIST); "" = Debian package path
      pp="pad(32)|scale(-1, 1)",  # preprocessing ops, composed left to right
      train_split="train",
      eval_split="test",
  ))

  c.model = ml_collections.ConfigDict(dict(name="unet", variant="small"))

  c.paradigm = ml_collections.ConfigDict(dict(
      name="flow",
      time_sampling="logit_normal",  # uniform | logit_normal | mode (SD3)
      time_mean=0.0,
      time_std=1.0,
      loss_weighting="none",    # none | logit_normal
      label_dropout=0.1,        # p(label -> null class) for classifier-free guidance
      time_scale=1000.0,        # t in [0, 1] is fed to the network as t * time_scale
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-4,
      warmup_steps=100,
      schedule="constant",      # constant | cosine (to lr * final_lr_ratio)
      final_lr_ratio=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=1.0,            # global-norm clipping; 0 = off
      ema_decay=0.9999,
      ema_warmup=True,          # decay = min(ema_decay, (1 + step) / (10 + step))
      grad_accum=1,             # micro-batches per step (batch_size must divide)
  ))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000,
      batch_size=32,            # global batch, over all processes and devices
      seed=0,
      compute_dtype="float32",  # bfloat16 on TPU/GPU; params stay float32
      log_every=50,
      sample_every=500,         # PNG grid of EMA samples in <workdir>/samples; 0 = off
      sample_grid=100,
      ckpt_every=500,
      keep_checkpoints=3,
  ))

  c.sample = ml_collections.ConfigDict(dict(
      steps=20,                 # sampler steps (ODE steps for flows)
      solver="heun",            # euler | heun | midpoint
      cfg_scale=1.0,            # classifier-free guidance scale; 1 = conditional model
      shift=1.0,                # SD3 time shift of the sampling grid; 1 = uniform
      batch_size=500,           # examples per jitted sampling call
  ))

  c.eval = ml_collections.ConfigDict(dict(
      num_samples=10000,
      classifier_dir="",        # cached feature classifier; "" = ~/.cache/jaxgen/classifiers
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def tokenizer_config() -> ml_collections.ConfigDict:
  """Base of every tokenizer run (jaxgen.paradigms.tokenizer): ``base_config()`` with
  the tokenizer's paradigm fields; a config sets ``model`` (sizes + bottleneck)."""
  c = base_config()
  c.paradigm = ml_collections.ConfigDict(dict(
      name="tokenizer",
      rec_loss="l1",             # l1 | l2 pixel reconstruction
      bottleneck_weight=1.0,     # weight of the VQ (codebook + beta * commitment) or KL loss
      perceptual="none",         # none | classifier (dataset feature CNN) | lpips (file)
      perceptual_weight=0.0,
      perceptual_weights="",     # .npz of LPIPS weights when perceptual="lpips"
      perceptual_seed=1,         # classifier seed; eval's classifier is seed 0 (independent)
      disc_weight=0.0,           # 0 = no discriminator
      disc_start=0,              # step at which the GAN terms switch on
      disc_loss="hinge",         # hinge | non_saturating
      adaptive_weight=True,      # VQGAN's gradient-norm ratio at the decoder's last layer
      disc_channels=64,
      disc_layers=3,
      disc_lr_ratio=1.0,         # discriminator lr = optim.lr * this
  ))
  c.optim.lr = 1e-4
  c.optim.b1 = 0.5               # taming / MaskGIT use Adam(0.5, 0.9) for both networks
  c.optim.b2 = 0.9
  c.optim.ema_decay = 0.999
  c.train.sample_grid = 40       # 20 test images over their 20 reconstructions
  return c


def fmnist_tokenizer(c, *, num_steps: int, sample_every: int, runlocal: bool = False):
  """The CPU training preset of the Fashion-MNIST tokenizers (measured in the README):
  classifier-feature perceptual loss, Adam 4e-4, batch 16, ``num_steps`` steps."""
  c.paradigm.perceptual = "classifier"
  c.paradigm.perceptual_weight = 0.1
  c.optim.lr = 4e-4
  c.optim.warmup_steps = 100
  c.train.batch_size = 16
  c.train.num_steps = 20 if runlocal else num_steps
  c.train.sample_every = sample_every
  c.train.ckpt_every = 500
  return c
