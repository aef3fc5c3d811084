"""Text-to-image at paper scale: DiT-XL/2 on 256x256 images as 32x32x4 KL latents,
conditioned on frozen T5-XXL (v1.1) token embeddings (120 tokens, PixArt-alpha's
setting) through cross-attention in every block, pooled T5 embedding into adaLN,
caption dropout 0.1, rectified flow with logit-normal times (SD3).

For real hardware; validated here (``jaxgen info``), not trained. Pre-compute once:
captions (``jaxgen recaption``, a user's VLM via ``--captioner module:attr``) and their
T5 embeddings (``jaxgen embed-captions``; 120 x 4096 float16 per distinct caption,
about 1 MB each: put the cache on fast storage), then launch, e.g.:

  launch/tpu_pod.sh NAME ZONE train --config configs/t2i_dit_xl2_t5xxl.py \\
      --workdir gs://BUCKET/t2i_xl2 --config.text.checkpoint=/data/t5-v1_1-xxl

``mode=joint`` switches to MMDiT-style joint attention; ``runlocal`` shrinks batch and
steps for a wiring smoke test (still needs the data and weights).
"""

import common
from jaxgen.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.base_config()
  c.data = common.captioned_data(arg.get("captions", "data/captions"),
                                 arg.get("embeddings", "data/t5xxl_embeddings"),
                                 detailed_ratio=0.9)
  # 256px images as 32x32x4 KL latents (`jaxgen tokenize`). The data must carry
  # caption_short / caption_detailed (as fashion_mnist_captions does): register the
  # captioned latent dataset and name it with :data=NAME. The default names ImageNet's
  # latents, whose shapes validate this config here but which hold no captions.
  c.data.name = arg.get("data", "imagenet2012_latents")
  c.data.latent_size = 32
  c.data.pp = "choose_caption(0.9)|drop('caption')"  # latents: no pixel scaling
  c.text = common.text_fields("t5_v1_1_xxl", max_length=120, width=4096,
                              dtype="bfloat16")
  c.model = common.ml_collections.ConfigDict(dict(
      name="dit", variant="XL/2", learn_sigma=False, scan_blocks=True, remat=True,
      attn_impl="xla", text_conditioning=arg.get("mode", "cross_attention")))
  c.paradigm.label_dropout = 0.1
  c.paradigm.time_sampling = "logit_normal"
  c.optim.lr = 2e-5            # PixArt-alpha: AdamW 2e-5, wd 0.03, grad clip 0.01
  c.optim.weight_decay = 0.03
  c.optim.grad_clip = 0.01
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = False
  c.train.num_steps = 400_000
  c.train.batch_size = 256
  c.train.compute_dtype = "bfloat16"
  c.train.log_every = 100
  c.train.sample_every = 20_000
  c.train.sample_grid = 64
  c.train.ckpt_every = 5_000
  c.sample.steps = 28
  c.sample.solver = "euler"
  c.sample.cfg_scale = 4.5
  c.sample.shift = 3.0         # SD3's shifted time grid at 256-1024 px
  c.mesh = common.ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  if arg.get("runlocal"):
    c.train.batch_size = 8
    c.train.num_steps = 10
    c.train.compute_dtype = "float32"
  return c
