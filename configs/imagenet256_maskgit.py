"""MaskGIT on ImageNet 256x256 (Chang et al. 2022), for real hardware: the official
class-conditional transformer (24 layers, 768 wide, 3072 MLP, 16 heads, dropout 0.1)
over the 16x16 codes (1024 entries) of an f16 VQGAN.

  jaxgen train --config configs/imagenet256_tokenizer.py:variant=vqgan --workdir gs://B/vq
  jaxgen tokenize --workdir gs://B/vq --out gs://B/vq_codes
  jaxgen train --config configs/imagenet256_maskgit.py --workdir gs://B/maskgit \\
      --config.data.data_dir=gs://B/vq_codes

Optimisation as the paper (Adam(0.9, 0.96), lr 1e-4, weight decay 0.045, batch 256,
label smoothing 0.1, 300 epochs); sampling with 8 steps and choice temperature 4.5.
"""

import common


def get_config(arg=None):
  del arg
  c = common.token_config("maskgit")
  c.data.data_dir = ""
  c.data.source_dataset = "imagenet2012"
  c.model.variant = "maskgit_imagenet"
  c.model.grid_size = (16, 16)
  c.model.codebook_size = 1024
  c.train.batch_size = 256
  c.train.num_steps = 1_500_000
  c.train.compute_dtype = "bfloat16"
  c.train.sample_every = 10_000
  c.train.ckpt_every = 5_000
  c.optim.lr = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.96
  c.optim.weight_decay = 0.045
  c.optim.warmup_steps = 5_000
  c.optim.schedule = "cosine"
  c.optim.ema_decay = 0.9999
  c.sample.steps = 8
  c.sample.choice_temperature = 4.5
  c.sample.batch_size = 250
  c.mesh.fsdp = 1
  return c
