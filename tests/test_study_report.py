"""The CPU study report's arithmetic against hand-computed numbers: rank agreement, the evaluation's standard
error, the verdict's noise rule, and iterations to reach GRPO's final success (evaluation and rollout curves)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import study_report  # noqa: E402


def _seed(finals, train=(), evals_at=(0, 16), initial=0.1):
  """One seed's record: evaluations at evals_at (the first is the shared initial value), rollout success rows."""
  evals = [{"step": evals_at[0], "eval/success": initial}] + [{"step": s, "eval/success": finals} for s in evals_at[1:]]
  rows = [{"step": i + 1, "success": v} for i, v in enumerate(train)]
  return {"evals": evals, "rows": rows, "final_table": {}}


def test_kendall_tau_and_order_by_hand():
  paper = {"a": 3.0, "b": 2.0, "c": 1.0}
  assert study_report._kendall_tau({"a": 3, "b": 2, "c": 1}, paper) == 1.0
  assert study_report._kendall_tau({"a": 1, "b": 2, "c": 3}, paper) == -1.0
  # pairs (a,b) +1, (a,c) +1, (b,c) -1
  assert study_report._kendall_tau({"a": 3, "b": 1, "c": 2}, paper) == pytest.approx(1 / 3)
  # (a,b) tied: 0; (a,c) +1; (b,c) +1
  assert study_report._kendall_tau({"a": 2, "b": 2, "c": 1, "d": 9}, paper) == pytest.approx(2 / 3)
  assert study_report._order({"a": 0.1, "b": 0.3, "c": 0.1, "d": 0.2}) == "b > d > a = c"


def test_evaluation_standard_error_by_hand():
  assert study_report.evaluation_se(0.1, 0.2, 100) == pytest.approx(0.05)  # sqrt((0.09 + 0.16) / 100)


def test_verdict_needs_two_seeds_and_a_gap_above_the_noise():
  runs = {
    "opid": {s: _seed(v) for s, v in enumerate([0.20, 0.22, 0.24])},
    "grpo": {s: _seed(v) for s, v in enumerate([0.10, 0.11, 0.12])},
  }
  # gap 11.0 points; seed stds 2.0 / 1.0; se = sqrt((.22*.78 + .11*.89) / 1000) = 1.64 points -> resolved
  line = study_report.compare(runs, "opid", "grpo", episodes=1000)
  assert "+11.0 points" in line and "largest seed std 2.0" in line and "difference 1.6" in line
  assert line.endswith("opid better.")
  # on 50 games the standard error is 7.3 points: 2 x 7.3 > 11.0
  assert study_report.compare(runs, "opid", "grpo", episodes=50).endswith(
    "within the noise: not resolved at this scale."
  )
  assert study_report.compare(runs, "grpo", "opid", episodes=1000).endswith("opid better.")
  one = {"opid": {0: _seed(0.3)}, "grpo": {0: _seed(0.1)}}
  assert "one seed only" in study_report.compare(one, "opid", "grpo", episodes=1000)
  lines = study_report.verdict({**runs, "step_only": {0: _seed(0.5), 1: _seed(0.5)}}, episodes=1000)
  assert lines[0].startswith("- OPID - GRPO (the paper's direction) on both splits: +11.0 points")
  assert lines[1].startswith("- opid - step_only on both splits: -28.0 points") and lines[1].endswith(
    "step_only better."
  )
  assert lines[2].startswith(
    "- Observed order: step_only > opid > grpo; paper's order: opid > grpo > step_only; Kendall tau -0.33"
  )


def test_iterations_to_reach_grpos_final_success():
  grpo_train = [0.0, 0.25, 0.5, 0.5, 0.5]  # last 3 mean 0.5; 3-moving average 0, .125, .25, .417, .5 -> iteration 5
  opid_train = [0.5, 0.5, 0.0, 0.5, 0.5]  # moving average 0.5 at iteration 1
  runs = {
    "grpo": {s: _seed(0.2, grpo_train) for s in (0, 1)},
    "opid": {0: _seed(0.3, opid_train, evals_at=(0, 8, 16)), 1: _seed(0.3, opid_train, evals_at=(0, 8, 16))},
    "step_only": {0: _seed(0.1, [0.0] * 5)},
  }
  lines = study_report.steps_to_grpo(runs)
  assert lines[0].startswith("GRPO's final success: 20.0% on both splits") and "50.0% in its rollouts" in lines[0]
  assert "| grpo | 16 | 5 |" in lines and "| opid | 8 | 1 |" in lines
  assert "| step_only | not reached | not reached |" in lines
  assert study_report.steps_to_grpo({"opid": runs["opid"]}) == ["(no finished GRPO run yet)"]
