"""The environment protocol every benchmark implements (host-side Python, no JAX).

An environment is reset to one task (a game file, a goal index, a question) and then stepped with the
action text the agent produced. Observations are plain strings; `info` dictionaries carry the facts the
prompt and the trainer need. Privileged hindsight knowledge (an expert walkthrough, gold answers) is
exposed separately so that only analyzers that are allowed to use it ever see it.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any


@dataclasses.dataclass
class ResetResult:
  observation: str
  task: str  # the task description as the prompt states it
  task_type: str  # e.g. an ALFWorld task type or a QA dataset name
  admissible_actions: list[str]  # empty where the action space is free text
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepResult:
  observation: str
  reward: float
  done: bool
  won: bool
  admissible_actions: list[str]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Hindsight:
  """Privileged knowledge about a task, for hindsight analyzers only (never for the policy)."""

  expert_actions: tuple[str, ...] = ()  # a walkthrough that solves the task, where one exists
  gold_answers: tuple[str, ...] = ()  # accepted answers, where the task is a question
  notes: str = ""


class Env(abc.ABC):
  """One environment instance; reset() may be called any number of times."""

  max_steps: int = 30

  @abc.abstractmethod
  def reset(self, task_id: str) -> ResetResult:
    """Starts the task named by `task_id` (one of the ids the env's task list yields)."""

  @abc.abstractmethod
  def step(self, action: str) -> StepResult:
    """Applies one action (already extracted from the response text)."""

  def hindsight(self) -> Hindsight:
    """Privileged knowledge about the current task; empty by default."""
    return Hindsight()

  def close(self) -> None:
    pass
