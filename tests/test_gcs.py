"""A gs:// workdir against a local GCS emulator: config, metrics and Orbax checkpoints land in the bucket, and a
run stopped after 2 iterations and restarted to 4 ends exactly where a straight local 4-iteration run does."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gcs_emulator import GcsEmulator

from opid_jax.training.metrics import WALL_CLOCK_PREFIXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "opid-test"
IGNORED = WALL_CLOCK_PREFIXES


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  with GcsEmulator(str(tmp_path_factory.mktemp("gcs") / "server.log")) as gcs:
    gcs.create_bucket(BUCKET)
    yield gcs


@pytest.fixture(scope="module")
def run_env(emulator, tmp_path_factory):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", **emulator.client_env())
  # The three runs compile the same programs: a shared persistent cache keeps the test short.
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  return env


def run_train(env, train_cmd, workdir, steps):
  res = subprocess.run(
    train_cmd(workdir, f"--config.train.steps={steps}"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return res


def metrics_rows(text):
  rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  return [{k: v for k, v in r.items() if not k.startswith(IGNORED)} for r in rows]


def params_of(env, checkpoint_dir):
  """The saved policy parameters, read back through Orbax in a child process that sees the emulator."""
  code = (
    "import sys, numpy as np, orbax.checkpoint as ocp, jax\n"
    "tree = ocp.PyTreeCheckpointer().restore(sys.argv[1])\n"
    "flat = {'/'.join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}\n"
    "np.savez(sys.argv[2], **flat)\n"
  )
  out = checkpoint_dir.replace("gs://", "").replace("/", "_") + ".npz"
  out = os.path.join(env["JAX_COMPILATION_CACHE_DIR"], out)
  res = subprocess.run(
    [sys.executable, "-c", code, f"{checkpoint_dir}/state", out], env=env, capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return dict(np.load(out))


@pytest.mark.slow
def test_gcs_workdir_saves_restores_and_resumes_exactly(emulator, run_env, train_cmd, tmp_path):
  local = str(tmp_path / "local")
  remote = f"gs://{BUCKET}/run"
  run_train(run_env, train_cmd, local, steps=4)
  run_train(run_env, train_cmd, remote, steps=2)
  names = emulator.list_objects(BUCKET, "run/")
  assert "run/config.json" in names and "run/metrics.jsonl" in names
  assert any(n.startswith("run/checkpoints/2/state/") for n in names), names[:20]
  assert any(n.startswith("run/checkpoints/2/host/") for n in names)
  assert json.loads(emulator.read_object(BUCKET, "run/config.json"))["train"]["steps"] == 2
  assert [r["step"] for r in metrics_rows(emulator.read_object(BUCKET, "run/metrics.jsonl").decode())] == [1, 2]

  res = run_train(run_env, train_cmd, remote, steps=4)  # restarted with more steps: resumes from iteration 2
  assert "resumed from iteration 2" in res.stderr, res.stderr[-3000:]

  with open(os.path.join(local, "metrics.jsonl")) as f:
    straight = metrics_rows(f.read())
  resumed = metrics_rows(emulator.read_object(BUCKET, "run/metrics.jsonl").decode())
  assert [r["step"] for r in resumed] == [1, 2, 3, 4]
  for a, b in zip(straight, resumed):
    assert a.keys() == b.keys()
    for k in a:
      assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), (a["step"], k)
  want, got = params_of(run_env, f"{local}/checkpoints/4"), params_of(run_env, f"{remote}/checkpoints/4")
  assert want.keys() == got.keys() and len(want) > 10
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
