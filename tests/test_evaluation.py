"""Evaluation tables: per task type, per split when tasks come from several splits, and per-split task lists."""

from __future__ import annotations

import pytest

from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.evaluation import tables as eval_tables


def _trajectory(task_id: str, task_type: str, won: bool, length: int) -> Trajectory:
  steps = [
    Step(
      index=i,
      observation="o",
      admissible_actions=[],
      prompt_text="",
      prompt_ids=[1],
      response_ids=[2],
      response_text="",
      action="a",
      valid=i % 2 == 0,
    )
    for i in range(length)
  ]
  return Trajectory(
    group_id=0,
    traj_id=0,
    task_id=task_id,
    task="t",
    task_type=task_type,
    steps=steps,
    won=won,
    episode_return=10.0 if won else 0.0,
  )


def test_first_per_split_keeps_order_and_count():
  ids = ["valid_seen/a", "valid_seen/b", "valid_seen/c", "valid_unseen/x", "valid_unseen/y", "q1"]
  assert eval_tables.first_per_split(ids, 2) == [
    "valid_seen/a",
    "valid_seen/b",
    "valid_unseen/x",
    "valid_unseen/y",
    "q1",
  ]
  assert eval_tables.first_per_split(ids, 0) == ids


def test_split_rows_only_with_several_splits():
  trajectories = [
    _trajectory("valid_seen/g1", "pick", True, 4),
    _trajectory("valid_seen/g2", "heat", False, 2),
    _trajectory("valid_unseen/g3", "pick", False, 6),
  ]
  table = eval_tables.per_task_type(trajectories)
  assert list(table) == ["heat", "pick", "split:valid_seen", "split:valid_unseen", "all"]
  assert table["split:valid_seen"]["success"] == pytest.approx(0.5)
  assert table["split:valid_seen"]["episode_length"] == pytest.approx(3.0)
  assert table["split:valid_unseen"]["success"] == 0.0 and table["split:valid_unseen"]["episodes"] == 3 - 2
  assert table["pick"]["success"] == pytest.approx(0.5)
  assert table["all"]["success"] == pytest.approx(1 / 3)
  # valid-action ratio over steps: steps 0, 2 of g1 (2 of 4), step 0 of g2 (1 of 2), steps 0, 2, 4 of g3 (3 of 6)
  assert table["all"]["valid_action_ratio"] == pytest.approx(6 / 12)
  single = eval_tables.per_task_type(trajectories[:2])
  assert not any(name.startswith("split:") for name in single)
