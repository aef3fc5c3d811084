"""VAR-d16 on ImageNet 256x256, for real hardware (Tian et al. 2024, Table 1: 310M
parameters): next-scale prediction over the 10-scale pyramid (1, 2, 3, 4, 5, 6, 8, 10, 13,
16; 680 tokens of 4096 codes, 32 channels) of VAR's multi-scale VQ-VAE.

  jaxgen train --config configs/imagenet256_tokenizer.py:variant=msvq --workdir gs://B/msvq
  jaxgen tokenize --workdir gs://B/msvq --out gs://B/msvq_codes
  jaxgen train --config configs/imagenet256_var_d16.py --workdir gs://B/var_d16 \\
      --config.data.data_dir=gs://B/msvq_codes

``:variant=d20|d24|d30`` gives the larger named depths (600M / 1.0B / 2.0B). VAR's recipe:
batch 768, AdamW (0.9, 0.95), wd 0.05, lr 1e-4 per 256 examples, grad clip 2, 200 epochs
for d16, label dropout 0.1, drop-path 0.1 d / 24; VAR decays the lr linearly to 1% (we
use our cosine to 1%) and trains progressively (not done here). Sampling as VAR's FID
setting: cfg 1.5 (our cfg_scale 2.5, growing linearly over the scales), top-k 900, top-p
0.96. Nothing here was trained at this scale.
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("var")
  c.data.data_dir = ""
  c.data.source_dataset = "imagenet2012"
  c.model.variant = arg.get("variant", "d16")
  c.model.attn_impl = "xla"          # "cudnn": fused attention on NVIDIA GPUs
  c.train.batch_size = 768
  c.train.num_steps = 200 * 1_281_167 // 768
  c.train.compute_dtype = "bfloat16"
  c.train.sample_every = 10_000
  c.train.ckpt_every = 5_000
  c.optim.warmup_steps = 3 * 1_281_167 // 768
  c.optim.schedule = "cosine"
  c.optim.final_lr_ratio = 0.01
  c.optim.ema_decay = 0.9999
  c.sample.batch_size = 250
  return c
