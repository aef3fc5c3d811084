"""DiT-XL/2 on ImageNet 256x256 in the latent space of a KL autoencoder (32x32x4),
the paper's setting (Peebles & Xie 2023, Table 4: 7M steps, batch 256, AdamW 1e-4,
no weight decay, EMA 0.9999, label dropout 0.1), with rectified flow in place of DDPM.

For real hardware (TPU pod / GPU cluster); it does not run on a laptop. Latents are
pre-computed once by ``jaxgen tokenize`` of a KL-VAE f8 run (e.g.
``configs/imagenet256_tokenizer.py:variant=kl``) on ImageNet, and the run decodes its
samples, preview grids and evaluation images through that tokenizer (named by the
latents' ``tokens.json``, or ``--config.tokenizer.workdir``). Launch on a TPU pod, e.g.:

  jaxgen tokenize --workdir gs://BUCKET/kl_f8 --out gs://BUCKET/in256_latents
  launch/tpu_pod.sh NAME ZONE train --config configs/imagenet256_dit_xl2.py \
      --workdir gs://BUCKET/dit_xl2 --config.data.data_dir=gs://BUCKET/in256_latents

``:variant=S/2`` (or B/2, L/4, ...) selects another named size; ``runlocal`` shrinks
the batch and steps for a smoke test of the wiring. ``:objective=ddpm`` is the paper's
own recipe: DDPM with the linear 1e-4..0.02 schedule over 1000 steps, epsilon
prediction with a learned variance (learn_sigma, the hybrid loss), sampled with 250
DDPM steps and CFG 1.5 (``objective=flow``, the default: rectified flow).
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.base_config()
  c.data = common.ml_collections.ConfigDict(dict(
      name="tokens", data_dir="", source_dataset="imagenet2012", code_shape=(32, 32, 4),
      pp="", train_split="train", eval_split="validation"))  # 256x256 -> 32x32x4 latents
  c.tokenizer = common.tokenizer_section()  # "" = the KL-VAE that wrote the latents
  c.model = common.ml_collections.ConfigDict(dict(
      name="dit", variant=arg.get("variant", "XL/2"), learn_sigma=False, scan_blocks=True,
      remat=False, attn_impl="xla"))  # attn_impl="cudnn": fused attention on NVIDIA GPUs
  c.paradigm.label_dropout = 0.1
  c.paradigm.time_sampling = "logit_normal"
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = False
  c.train.num_steps = 7_000_000
  c.train.batch_size = 256
  c.train.compute_dtype = "bfloat16"
  c.train.log_every = 100
  c.train.sample_every = 50_000
  c.train.sample_grid = 64
  c.train.ckpt_every = 10_000
  c.sample.steps = 50
  c.sample.solver = "heun"
  c.sample.cfg_scale = 1.5
  c.sample.shift = 1.0
  c.mesh = common.ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  objective = arg.get("objective", "flow")
  if objective == "ddpm":
    c.paradigm = common.diffusion_paradigm(schedule="linear", num_timesteps=1000,
                                           prediction="eps", vlb_weight=1.0)
    c.model.learn_sigma = True
    c.sample.steps = 250
    c.sample.solver = "ddpm"
    c.sample.cfg_scale = 1.5
  elif objective != "flow":
    raise ValueError(f"objective={objective!r}; use flow or ddpm.")
  if arg.get("runlocal"):
    c.train.batch_size = 8
    c.train.num_steps = 10
    c.train.compute_dtype = "float32"
  return c
