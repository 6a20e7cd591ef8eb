#!/usr/bin/env bash
# Trains on this machine. One process by default; NUM_PROCESSES=N starts N local processes joined by
# jax.distributed (on CPU each gets DEVICES_PER_PROCESS devices): a rehearsal of a multi-host run.
#
#   bash launch/local.sh --config=configs/smoke.py --workdir=/tmp/smoke --config.model.path=DIR
#   NUM_PROCESSES=2 bash launch/local.sh --config=configs/smoke.py --workdir=/tmp/smoke2 --config.model.path=DIR
#
# Environment: PYTHON (default: the repo's .venv), NUM_PROCESSES (1), DEVICES_PER_PROCESS (1, CPU only),
# COORDINATOR_PORT (a free port).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NUM_PROCESSES="${NUM_PROCESSES:-1}"

if (( NUM_PROCESSES <= 1 )); then
  exec "$PYTHON" -m opid_jax.train "$@"
fi

PORT="${COORDINATOR_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export JAX_NUM_CPU_DEVICES="${DEVICES_PER_PROCESS:-1}"

pids=()
# A preemption signal goes to every process, so they stop together after saving one checkpoint.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for (( i = 0; i < NUM_PROCESSES; i++ )); do
  "$PYTHON" -m opid_jax.train "$@" --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" \
    --process_id="$i" &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
