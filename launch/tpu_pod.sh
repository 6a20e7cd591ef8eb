#!/usr/bin/env bash
# Runs opid_jax on every worker of an EXISTING Cloud TPU VM slice (this script creates nothing). Every worker
# runs the same command; JAX finds the other workers by itself (jax.distributed on a pod slice).
#
#   export TPU_NAME=my-v5e-32 ZONE=us-west4-a [PROJECT=my-project]
#   bash launch/tpu_pod.sh setup     # copies this checkout (git HEAD) to every worker, makes its venv
#   bash launch/tpu_pod.sh train --config=configs/alfworld.py --workdir=gs://bucket/run \
#       --config.model.path=Qwen/Qwen2.5-3B-Instruct --config.mesh.data=4 --config.mesh.fsdp=8
#   bash launch/tpu_pod.sh run 'nvidia-smi || tpu-info'   # any command on every worker
#
# Environment: TPU_NAME, ZONE (required), PROJECT, REMOTE_DIR (default opid_jax, under each worker's home).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the name of an existing TPU VM slice}"
: "${ZONE:?set ZONE to the slice zone}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-opid_jax}"
gcloud_args=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then gcloud_args+=(--project="$PROJECT"); fi

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command="$1"
}

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

case "${1:-}" in
  setup)
    archive="$(mktemp -t opid_jax.XXXXXX.tar.gz)"
    git -C "$ROOT" archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:opid_jax.tar.gz" "${gcloud_args[@]}" --worker=all
    rm -f "$archive"
    jax_version="$(sed -n 's/^jax==//p' "$ROOT/requirements.txt")"
    on_all_workers "mkdir -p ${REMOTE_DIR} && tar -xzf opid_jax.tar.gz -C ${REMOTE_DIR} && cd ${REMOTE_DIR} \
      && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==${jax_version}' \
      && .venv/bin/pip install -q --no-deps -e ."
    ;;
  train)
    shift
    on_all_workers "cd ${REMOTE_DIR} && .venv/bin/python -m opid_jax.train $(printf '%q ' "$@")"
    ;;
  run)
    shift
    on_all_workers "cd ${REMOTE_DIR} && $*"
    ;;
  *)
    usage
    ;;
esac
