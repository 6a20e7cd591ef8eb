"""The closing summary table from hand-written metrics lines."""

import math

from opid_jax.training.summary import binomial_se, summary_rows, summary_table

ROWS = [
  {
    "step": 0,
    "eval/success": 0.25,
    "eval/episodes": 20,
    "eval/valid_action_ratio": 0.5,
    "eval/episode_length": 5.0,
    "time/eval": 10.0,
  },
  {
    "step": 1,
    "success": 0.0,
    "valid_action_ratio": 0.4,
    "episode_length": 5.0,
    "adv/skill_coverage": 1.0,
    "adv/skill_share": 0.02,
    "analyzer/final_failures": 1,
    "analyzer/trajectories": 8,
    "time/rollout": 3.0,
  },
  {
    "step": 2,
    "success": 0.5,
    "valid_action_ratio": 0.6,
    "episode_length": 4.0,
    "adv/skill_coverage": 0.5,
    "adv/skill_share": 0.04,
    "analyzer/final_failures": 0,
    "analyzer/trajectories": 8,
    "time/rollout": 2.5,
    "eval/success": 0.75,
    "eval/episodes": 12,
    "eval/valid_action_ratio": 0.9,
    "eval/episode_length": 3.0,
    "time/eval": 9.0,
  },
]


def test_summary_rows():
  rows = dict((m, (b, a)) for m, b, a in summary_rows(ROWS))
  # sqrt(0.25 * 0.75 / 20) = 0.0968, sqrt(0.75 * 0.25 / 12) = 0.125
  assert rows["success rate (eval ± binomial SE)"] == ("0.250 ± 0.097 (n=20)", "0.750 ± 0.125 (n=12)")
  assert rows["success rate (training rollouts)"] == ("0.000", "0.500")
  assert rows["valid-action ratio (eval)"] == ("0.500", "0.900")
  assert rows["skill coverage (mean)"] == ("", "0.750")
  assert rows["skill advantage share (mean)"] == ("", "0.0300")
  assert rows["episode advantage share (mean)"] == ("", "0.9700")
  assert rows["training success per iteration"] == ("", "0.00 0.50")
  assert rows["analyzer failures / trajectories"] == ("", "1 / 16")
  assert rows["seconds in rollout"] == ("", "5.5") and rows["seconds in eval"] == ("", "19.0")
  assert summary_table(ROWS).splitlines()[0] == "| metric | before | after |"


def test_binomial_se_by_hand():
  assert binomial_se(0.5, 100) == 0.05
  assert binomial_se(0.0, 30) == 0.0
  assert math.isnan(binomial_se(0.3, 0))
