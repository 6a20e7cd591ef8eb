"""`make demo` shrunk, end to end: the committed SFT policy acts on real ALFWorld games, the expert analyzer writes
skills, both advantage parts reach the update, and every artifact a newcomer is told about is there. Plus: the
README's demo commands are the Makefile's."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_recipe(target: str) -> str:
  """The command lines of a Makefile target (recipe lines are tab-indented)."""
  lines = open(os.path.join(ROOT, "Makefile")).read().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
  recipe = []
  for line in lines[start + 1 :]:
    if not line.startswith("\t"):
      break
    recipe.append(line.strip())
  return "\n".join(recipe)


@pytest.mark.parametrize("target,config", [("demo", "configs/demo.py"), ("demo-smollm2", "configs/demo_smollm2.py")])
def test_readme_demo_commands_are_the_makefiles(target, config):
  readme = open(os.path.join(ROOT, "README.md")).read()
  recipe = make_recipe(target)
  command = re.search(r"-m opid_jax\.train (--config=\S+ --workdir=\S+)", recipe).group(1)
  assert f"--config={config}" in command
  assert f"make {target}" in readme
  assert f"python -m opid_jax.train {command}" in readme, f"README does not show `make {target}`'s command: {command}"


@pytest.mark.slow
def test_shrunk_demo_end_to_end(alfworld_games, tmp_path):
  workdir = tmp_path / "demo"
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  overrides = [
    f"--config.env.data_dir={alfworld_games}",
    "--config.env.train_split=valid_seen",
    "--config.env.eval_split=valid_unseen",
    "--config.train.steps=1",
    "--config.rollout.tasks_per_batch=2",
    "--config.rollout.max_steps=8",
    # The policy is nearly deterministic: at the demo's 0.7 (and even 1.0) a group's members play alike and, in 8
    # steps, rarely win, so every episode advantage would be 0. At 2.0 about half the steps are invalid, so members
    # differ and some group has a non-zero episode advantage.
    "--config.rollout.temperature=2.0",
    "--config.train.eval_tasks=2",
    "--config.train.eval_envs=2",
    "--config.env.num_workers=1",
  ]
  res = subprocess.run(
    [sys.executable, "-m", "opid_jax.train", "--config=configs/demo.py", f"--workdir={workdir}", *overrides],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1500,
  )
  assert res.returncode == 0, res.stderr[-4000:]
  # The initial evaluation prints its line like every later row, and its progress bar counts games.
  assert re.search(r"^step 0 \| eval/success ", res.stdout, re.M), res.stdout[-2000:]
  assert "evaluation: 100%" in res.stderr and "success " in res.stderr
  summary = (workdir / "summary.md").read_text()
  assert "| success rate (eval ± binomial SE) |" in summary and "(n=2)" in summary
  assert "| episode advantage share (mean) |" in summary and "| skill advantage share (mean) |" in summary
  assert "### What the skills said" in summary and "nats" in summary
  assert summary in res.stdout

  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [0, 1]
  assert rows[0]["eval/episodes"] == 2 and rows[1]["eval/episodes"] == 2
  train = rows[1]
  assert train["samples"] >= 8 and train["valid_action_ratio"] > 0
  assert train["adv/skill_coverage"] > 0 and 0 < train["adv/skill_share"] < 1  # both advantage parts are non-zero
  assert (workdir / "checkpoints" / "1").is_dir()
  assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert (workdir / "config.json").exists() and (workdir / "tb").is_dir()
  assert (workdir / "eval" / "iter_000000.md").exists() and (workdir / "eval" / "iter_000001.md").exists()
  games = json.loads((workdir / "eval" / "iter_000001.games.json").read_text())  # one outcome per evaluated game
  table = json.loads((workdir / "eval" / "iter_000001.json").read_text())
  assert len(games) == table["all"]["episodes"] and all(g.startswith("valid_unseen/") for g in games)
  assert sum(g["won"] for g in games.values()) == round(table["all"]["success"] * len(games))

  dump = workdir / "trajectories" / "iter_000001.jsonl"
  trajectories = [json.loads(line) for line in dump.read_text().splitlines()]
  assert len(trajectories) == 8 and all(t["skills"]["episode_skill"] for t in trajectories)
  steps = [s for t in trajectories for s in t["steps"]]
  assert all("episode_advantage" in s for s in steps)
  assert any(s["episode_advantage"] != 0 for s in steps)  # some group's members differ in outcome or validity
  assert all(s["skill_logp_delta"] is not None and s["routed_skill"] for s in steps)
