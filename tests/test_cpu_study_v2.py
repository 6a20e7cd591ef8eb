"""Study v2: the committed game lists are fixed (re-derived from the archive's listing they come out the same) and
disjoint where the plan says so; the study script's short form runs the screening and E1 end to end on real games,
restores from its store and writes the report under the plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import ALFWORLD_ARCHIVE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import study_v2_lists as lists  # noqa: E402

from opid_jax.envs.alfworld import GAME_FILE, task_type_of  # noqa: E402

GAMES = os.path.join(ROOT, "results", "cpu_study_v2", "games")


@pytest.fixture(scope="module")
def split_listing() -> dict[str, list[str]]:
  """Every split's sorted task ids, from the archive's member names (no unpacking)."""
  found: dict[str, set] = {}
  with tarfile.open(ALFWORLD_ARCHIVE, "r:gz") as tar:
    for member in tar:
      if member.name.endswith("/" + GAME_FILE):
        task_id = member.name.split("/", 1)[1]
        found.setdefault(task_id.split("/")[0], set()).add(task_id)
  return {split: sorted(ids) for split, ids in found.items()}


def committed(name: str) -> list[str]:
  with open(os.path.join(GAMES, f"{name}.txt")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_committed_lists_are_their_derivation_and_disjoint(split_listing):
  train = split_listing["train"]
  sft = lists.sft_games(train, lists.FULL)
  assert len(train) == 3553 and len(sft) == 800
  screen = committed("screen")
  assert screen == lists.screen_list(train, lists.FULL)
  assert len(screen) == 300 and not set(screen) & sft
  e2 = {name: committed(name) for name in ("e2_pool", "e2_train")}
  assert e2 == lists.e2_lists(train, lists.FULL)
  assert len(e2["e2_pool"]) == 1000 and not set(e2["e2_pool"]) & sft
  assert not set(e2["e2_pool"]) & set(e2["e2_train"]) and len(e2["e2_pool"]) + len(e2["e2_train"]) == len(train)
  if os.path.exists(os.path.join(GAMES, "e1_eval.txt")):  # written once the screening has run
    e1 = {name: committed(name) for name in ("e1_heldout", "e1_train", "e1_eval")}
    types = sorted({task_type_of(g) for g in e1["e1_eval"]})
    valid = split_listing["valid_seen"] + split_listing["valid_unseen"]
    assert e1 == lists.e1_lists(train, valid, types, screen, lists.FULL)
    assert len(e1["e1_heldout"]) == 200 and not set(e1["e1_heldout"]) & (sft | set(screen))
    assert not set(e1["e1_train"]) & set(e1["e1_eval"])
    assert {task_type_of(g) for g in e1["e1_train"]} == set(types)


def test_e1_types_are_those_at_or_under_two_percent():
  def outcomes(successes: dict[str, int], n: int = 50) -> dict:
    games = {}
    for t, won in successes.items():
      games.update({f"train/{t}-x-None-y-1/trial_{i}/{GAME_FILE}": {"won": int(i < won)} for i in range(n)})
    return games

  got = lists.e1_types(outcomes({"pick_two_obj_and_place": 0, "pick_cool_then_place_in_recep": 1}), lists.FULL)
  assert got == ["pick_cool_then_place_in_recep", "pick_two_obj_and_place"]  # TASK_TYPES order
  assert lists.e1_types(outcomes({"pick_two_obj_and_place": 2}), lists.FULL) == []


def test_e2_rules_follow_the_plan():
  import cpu_study_v2 as study

  # 200 games, SFT start 15 %: 25 % is 10 points up with 3 SE = 11.9 points (fails), 30 % 15 up with 12.3 (passes).
  assert study.gate(0.25, 0.15, 200) == (False, pytest.approx((0.25 * 0.75 / 200 + 0.15 * 0.85 / 200) ** 0.5))
  assert study.gate(0.30, 0.15, 200)[0] and 0.12 < 3 * study.gate(0.30, 0.15, 200)[1] < 0.125
  # T6: the best of T1-T5 (ties: the earlier) with 32 iterations, or 48 when it (or its 32-iteration run) had 32.
  assert study.tuning_t6({"T1": 0.2, "T2": 0.3, "T3": 0.3, "T4": 0.1, "T5": 0.25}) == (
    "T2",
    {"optim.lr": 3e-4, "train.steps": 32},
  )
  assert study.tuning_t6({"T1": 0.2, "T2": 0.1, "T3": 0.1, "T4": 0.1, "T5": 0.3})[1]["train.steps"] == 48
  # T1 at 32 iterations is T5: T6 runs T1's settings for 48 instead of repeating T5.
  assert study.tuning_t6({"T1": 0.3, "T2": 0.1, "T3": 0.1, "T4": 0.1, "T5": 0.2}) == (
    "T1",
    {"optim.lr": 1e-4, "train.steps": 48},
  )
  assert study.choose_lambda({0.01: 0.2, 0.1: 0.25, 1.0: 0.25}) == 0.1  # ties: the smaller
  # Held-out games: SE sqrt(p (1 - p) / (274 + n)) <= 1 point from 500 in steps of 100, else the whole pool.
  assert study.heldout_size(0.05, 274, lists.FULL) == 500  # 0.78 points at 774 games
  assert study.heldout_size(0.10, 274, lists.FULL) == 700  # 600: 1.02 points; 700: 0.96
  assert study.heldout_size(0.30, 274, lists.FULL) == 1000  # none reaches 1 point


def test_paired_contrasts_and_verdicts():
  import study_v2_report as report

  low, high = report.t_interval([0.02, 0.04, 0.06], 0.95)  # mean 0.04, sd 0.02, t(0.975, 2) = 4.303
  assert (low, high) == pytest.approx((0.04 - 4.303 * 0.02 / 3**0.5, 0.04 + 4.303 * 0.02 / 3**0.5), abs=1e-4)
  assert report.verdict(0.01, 0.03) == "for OPID" and report.verdict(-0.03, -0.01) == "against OPID"
  assert report.verdict(-0.01, 0.03) == "unresolved at this power"
  same = [{f"g{i}": {"won": i % 3 == 0} for i in range(30)}] * 3
  better = [{f"g{i}": {"won": 1} for i in range(30)}] * 3
  assert report.paired_bootstrap(same, same) == (0.0, 0.0)
  low, high = report.paired_bootstrap(better, same)
  assert 0.4 < low <= 2 / 3 <= high < 0.9


def test_skill_signal_sorts_steps_by_kind_and_pools_by_steps():
  import study_v2_skill_signal as signal

  def step(delta, action="go to desk 1", skill=None):
    return {"action": action, "skill_logp_delta": delta, "routed_skill": {"episode": "e", "step": skill}}

  do_desk = "Do 'go to desk 1' now: it is the next action of the plan that solves this task."
  do_bed = "Do 'go to bed 1' now: it is the next action of the plan that solves this task."
  trajectories = [
    {"steps": [step(2.0, skill=do_desk), step(-3.0, skill=do_bed), step(-5.0, skill=do_bed), step(1.0)]},
    {"steps": [step(-1.0, skill="Look before you leap."), step(0.5), {"action": "look", "skill_logp_delta": None}]},
  ]
  summary = signal.summarize(trajectories)
  assert summary == {
    "step skill, its action taken": {"steps": 1, "mean": 2.0, "median": 2.0, "positive_share": 1.0},
    "step skill, another action": {"steps": 2, "mean": -4.0, "median": -4.0, "positive_share": 0.0},
    "step skill, free text": {"steps": 1, "mean": -1.0, "median": -1.0, "positive_share": 0.0},
    "episode skill only": {"steps": 2, "mean": 0.75, "median": 0.75, "positive_share": 1.0},
  }
  other = {"step skill, another action": {"steps": 6, "mean": 0.0, "median": 0.0, "positive_share": 0.5}}
  pooled = signal.pooled([summary, other])
  assert pooled["step skill, another action"] == {"steps": 8, "mean": -1.0, "positive_share": 0.375}
  assert pooled["step skill, its action taken"] == {"steps": 1, "mean": 2.0, "positive_share": 1.0}
  assert signal.summarize([{"steps": [{"action": "look", "skill_logp_delta": None}]}]) == {}


def test_committed_report_is_what_the_committed_store_regenerates(tmp_path):
  """The results under the plan are the report stage's output on results/cpu_study_v2/, nothing edited by hand."""
  report = tmp_path / "cpu_study_v2.md"
  cmd = [sys.executable, "benchmarks/cpu_study_v2.py", "--stage=report", f"--root={tmp_path / 'root'}"]
  done = subprocess.run(cmd + [f"--report={report}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

  def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Generated by")]

  with open(os.path.join(ROOT, "results", "cpu_study_v2.md")) as f:
    assert body(report.read_text()) == body(f.read())
  assert "No tuning run passed the gate: E2 stops here" in report.read_text()  # T6, the last tuning run, failed it


@pytest.mark.slow
def test_short_study_runs_screening_and_e1_and_reports(alfworld_games, tmp_path):
  root, store = tmp_path / "study", tmp_path / "store"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  cmd = [
    sys.executable,
    "benchmarks/cpu_study_v2.py",
    "--short",
    f"--root={root}",
    f"--store={store}",
    f"--data_dir={alfworld_games}",
    "--train_split=valid_unseen",
    "--valid_splits=valid_seen",
    "--tune_split=valid_seen",
    "--skip_gate",
    "--variants=grpo,opid_l1,opid",
  ]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  games = store / "games"
  screen = json.loads((root / "screen" / "eval.games.json").read_text())
  assert sorted(screen) == sorted(committed_in(games, "screen")) and len(screen) == 6  # one game per type
  e1_eval, e1_train = committed_in(games, "e1_eval"), committed_in(games, "e1_train")
  assert e1_eval and e1_train and not set(e1_eval) & set(e1_train)
  for variant in ("grpo", "opid_l1"):
    run = root / "e1" / "runs" / f"{variant}_s0"
    outcomes = json.loads((run / "eval" / "iter_000001.games.json").read_text())
    assert sorted(outcomes) == sorted(e1_eval)  # evaluated on exactly the E1 list
    assert (store / "e1" / "runs" / f"{variant}_s0" / "summary.md").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["train_games"].endswith("e1_train.txt") and config["optim"]["lr"] == 1e-4
  signal = json.loads((store / "e1" / "runs" / "opid_l1_s0" / "skill_signal.json").read_text())
  assert sum(kind["steps"] for kind in signal.values()) > 0  # the skill term's summary outlives the dumps
  assert not (store / "e1" / "runs" / "grpo_s0" / "skill_signal.json").exists()
  report = (root / "cpu_study_v2.md").read_text()
  plan = open(os.path.join(ROOT, "results", "cpu_study_v2.md")).read()
  assert report.startswith(plan[: plan.index("## Results")])  # the plan, word for word
  assert "SHORT mode" in report and "| grpo | 1 |" in report and "| opid_l1 | 1 |" in report
  assert "- opid_l1 − grpo: " in report and "(one seed: no interval, no verdict)" in report
  assert "What the skill term said" in report and "| opid_l1 | 0 | " in report
  # E2 past its (skipped) gate: one tuning run and one lambda run on the tuning split, then its list and runs.
  assert "The gate was skipped (--skip_gate)" in report and "Chosen lambda: 1." in report
  e2_eval = committed_in(games, "e2_eval")
  held_out = e2_eval[6:]  # after a valid game per type: the pool's first 2, 4 or 6 games (heldout_size)
  assert len(held_out) in (2, 4, 6) and held_out == committed_in(games, "e2_pool")[: len(held_out)]
  assert all(g.startswith("valid_seen/") for g in e2_eval[:6]) and not set(e2_eval) & set(
    committed_in(games, "e2_train")
  )
  for variant in ("grpo", "opid"):
    outcomes = json.loads((root / "e2" / "runs" / f"{variant}_s0" / "eval" / "iter_000001.games.json").read_text())
    assert sorted(outcomes) == sorted(e2_eval)
  tuning = json.loads((root / "e2" / "tune" / "T1" / "config.json").read_text())
  assert tuning["env"]["eval_split"] == "valid_seen" and tuning["env"]["eval_games"] == ""
  assert "- opid − grpo: " in report and "- opid − step_only: pending (0 of 1" in report
  # The machine loses ROOT: a second invocation restores everything from the store, runs nothing, same tables.
  rows = [line for line in report.splitlines() if line.startswith(("| SFT start |", "| grpo |", "| opid_l1 |"))]
  subprocess.run(["rm", "-rf", str(root)], check=True)
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "restored e1/runs/grpo_s0" in again.stdout and "run e1 grpo seed 0" not in again.stdout
  assert "screen:" not in again.stdout and "e1/initial:" not in again.stdout
  rewritten = (root / "cpu_study_v2.md").read_text()
  assert rows == [
    line for line in rewritten.splitlines() if line.startswith(("| SFT start |", "| grpo |", "| opid_l1 |"))
  ]


def committed_in(folder, name: str) -> list[str]:
  with open(folder / f"{name}.txt") as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]
