"""Causal 3D video tokenizer on Moving Fashion-MNIST (MAGVIT-v2 style), CPU-sized.

  jaxgen train --config configs/mfmnist_video_tokenizer.py --workdir runs/vtok
  jaxgen tokenize --workdir runs/vtok --out runs/vtok_codes       # (N, 5, 8, 8) codes
  jaxgen train --config configs/mfmnist_video_tokenizer.py:kl=1 --workdir runs/vvae

Clips of 9 frames of the 32x32 canvas (``config.data.num_frames=9``, not the dataset's
default 8): the ``mfmnist_causal_tiny`` nets halve time once (ft 2: 1 + 2k frames, the
first frame encoded alone), so 9 frames -> 5 latent frames of 8x8 (f4), 320 tokens a
clip, where the 8-frame ``_ft1`` nets would give 512. A one-frame video is an image.

Default: lookup-free quantization (LFQ, 2^10 codes = 10 bits a token) with MAGVIT-v2's
author's settings: commitment 0.25, entropy weight 0.1 annealed from 3x over the first
third of training, temperature 0.01, an RMS norm before the quantizer (z on the
sphere of the codes). The log reports code ``usage`` (share of the 1024 codes in a
batch), ``usage_window`` (used within the recent batches), ``perplexity`` and the two
entropies; the issue's target is usage >= 80%.

``:setting=directed``: one 20-px garment a video, labelled by class and direction
(``common.MOVING_FMNIST_SETTINGS``; the latent video DiT's data: ``jaxgen tokenize``
writes those labels beside the latents). Default ``mixed`` (1-2 garments of 14 px).

``:kl=1``: a causal 3D KL-VAE (5x8x8x4 latents a clip; ``:latent_channels=C``, default
4; ``:downsample=2`` for 5x16x16x4; ``:ft=1``, no temporal downsampling, for 9x8x8x4)
for a latent video diffusion model; its latent scale is fitted by ``jaxgen tokenize``. KL weight 1e-6: at ``configs/fmnist_vae.py``'s
1e-4 the posterior collapsed (every reconstruction one centred blob, PSNR 13.5 dB).
Measured alone (``:kl=1,setting=directed``, 1000 steps; ``jaxgen eval --workdir RUN
--num 1000``: the reconstructions' per-frame / direction accuracy, real clips 0.866 /
0.998; PSNR of the 1000 test clips):

  VAE                        | train  | PSNR    | per-frame | direction | rfd_video
  4 channels (default)       | 1039 s | 20.4 dB | 0.533     | 0.972     | 23.6
  8 channels                 |  913 s | 21.0 dB | 0.571     | 0.990     | 17.4
  8 + PatchGAN               | 1023 s | 17.2 dB | 0.466     | 0.862     | 97.6
  :downsample=2 (5x16x16x4)  | 1459 s | 21.6 dB | 0.667     | 0.985     | 14.6
  :ft=1 (9x8x8x4)            |  889 s | 21.9 dB | 0.607     | 0.996     | 11.1

(PSNR 13.5 dB until step ~375, then rising: blurred garments of the right kind, place
and motion.) The PatchGAN row (``--config.paradigm.disc_weight=0.5``, ``disc_start=500``,
``disc_channels=16``, taming's adaptive weight) is sharper in texture but wrong in
shape (bright edges, invented stripes) after its 500 adversarial steps: worse on every
figure but ``rfd_frame`` (41 vs 53). 4 channels stay the default: the latent video DiT
(``configs/mfmnist_video_dit.py``, ``CPU/2``) on the 8-channel latents, 16000 steps with
a cosine lr (1535 s alone), scored per-frame 0.47 and direction 0.13 (1000 samples, CFG
4: recognisable garments that barely move), below the 4-channel latents' 0.59 and 0.38
at 16000 constant-lr steps; in the 30-minute budget the sharper decoder did not help.

``:downsample=2``: one downsampling level instead of two (space and time halved
together: 9x32x32 -> 5x16x16 latents, 4x the 8x8 grid's numbers), 1.4 s a step: the
first frame (encoded alone) comes back sharp, the later ones blurred as the time
downsampling merges frame pairs; ``rfd_frame`` 37.0 (4 channels at f4: 53.4). The
latent video DiT patches its latents 4x4 (``CPU/4``, the same 80 tokens a clip).

``:ft=1``: the f4 nets without the temporal downsampling (every frame keeps its own
8x8x4 latent, 1.8x the numbers of ft 2), 1.1-1.3 steps/s on a faster machine than the
rows above (fp32 matmul peak ~400 GFLOP/s; its first minutes shared with short test
runs): reconstructions sharper in time (``rfd_video`` 11.1, the best of these,
temporal consistency 0.55 against 0.38) and per frame (0.607), short of ``:downsample=2``'s
0.667 per frame.

``:runlocal`` shrinks either to a smoke test. ``:inflate=RUN`` initialises the
encoder/decoder from a trained 2D conv tokenizer of the same sizes
(``configs/fmnist_vqgan.py`` sizes do not match: train one with
``--config.model.variant=None`` and the fields of
``jaxgen.tokenizers.inflation.image_fields("mfmnist_causal_tiny")``).

No discriminator by default (the PatchGAN row above) and no perceptual loss (the
dataset classifier is an image one; LPIPS needs a weights file): L1 + bottleneck loss,
Adam 4e-4, batch 8, 1000 steps, the variants' nets at 16 channels (727k parameters, 2.4
GFLOPs a clip). Measured alone on the 2-core CPU: 1.06 s a step, 1000 steps in 1075 s
(18 min). At step 1000: batch code usage 0.80 (the share of the 1024 codes in one
batch's 2560 tokens), usage over the recent batches 1.00, perplexity 637,
reconstruction PSNR 18.6 dB. The reconstructions are blurry blobs in the right places:
the garments' shapes are lost (a capacity and training-length limit of this CPU size,
not a collapse: more channels and steps on an accelerator).
"""

