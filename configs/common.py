"""Shared presets for jaxgen configs, built from the fields jaxgen declares.

A config file builds on ``base_config()`` (or a paradigm's preset below) and changes
what its experiment needs. Every field and its default is declared once, beside the
code that reads it, and documented there: the shared sections in
``jaxgen.config.SECTIONS``, a paradigm's ``config.paradigm`` fields in its class's
``FIELDS`` and its ``config.sample`` options in its ``Options`` dataclass
(``jaxgen/paradigms/*.py``), a model's extra fields with
``registry.register_model_fields``. ``jaxgen info --config C`` validates a config.
"""

import ml_collections  # re-exported for configs: common.ml_collections

from jaxgen import config as config_lib

section = config_lib.section                    # config.<name> of the shared sections
paradigm_section = config_lib.paradigm_section  # config.paradigm of a paradigm
sample_section = config_lib.sample_section      # config.sample of a paradigm


def diffusion_paradigm(**overrides) -> ml_collections.ConfigDict:
  """``config.paradigm`` of Gaussian diffusion (DDPM), DiT's settings by default."""
  return paradigm_section("diffusion", **overrides)


def base_config() -> ml_collections.ConfigDict:
  """Every shared section at its defaults, a small U-Net and rectified flow."""
  c = ml_collections.ConfigDict()
  c.data = section("data", name="fashion_mnist",  # registered dataset (jaxgen.data.datasets)
                   pp="pad(32)|scale(-1, 1)")
  c.model = ml_collections.ConfigDict(dict(name="unet", variant="small"))
  c.paradigm = paradigm_section("flow")
  c.optim = section("optim")
  c.train = section("train")
  c.sample = sample_section("flow")
  c.eval = section("eval")
  c.mesh = section("mesh")
  return c


def tokenizer_config() -> ml_collections.ConfigDict:
  """Base of every tokenizer run (jaxgen.paradigms.tokenizer): ``base_config()`` with
  the tokenizer's paradigm fields; a config sets ``model`` (sizes + bottleneck)."""
  c = base_config()
  c.paradigm = paradigm_section("tokenizer")
  c.sample = sample_section("tokenizer")
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
  c.paradigm = paradigm_section("gan")
  c.sample = sample_section("gan")
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
  return section("tokenizer", workdir=workdir)


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
  c.paradigm = paradigm_section(paradigm)
  c.sample = sample_section(paradigm)
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
  c.paradigm = paradigm_section("var")
  c.sample = sample_section("var")  # VAR's top-k 900, top-p 0.96, cfg 2.5 linear
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
  c.paradigm = paradigm_section("autoregressive")
  c.sample = sample_section("autoregressive")
  c.optim.lr = 4e-4
  c.optim.b2 = 0.96
  c.optim.weight_decay = 0.045
  c.optim.ema_decay = 0.999
  return c


def text_fields(encoder: str = "minilm", max_length: int = 32, width: int = 384,
                **kw) -> ml_collections.ConfigDict:
  """``config.text`` of a text-to-image run (jaxgen.conditioning.TextConditioner)."""
  return section("text", encoder=encoder, max_length=max_length, width=width, **kw)


def captioned_data(captions_dir: str, embeddings_dir: str, detailed_ratio: float,
                   pad: int = 0) -> ml_collections.ConfigDict:
  """``config.data`` of Fashion-MNIST with captions (short / detailed at
  ``detailed_ratio``) whose embeddings come from ``embeddings_dir``."""
  pad_op = f"pad({pad})|" if pad else ""
  return section(
      "data", name="fashion_mnist_captions",
      captions_dir=captions_dir,          # `jaxgen recaption --out`
      detailed_ratio=detailed_ratio,      # p(detailed caption), else the short one
      embeddings_dir=embeddings_dir,      # `jaxgen embed-captions --out`
      pp=f"choose_caption({detailed_ratio:g})|{pad_op}scale(-1, 1)|drop('caption')")


# Moving Fashion-MNIST settings the video configs name with ``:setting=NAME``
# (jaxgen.data.moving_fmnist; docs/video_eval.md measures the real videos of each).
MOVING_FMNIST_SETTINGS = {
    # 1-2 garments of 14 px, labelled by the first one's class (the dataset's defaults).
    "mixed": dict(max_objects=2, object_size=14, label="class"),
    # One garment of 20 px, labelled by its class and direction (80 labels): a run
    # generates a given garment moving a given way, and both are checked (the setting
    # of the targets: real videos score 0.87 per-frame, 1.00 direction).
    "directed": dict(max_objects=1, object_size=20, label="class_direction"),
}


def moving_fmnist_setting(data, name: str = "mixed"):
  """Sets ``data``'s Moving Fashion-MNIST fields to the named setting (see
  ``MOVING_FMNIST_SETTINGS``); returns ``data``."""
  if name not in MOVING_FMNIST_SETTINGS:
    raise ValueError(f"setting={name!r}; use one of {', '.join(MOVING_FMNIST_SETTINGS)}.")
  for key, value in MOVING_FMNIST_SETTINGS[name].items():
    data[key] = value
  return data
