#!/usr/bin/env bash
# Run a jaxgen command on every worker of a Cloud TPU VM slice (multi-host).
#
#   launch/tpu_pod.sh TPU_NAME ZONE train --config configs/imagenet256_dit_xl2.py \
#       --workdir gs://BUCKET/runs/dit_xl2
#
# Installs jaxgen with the TPU build of JAX on all workers into the virtual environment
# jaxgen/.venv (first run; it needs python3-venv), then starts
# the same command on all of them; jax.distributed.initialize() finds the slice by
# itself, each host reads its own shard of the data, and checkpoints go to the
# (shared, e.g. GCS) workdir. Re-running the command resumes from the newest
# checkpoint, so a preempted slice only needs the same command again.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE JAXGEN_ARGS..." >&2; exit 2
fi
TPU=$1; ZONE=$2; shift 2
REPO=${JAXGEN_REPO:-https://github.com/jaxgen/jaxgen.git}
SETUP="test -d jaxgen || git clone $REPO jaxgen; cd jaxgen && git pull -q && \
  (test -x .venv/bin/python || python3 -m venv .venv) && \
  .venv/bin/python -m pip install -q -U 'jax[tpu]' -e . "
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$SETUP"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd jaxgen && JAXGEN_DATA_DIR=\${JAXGEN_DATA_DIR:-gs://$TPU-data} .venv/bin/jaxgen $*"
