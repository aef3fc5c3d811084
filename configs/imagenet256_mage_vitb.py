"""MAGE ViT-B on ImageNet 256x256 (Li et al. 2023), for real hardware: encoder 12 x 768
(12 heads), decoder 8 x 768 (16 heads), over the 16x16 codes (1024 entries) of an f16
VQGAN; masking ratio ~ truncated N(0.55, 0.25) on [0.5, 1], half the tokens dropped.

  jaxgen tokenize --workdir gs://B/vq --out gs://B/vq_codes
  jaxgen train --config configs/imagenet256_mage_vitb.py --workdir gs://B/mage \\
      --config.data.data_dir=gs://B/vq_codes

Optimisation as the paper (AdamW(0.9, 0.95), base lr 1.5e-4 x batch / 256, weight decay
0.05, batch 4096, 1600 epochs, 80 warm-up epochs, cosine). The named size takes the
official layout (`jaxgen.models.mage.OFFICIAL_LAYOUT`; the published weights load with
``jaxgen convert --from mage``): unconditional as the paper, the buffer token is the
official "fake class" row and the labels do not reach the model. For a class-conditional
MAGE set config.model.vocab_classes=0 (a class table, CFG through label dropout).
Sampling: the official unconditional generator's FID setting (20 steps, choice
temperature 6.0).
"""

import common


def get_config(arg=None):
  del arg
  c = common.token_config("mage")
  c.data.data_dir = ""
  c.data.source_dataset = "imagenet2012"
  c.model.variant = "vit_base"
  c.model.grid_size = (16, 16)
  c.model.codebook_size = 1024
  c.model.buffer_size = 1
  c.train.batch_size = 4096
  c.train.num_steps = 500_000
  c.train.compute_dtype = "bfloat16"
  c.train.sample_every = 10_000
  c.train.ckpt_every = 5_000
  c.optim.lr = 1.5e-4 * 4096 / 256
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 25_000
  c.optim.schedule = "cosine"
  c.optim.ema_decay = 0.9999
  c.sample.steps = 20
  c.sample.choice_temperature = 6.0
  c.sample.batch_size = 250
  return c
