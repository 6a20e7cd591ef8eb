"""benchmarks/step.py and benchmarks/signal_noise.py in their --quick form, on real ALFWorld games with the committed
small SFT policy: both exit 0 and print their tables (the second reuses the first's harvested trajectories);
benchmarks/rollout.py's synthetic comparison of the rollout engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, script, "--quick", "--policy=small", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quick_benchmarks_print_their_tables(alfworld_games, tmp_path):
  data = [f"--data_dir={alfworld_games}", "--split=valid_seen", f"--cache={tmp_path / 'cache'}"]
  res = _run("benchmarks/step.py", *data, f"--out={tmp_path / 'step.json'}")
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert "## Packing before/after on real ALFWorld step samples" in res.stdout
  assert "| policy | phase | path | samples | real tokens | processed tokens | pad share |" in res.stdout
  [result] = json.loads((tmp_path / "step.json").read_text())
  assert {(r["phase"], r["path"]) for r in result["rows"]} == {
    ("score", "padded"),
    ("score", "packed"),
    ("update", "padded"),
    ("update", "packed"),
  }
  assert result["max_abs_logp_diff"] < 1e-4  # float32: packed and padded scoring agree
  assert len(list((tmp_path / "cache").glob("small_valid_seen_*.json"))) == 1

  res = _run("benchmarks/signal_noise.py", *data)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert "from the cache" in res.stdout  # the trajectories step.py harvested
  assert "### Noise: |logp(layout) - logp(pairs in a row)| per token" in res.stdout
  assert "### Noise against the signal (mean |A_skill| per token, float32 scoring)" in res.stdout
  assert "| small | bfloat16 | all layouts |" in res.stdout and "| small | float32 | all layouts |" in res.stdout


def test_the_rollout_benchmark_compares_the_engines(tmp_path):
  """benchmarks/rollout.py synthetic --quick: forced response lengths through both engines (deterministic: no env)."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  out = tmp_path / "rollout.json"
  cmd = [sys.executable, "benchmarks/rollout.py", "synthetic", "--quick", f"--out={out}"]
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert "| engine | wall_s | slot_utilisation |" in res.stdout
  rows = json.loads(out.read_text())["rows"]
  assert rows["continuous"]["slot_utilisation"] > rows["static"]["slot_utilisation"]
  assert rows["continuous"]["decode_steps_per_useful_token"] < rows["static"]["decode_steps_per_useful_token"]
  assert rows["continuous"]["steady_utilisation"] > 0.9
