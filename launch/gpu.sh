#!/usr/bin/env bash
# Trains on one node with all of its GPUs: one JAX process sees every local GPU and the mesh spans them
# (the config's mesh.data=-1 fills the devices; set --config.mesh.fsdp / .tensor for larger models).
#
#   bash launch/gpu.sh setup      # once: the venv with jax[cuda12] (same jax version as requirements.txt)
#   bash launch/gpu.sh --config=configs/alfworld.py --workdir=gs://bucket/run --config.model.path=DIR
#
# Environment: PYTHON (default: the repo's .venv), CUDA_VISIBLE_DEVICES to use a subset of the GPUs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${1:-}" == "setup" ]]; then
  jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
  python3 -m venv .venv
  .venv/bin/pip install -r requirements.txt "jax[cuda12]==${jax_version}"
  .venv/bin/pip install --no-deps -e .
  exit 0
fi

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if command -v nvidia-smi > /dev/null; then
  echo "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)" >&2
fi
# Let XLA take most of the GPU memory up front (the planner assumes 90 %), and overlap collectives.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
exec "$PYTHON" -m opid_jax.train "$@"
