#!/usr/bin/env bash
# The quickstart, from a fresh clone: set up the machine and the virtual environment
# .venv (launch/setup.sh), train class-conditional rectified flow on Fashion-MNIST
# (about 13 minutes on a 2-core CPU), write 1000 samples (.npz + PNG grid) and evaluate
# them against real test images.
# Usage: bash launch/quickstart.sh [WORKDIR]   (default runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-runs/quickstart}

bash launch/setup.sh
# jaxgen from the environment setup.sh installed it into: the active one, else .venv.
JAXGEN=${VIRTUAL_ENV:-.venv}/bin/jaxgen
"$JAXGEN" train --config quickstart --workdir "$WORKDIR"
"$JAXGEN" sample --workdir "$WORKDIR" --num 1000 --seed 0 --out "$WORKDIR/samples.npz"
"$JAXGEN" eval --workdir "$WORKDIR" --samples "$WORKDIR/samples.npz" --json-out "$WORKDIR/eval.json"
echo "Samples: $WORKDIR/samples.png   Training grids: $WORKDIR/samples/   Metrics: $WORKDIR/eval.json"
