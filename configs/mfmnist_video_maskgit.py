"""MaskGIT over the causal video tokenizer's codes of Moving Fashion-MNIST (MAGVIT's
masked video transformer), class-conditional, CPU-sized.

  jaxgen train --config configs/mfmnist_video_tokenizer.py --workdir runs/vtok
  jaxgen tokenize --workdir runs/vtok --out runs/vtok_codes      # (N, 5, 8, 8) codes
  jaxgen train --config configs/mfmnist_video_maskgit.py --workdir runs/vmaskgit
  jaxgen sample --workdir runs/vmaskgit --num 1000 --out runs/vmaskgit/samples.npz

A bidirectional transformer (``fmnist_tiny``: 4 blocks, 128 wide) over the 5 x 8 x 8 =
320 LFQ codes (2^10) of a 9-frame clip, flattened t-major, with factorised positions (a
spatial table over the class token and the 8 x 8 grid, plus a temporal table over the
5 latent frames). Decoding: MaskGIT's 8 parallel steps over all 320 codes, classifier-free
guidance 2.0 growing linearly; samples decode through the frozen tokenizer (recorded
in the codes' tokens.json) to (N, 9, 32, 32, 1) videos, saved as .npz with a GIF grid.
Frame prediction / image-to-video from Python: ``paradigm.sample_from_frames(params,
rng, labels, first_frames)`` (one given frame = the first latent frame's codes, known
from the start of decoding).

``:codes=DIR``: the codes of another tokenizer run (default ``runs/vtok_codes``); the
labels come with them (tokens.json): codes of a ``:setting=directed`` tokenizer give a
run conditioned on class and direction (80 labels). Measured alone on the ``directed``
codes (``mfmnist_video_tokenizer.py:setting=directed``, 927 s; tokenize 316 s): 1500
steps in 755 s; 1000 samples (462 s) score per-frame 0.18 and direction 0.29 against
the tokenizer's own reconstructions' 0.39 and 0.97 (real clips 0.87, 1.00): blobs,
no recognisable garment.

Cost: 1500 steps (``NUM_STEPS``) took 14 min on the 2-core CPU, measured on the real
codes. ``:runlocal`` shrinks it to a smoke test.
"""

import common
from jaxgen.config import parse_arg

# Measured: on the real codes of the README's video tokenizer run, 1500 steps of 16 took
# 847 s (1.84 steps/s, previews and checkpoints included) on the 2-core CPU; the earlier
# projection on random codes at load 5 was 26-27.5 min.
NUM_STEPS = 1500


def get_config(arg=None):
  arg = parse_arg(arg)
  c = common.token_config("maskgit")
  c.data.data_dir = arg.get("codes", "runs/vtok_codes")
  c.data.source_dataset = "moving_fashion_mnist"  # the classes when no tokens.json
  c.data.code_shape = (5, 8, 8)
  c.model.variant = "fmnist_tiny"
  c.model.grid_size = (5, 8, 8)     # mfmnist_video_tokenizer.py: 9 frames -> 5 x 8 x 8
  c.model.codebook_size = 2 ** 10   # LFQ with 10 bits
  c.model.video_positions = "factorized"
  c.train.batch_size = 16
  c.train.num_steps = 20 if arg.get("runlocal") else NUM_STEPS
  c.train.sample_every = NUM_STEPS // 2
  c.train.sample_grid = 20          # two clips per class (a GIF grid)
  c.train.ckpt_every = 500
  c.train.log_every = 50
  c.optim.warmup_steps = 100
  c.sample.steps = 8
  c.sample.cfg_scale = 2.0
  c.sample.cfg_schedule = "linear"
  return c