import common
from jaxgen.config import parse_arg

NUM_STEPS = 1000
CHANNELS = 16   # the variants' 32 cost 3x more a step (measured: see the module docstring)


def get_config(arg=None):
  arg = parse_arg(arg)
  kl = bool(arg.get("kl", False))
  latent = int(arg.get("latent_channels", 4))   # the KL-VAE's (module docstring)
  down = int(arg.get("downsample", 4))          # spatial factor (module docstring)
  if down not in (2, 4):
    raise ValueError(f"downsample={down}; use 4 (8x8 latents a frame) or 2 (16x16)")
  ft = int(arg.get("ft", 2))                    # temporal factor (module docstring)
  if ft not in (1, 2):
    raise ValueError(f"ft={ft}; use 2 (9 frames -> 5 latent frames) or 1 (time kept)")
  c = common.tokenizer_config()
  c.data.name = "moving_fashion_mnist"
  c.data.pp = "scale(-1, 1)"
  c.data.num_frames = 9          # 1 + 2k for the ft 2 nets
  c.data.image_size = 32
  common.moving_fmnist_setting(c.data, arg.get("setting", "mixed"))
  if kl:
    c.model = common.ml_collections.ConfigDict(dict(
        name="causal_kl_vae", variant="mfmnist_causal_kl_tiny", channels=CHANNELS,
        bottleneck="kl", z_channels=latent, embed_dim=latent))
    # The KL weight. configs/fmnist_vae.py's 1e-4 collapses the posterior here (measured:
    # PSNR stuck at 13.5 dB through step 500, every reconstruction the same centred
    # blob); 1e-6 breaks out by step 400.
    c.paradigm.bottleneck_weight = 1e-6
  else:
    c.model = common.ml_collections.ConfigDict(dict(
        name="causal_vqgan", variant="mfmnist_causal_tiny", channels=CHANNELS,
        bottleneck="lfq", embed_dim=10, codebook_size=2 ** 10, beta=0.25, entropy_weight=0.1,
        entropy_anneal_steps=NUM_STEPS // 3, entropy_anneal_factor=3.0,
        entropy_temperature=0.01, lfq_norm="rms"))
  if down == 2:   # one downsampling level (time halved there): 9 frames -> 5x16x16
    c.model.channel_mult = (1, 2)
    c.model.temporal_downsample = (True,)
  if ft == 1:   # no temporal downsampling: 9 frames -> 9 latent frames
    c.model.temporal_downsample = (False,) * (2 if down == 4 else 1)
  c.model.inflate_from = arg.get("inflate", "")
  c.optim.lr = 4e-4
  c.optim.warmup_steps = 100
  c.train.batch_size = 8
  c.train.num_steps = NUM_STEPS
  c.train.sample_every = 500
  c.train.sample_grid = 16       # 8 test clips over their 8 reconstructions (GIF)
  c.train.ckpt_every = 500
  c.train.log_every = 50
  if arg.get("runlocal"):
    c.data.num_train, c.data.num_test = 256, 64
    c.train.num_steps = 20
    c.train.sample_every = 10
    c.train.log_every = 5
    if not kl:
      c.model.entropy_anneal_steps = 10
  return c
