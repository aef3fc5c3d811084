"""Class-conditional video DiT on Moving Fashion-MNIST (32x32 pixels, 8 frames, 1-2
moving garments), trained with rectified flow (or DDPM: ``:objective=ddpm``) on a
2-core CPU in about half an hour (measured; see the docstring of
jaxgen/models/video_dit.py for the model).

  jaxgen train --config configs/mfmnist_video_dit.py --workdir runs/mfmnist_vdit

Arguments (``--config configs/mfmnist_video_dit.py:objective=ddpm,attention=full``):
``objective`` flow (default) | ddpm (DiT's recipe: linear schedule, epsilon
prediction with a learned variance, 250 DDPM steps at sampling); ``attention``
factorised (default, Latte's alternating space / time blocks) | full (spacetime);
``variant`` a named size (default ``CPU/4``: 128 wide, 6 blocks, 4 heads, 4x4 patches,
8x8 tokens a frame, 2 frames a patch: 256 tokens; ``XL/2`` is Latte-XL/2); ``context`` k > 0: frame prediction from
the first k given frames (``paradigm.context_frames``, dropped with the label for
CFG); ``setting`` the data (``common.MOVING_FMNIST_SETTINGS``: ``mixed``, the default, 1-2
garments of 14 px; ``directed``, one 20-px garment labelled by class and direction, so
a run is conditioned on both); ``runlocal`` a smoke test of the wiring.

Latent video DiT (``:latents=DIR``): the same paradigm on the latents of a causal
video KL-VAE (``configs/mfmnist_video_tokenizer.py:kl=1``; 9 frames -> 5 x 8 x 8 x 4),
decoded through that frozen VAE for previews, samples and eval; variant ``CPU/2``
(4x4 tokens a latent frame, 80 a clip) by default:

  jaxgen train --config configs/mfmnist_video_tokenizer.py:kl=1,setting=directed \
      --workdir runs/vvae
  jaxgen tokenize --workdir runs/vvae --out runs/vvae_latents
  jaxgen train --config configs/mfmnist_video_dit.py:latents=runs/vvae_latents \
      --workdir runs/vldit

Measured alone on the 2-core CPU (``setting=directed``, 80 class-and-direction labels;
the VAE 1039 s, ``jaxgen tokenize`` 330 s): 8.6 steps/s, so the 28000 steps of the
latent default take about 55 minutes (over the 30 the issue asked: at 16000 steps, 31
minutes, direction accuracy was only 0.38). On 1000 samples (Heun 10) at 28000 steps,
CFG 4 (the default for latents) against 1.5: per-frame accuracy 0.62 / 0.49, direction
accuracy 0.93 / 0.78, ``fd_video`` 12.7 / 16.7; the VAE's own reconstructions score
0.53 per frame, real clips 0.87 (README, Video generation).

Latents of another shape (``:downsample=2`` VAE: 5x16x16x4) are read from the
directory's tokens.json and patched 4x4 (``CPU/4``, the same 80 tokens): 5.5 steps/s
on a slower machine (matmul peak 134 GFLOP/s, the 8.6 above at ~205), and at 16000 steps, CFG 4, per-frame 0.51, direction 0.15 (the f4 latents: 0.59,
0.38) though that VAE reconstructs better (0.67 per frame). The ``:ft=1`` VAE's
9x8x8x4 latents (no temporal downsampling) give 144 tokens a clip: 6.6 steps/s on a
faster machine (fp32 peak 337-415 GFLOP/s), 28000 steps in 71 minutes, and at
CFG 4 per-frame 0.652, direction 0.749, class 0.79, ``fd_video`` 20.8: the clearest
garments, moving less than on the ft 2 latents.
"""

import common
from jaxgen.config import parse_arg
from jaxgen.tokenizers import precompute


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.base_config()
  c.data = common.section("data", name="moving_fashion_mnist", pp="scale(-1, 1)")
  c.data.num_frames = 8            # moving_fashion_mnist's settings (jaxgen.data.moving_fmnist)
  c.data.max_objects = 2
  c.data.num_train = 20000
  c.data.num_test = 2000
  common.moving_fmnist_setting(c.data, arg.get("setting", "mixed"))
  latents = arg.get("latents", "")
  shape = (5, 8, 8, 4)
  if latents:  # the tokenizer's data settings come with the latents (tokens.json)
    if precompute.has_meta(latents):   # e.g. 5x16x16x4 from a :downsample=2 VAE
      shape = tuple(precompute.read_meta(latents)["code_shape"])
    c.data = common.ml_collections.ConfigDict(dict(
        name="tokens", data_dir=latents, source_dataset="moving_fashion_mnist",
        code_shape=shape, pp="", train_split="train", eval_split="test"))
    c.tokenizer = common.tokenizer_section()  # "" = the VAE that wrote the latents
  # latents: patches of 1/4 of the latent frame's side (4x4 tokens a frame, 80 a clip)
  default = f"CPU/{max(shape[1] // 4, 1)}" if latents else "CPU/4"
  c.model = common.ml_collections.ConfigDict(dict(
      name="video_dit", variant=arg.get("variant", default),
      attention=arg.get("attention", "factorised"), temporal_patch=2, learn_sigma=False))
  c.paradigm.label_dropout = 0.1
  context = int(arg.get("context", 0))
  if context:
    c.paradigm.context_frames = context
    c.paradigm.context_dropout = True
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999
  c.train.batch_size = 16
  # measured alone: pixels 2.4-2.6 steps/s (batch 16), 4000 in 27 min; latents 8.6
  # steps/s, and their figures still rose from 16000 to 28000 steps (docstring)
  c.train.num_steps = 28000 if latents else 4000
  c.train.log_every = 50
  c.train.sample_every = 1000
  c.train.sample_grid = 20           # GIF grid: 2 rows of the 10 classes
  c.train.ckpt_every = 500
  c.sample.steps = 10
  c.sample.solver = "heun"
  c.sample.cfg_scale = 4.0 if latents else 1.5   # latent: measured better on every figure
  objective = arg.get("objective", "flow")
  if objective == "ddpm":
    c.paradigm = common.diffusion_paradigm(
        schedule="linear", num_timesteps=1000, prediction="eps", vlb_weight=1.0,
        label_dropout=0.1, context_frames=c.paradigm.context_frames,
        context_dropout=c.paradigm.context_dropout)
    c.sample = common.sample_section("diffusion", steps=50, solver="ddim", cfg_scale=1.5,
                                     batch_size=c.sample.batch_size)
    c.model.learn_sigma = True
  elif objective != "flow":
    raise ValueError(f"objective={objective!r}; use flow or ddpm.")
  if latents:
    c.model.temporal_patch = 1   # 5 latent frames (the VAE already halves time)
  if arg.get("runlocal"):
    if not latents:
      c.data.num_train, c.data.num_test = 256, 64
    c.train.num_steps = 10
    c.train.sample_every = 0
  return c
