"""Advantages against hand-computed numbers, for both normalisations and both group statistics."""

import numpy as np
import pytest

from opid_jax.rl import advantages as adv

# Group 0: trajectory 0 won (return 10) in 2 steps, its second output malformed; trajectory 1 lost in 3 steps.
# Group 1: two trajectories of one step each, both lost: all scores equal.
RETURNS = np.array([10, 10, 0, 0, 0, 0, 0], float)
VALID = np.array([True, False, True, True, True, True, True])
GROUPS = np.array([0, 0, 0, 0, 0, 1, 1])
TRAJS = np.array([0, 0, 1, 1, 1, 2, 3])


def test_step_scores_subtract_the_invalid_penalty():
  np.testing.assert_allclose(adv.step_scores(RETURNS, VALID, 0.1), [10, 9.9, 0, 0, 0, 0, 0])


def test_mean_std_over_step_samples():
  scores = adv.step_scores(RETURNS, VALID, 0.1)
  got = adv.group_advantages(scores, GROUPS, TRAJS, norm="mean_std", stats="steps")
  # mean = 19.9 / 5 = 3.98; sample variance = (6.02^2 + 5.92^2 + 3 * 3.98^2) / 4 = 29.702
  std = np.sqrt(29.702)
  want = [6.02 / std, 5.92 / std, -3.98 / std, -3.98 / std, -3.98 / std, 0, 0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert abs(got[0] - 1.104596) < 1e-5


def test_mean_only_over_step_samples():
  scores = adv.step_scores(RETURNS, VALID, 0.1)
  got = adv.group_advantages(scores, GROUPS, TRAJS, norm="mean", stats="steps")
  np.testing.assert_allclose(got, [6.02, 5.92, -3.98, -3.98, -3.98, 0, 0], atol=1e-12)


def test_one_value_per_trajectory():
  scores = adv.step_scores(RETURNS, VALID, 0.1)
  # trajectory values: 9.95 and 0 -> mean 4.975, sample std = 4.975 * sqrt(2)
  got = adv.group_advantages(scores, GROUPS, TRAJS, norm="mean_std", stats="trajectories")
  std = 4.975 * np.sqrt(2)
  want = [5.025 / std, 4.925 / std, -4.975 / std, -4.975 / std, -4.975 / std, 0, 0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  got = adv.group_advantages(scores, GROUPS, TRAJS, norm="mean", stats="trajectories")
  np.testing.assert_allclose(got, [5.025, 4.925, -4.975, -4.975, -4.975, 0, 0], atol=1e-12)


def test_equal_scores_and_singletons_get_zero():
  assert adv.group_advantages(np.array([3.0, 3.0, 3.0]), np.zeros(3), np.arange(3)).tolist() == [0, 0, 0]
  assert adv.group_advantages(np.array([5.0]), np.zeros(1), np.zeros(1)).tolist() == [0]


def test_bad_options_are_rejected():
  with pytest.raises(ValueError, match="adv_norm"):
    adv.group_advantages(np.zeros(2), np.zeros(2), np.arange(2), norm="std")
  with pytest.raises(ValueError, match="group_stats"):
    adv.group_advantages(np.zeros(2), np.zeros(2), np.arange(2), stats="groups")


def test_skill_and_total_advantages():
  old = [np.array([-1.0, -2.0, -0.5]), np.array([-3.0])]
  skill = [[np.array([-0.5, -2.5, -0.5])], []]  # the second step has no skill
  a_skill = adv.skill_advantages(skill, old)
  np.testing.assert_allclose(a_skill[0], [0.5, -0.5, 0.0])
  np.testing.assert_allclose(a_skill[1], [0.0])
  # additive routing: two teacher prompts, their gains summed
  both = adv.skill_advantages([[np.array([-0.5, -2.5, -0.5]), np.array([-1.0, -1.0, -1.5])]], old[:1])
  np.testing.assert_allclose(both[0], [0.5 + 0.0, -0.5 + 1.0, 0.0 - 1.0])
  total = adv.total_advantages(np.array([1.0, -2.0]), a_skill, 0.001)
  np.testing.assert_allclose(total[0], [1.0005, 0.9995, 1.0])
  np.testing.assert_allclose(total[1], [-2.0])
  m = adv.advantage_metrics(np.array([1.0, -2.0]), a_skill, np.array([True, False]), 0.001)
  assert m["adv/skill_coverage"] == 0.5
  assert m["adv/skill_mean"] == pytest.approx(0.0) and m["adv/skill_std"] == pytest.approx(np.sqrt(1 / 6))
  # |A_ep| mass = 1 * 3 tokens + 2 * 1 token = 5; skill mass = 0.001 * 1.0 = 0.001
  assert m["adv/skill_share"] == pytest.approx(0.001 / 5.001)
