"""A tiny deterministic text env: count up from a start number to a target, one `say N` action per step.

It implements the env protocol for real (tasks, admissible actions, hindsight walkthrough, reward 10 on a
win), runs in microseconds, and lets the trainer's whole loop be exercised on a laptop in seconds.
"""

from __future__ import annotations

from opid_jax.envs.base import Env, Hindsight, ResetResult, StepResult

SUCCESS_REWARD = 10.0


def task_ids(count: int = 64) -> list[str]:
  return [str(i) for i in range(count)]


def _task(task_id: str) -> tuple[int, int]:
  i = int(task_id)
  start = i % 7
  return start, start + 1 + (i % 3)  # 1 to 3 steps to go


class CountingEnv(Env):
  def __init__(self, max_steps: int = 6):
    self.max_steps = max_steps
    self._current = self._target = self._start = self._steps = 0

  def _actions(self) -> list[str]:
    return [f"say {n}" for n in range(self._current, self._current + 3)]

  def _observation(self) -> str:
    return f"You have counted to {self._current}."

  def reset(self, task_id: str) -> ResetResult:
    self._start, self._target = _task(task_id)
    self._current, self._steps = self._start, 0
    task = f"count from {self._start} up to {self._target}, one number per step."
    return ResetResult(
      observation=f"Your task is to: {task} {self._observation()}",
      task=task,
      task_type=f"distance_{self._target - self._start}",
      admissible_actions=self._actions(),
    )

  def step(self, action: str) -> StepResult:
    self._steps += 1
    if action.strip() == f"say {self._current + 1}":
      self._current += 1
      observation = self._observation()
    else:
      observation = "Nothing happens."
    won = self._current == self._target
    done = won or self._steps >= self.max_steps
    return StepResult(
      observation=observation,
      reward=SUCCESS_REWARD if won else 0.0,
      done=done,
      won=won,
      admissible_actions=self._actions(),
    )

  def hindsight(self) -> Hindsight:
    return Hindsight(expert_actions=tuple(f"say {n}" for n in range(self._start + 1, self._target + 1)))
