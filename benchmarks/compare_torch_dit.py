"""jaxgen's DiT train step against the official PyTorch DiT's, back to back, same run.

  git clone https://github.com/facebookresearch/DiT /tmp/DiT     # the official code
  python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch timm
  python benchmarks/compare_torch_dit.py --dit-repo /tmp/DiT --torch-python /tmp/torchvenv/bin/python
  python benchmarks/compare_torch_dit.py ... --dtypes float32,bfloat16,bfloat16+autocast

Both sides train the same model (DiT-S/2 by default, learned sigma, 1000 classes) on
the same shapes (batch 8 of 32x32x4 latents, random data, random classes) with the
same objective (DDPM noise MSE + the variational bound of the learned variance, as
facebookresearch/DiT's ``train.py``: ``create_diffusion(timestep_respacing="")``,
``training_losses``), optimizer (AdamW, lr 1e-4, no weight decay) and EMA update, on
the same number of threads (``--threads``; JAX uses the machine's cores, so run this
on an otherwise idle machine whose core count is the thread count). torch is never a
jaxgen dependency: its side runs in a subprocess of the Python you name, which imports
``models.DiT_models`` and ``diffusion`` from the official checkout.

Prints examples/s of each and the ratio jaxgen / torch per compute dtype (torch: CPU
autocast for bfloat16). jaxgen's ``bfloat16`` keeps its activations in bf16;
``bfloat16+autocast`` is ``config.train.autocast``: bf16 matmul operands, everything
else float32, as torch's autocast (the torch side is the same for both). Only the
same-run ratio is meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgen import config as config_lib  # pylint: disable=wrong-import-position

# The torch side: our own driver of the official modules (run in the torch Python).
TORCH_DRIVER = r"""
import json, sys, time
import torch
args = json.loads(sys.argv[1])
sys.path.insert(0, args["dit_repo"])
from models import DiT_models
from diffusion import create_diffusion
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
model = DiT_models["DiT-" + args["variant"]](input_size=args["size"], num_classes=1000)
ema = DiT_models["DiT-" + args["variant"]](input_size=args["size"], num_classes=1000)
ema.load_state_dict(model.state_dict())
for p in ema.parameters():
  p.requires_grad_(False)
diffusion = create_diffusion(timestep_respacing="")
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
b = args["batch"]
x = torch.randn(b, 4, args["size"], args["size"])
y = torch.randint(0, 1000, (b,))
bf16 = args["dtype"] == "bfloat16"

def step():
  t = torch.randint(0, diffusion.num_timesteps, (b,))
  with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
  opt.zero_grad()
  loss.backward()
  opt.step()
  with torch.no_grad():
    for pe, pm in zip(ema.parameters(), model.parameters()):
      pe.mul_(0.9999).add_(pm.detach(), alpha=1 - 0.9999)
  return float(loss)

model.train()
for _ in range(2):
  step()
times = []
for _ in range(args["iters"]):
  t0 = time.perf_counter()
  step()
  times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"sec": times[len(times) // 2], "torch": torch.__version__,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def torch_step(args, dtype: str) -> dict:
  payload = json.dumps(dict(dit_repo=os.path.abspath(args.dit_repo), threads=args.threads,
                            variant=args.variant, size=args.size, batch=args.batch,
                            iters=args.iters, dtype=dtype))
  out = subprocess.run([args.torch_python, "-c", TORCH_DRIVER, payload], check=False,
                       capture_output=True, text=True)
  if out.returncode:
    sys.exit(f"the torch side failed ({args.torch_python}, --dit-repo {args.dit_repo}):\n"
             f"{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def jaxgen_step(args, dtype: str) -> float:
  config = config_lib.load_config_file(
      f"{train_throughput.DEFAULT_CONFIG.split(':')[0]}:variant={args.variant},objective=ddpm")
  config.train.batch_size = args.batch
  config.train.compute_dtype, _, autocast = dtype.partition("+")
  config.train.autocast = autocast == "autocast"
  config.data.code_shape = (args.size, args.size, 4)
  config.model.scan_blocks = False  # FLOPs counted exactly; same math
  sec, _ = train_throughput.measure(config, args.batch, args.iters)
  return sec


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dit-repo", required=True, help="a checkout of facebookresearch/DiT")
  p.add_argument("--torch-python", required=True, help="a Python with torch and timm")
  p.add_argument("--variant", default="S/2")
  p.add_argument("--size", type=int, default=32, help="latent size (256px images: 32)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=6)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--dtypes", default="float32")
  args = p.parse_args()
  rows, torch_runs = [], {}
  for dtype in args.dtypes.split(","):
    if dtype not in ("float32", "bfloat16", "bfloat16+autocast"):
      sys.exit(f"--dtypes: {dtype!r}; use float32, bfloat16, bfloat16+autocast")
    jx = jaxgen_step(args, dtype)
    torch_dtype = dtype.split("+")[0]
    if torch_dtype not in torch_runs:   # after the first jaxgen run of that dtype
      torch_runs[torch_dtype] = torch_step(args, torch_dtype)
    tr = torch_runs[torch_dtype]
    rows.append((dtype, args.batch / jx, args.batch / tr["sec"], tr["sec"] / jx, tr))
  print(f"\nDiT-{args.variant}, batch {args.batch} of {args.size}x{args.size}x4 latents, "
        f"DDPM + VLB loss, AdamW + EMA, {args.threads} threads; torch "
        f"{rows[0][4]['torch']}, {rows[0][4]['params'] / 1e6:.2f}M parameters")
  print(f"{'dtype':>18} {'jaxgen ex/s':>12} {'torch ex/s':>11} {'jaxgen/torch':>13}")
  for dtype, jx, tr, ratio, _ in rows:
    print(f"{dtype:>18} {jx:>12.2f} {tr:>11.2f} {ratio:>13.2f}")


if __name__ == "__main__":
  main()
