"""The demo config, shrunk to one iteration of one task, end to end: SmolLM2-135M (GGUF) on real ALFWorld games."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shrunk_demo_end_to_end(alfworld_games, tmp_path):
  workdir = tmp_path / "demo"
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "opid_jax.train",
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      f"--config.env.data_dir={alfworld_games}",
      "--config.env.train_split=valid_seen",
      "--config.train.steps=1",
      "--config.rollout.tasks_per_batch=1",
      "--config.rollout.group_size=2",
      "--config.rollout.max_steps=2",
      "--config.rollout.max_new_tokens=16",
      "--config.train.eval_tasks=1",
      "--config.train.eval_at_start=false",
      "--config.env.num_workers=1",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1500,
  )
  assert res.returncode == 0, res.stderr[-4000:]
  assert "| metric | before | after |" in res.stdout and "success rate (eval)" not in res.stdout
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1] and rows[0]["samples"] >= 2 and "eval/success" in rows[0]
  assert (workdir / "checkpoints" / "1").is_dir()
  assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert (workdir / "summary.md").exists() and (workdir / "eval" / "iter_000001.md").exists()
  trajectories = [json.loads(l) for l in (workdir / "trajectories" / "iter_000001.jsonl").read_text().splitlines()]
  assert len(trajectories) == 2 and all(t["skills"]["episode_skill"] for t in trajectories)
  assert all(t["task_type"] in t["task_id"] and t["steps"] for t in trajectories)
