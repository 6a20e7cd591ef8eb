"""The CPU study script end to end in its short form: SFT, the shared initial evaluation, two variants (GRPO and
OPID) for one seed on real games, and the report with its tables and curves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_short_study_writes_a_report(alfworld_games, tmp_path):
  root = tmp_path / "study"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  cmd = [sys.executable, "benchmarks/cpu_study.py", "--short", f"--root={root}", f"--data_dir={alfworld_games}",
         "--sft_split=valid_seen", "--train_split=valid_unseen", "--variants=grpo,opid", "--seeds=0"]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = (root / "cpu_study.md").read_text()
  assert "SHORT mode" in report
  for variant in ("grpo", "opid"):
    assert (root / "runs" / f"{variant}_s0" / "summary.md").exists()
    assert any(line.startswith(f"| {variant} | 1 |") for line in report.splitlines()), report
  assert "## Success per task type" in report and "## Iterations to reach GRPO's final success" in report
  assert "Missing (not finished yet): none." in report
  assert (root / "cpu_study_eval.png").stat().st_size > 0 and (root / "cpu_study_train.png").stat().st_size > 0
  # Everything is finished, so a second invocation only rewrites the report.
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "run grpo seed 0" not in again.stdout and "sft:" not in again.stdout
