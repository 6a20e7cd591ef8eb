"""Replays expert walkthroughs through real environments and records what the agent would see at each step.

Used for behaviour cloning (`opid_jax.sft`) and for the skill-signal probe (`opid_jax.probe_skills`). Each
recorded step holds exactly what the rollout would render into a prompt (task, observation, admissible
actions, the earlier (observation, action) pairs) plus the expert's action there. Only walkthroughs that win
are kept, so every recorded action is part of a plan that solves its game.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from opid_jax.agent.prompts import HistoryEntry
from opid_jax.envs.pool import EnvPool, failure_of


@dataclasses.dataclass(frozen=True)
class ExpertStep:
  task_id: str
  task: str
  task_type: str
  index: int  # 0-based step of the walkthrough
  observation: str
  admissible_actions: tuple[str, ...]
  history: tuple[HistoryEntry, ...]  # every earlier step of the walkthrough
  expert_action: str
  plan: tuple[str, ...]  # the whole walkthrough


@dataclasses.dataclass
class _Replay:
  task_id: str
  task: str = ""
  task_type: str = ""
  plan: tuple[str, ...] = ()
  observation: str = ""
  admissible: tuple[str, ...] = ()
  steps: list[ExpertStep] = dataclasses.field(default_factory=list)
  won: bool = False
  running: bool = True


def _record(replay: _Replay) -> str:
  action = replay.plan[len(replay.steps)]
  history = tuple(HistoryEntry(s.observation, s.expert_action) for s in replay.steps)
  replay.steps.append(
    ExpertStep(
      replay.task_id,
      replay.task,
      replay.task_type,
      len(replay.steps),
      replay.observation,
      replay.admissible,
      history,
      action,
      replay.plan,
    )
  )
  return action


def replay_wave(pool: EnvPool, task_ids: Sequence[str]) -> list[_Replay]:
  """Plays the walkthrough of each task (at most pool.num_envs) in lockstep; returns every replay."""
  replays = [_Replay(t) for t in task_ids]
  resets = pool.reset(list(enumerate(task_ids)))
  hindsights = pool.hindsight(list(range(len(task_ids))))
  for replay, reset, hindsight in zip(replays, resets, hindsights):
    replay.running = not failure_of(reset) and bool(hindsight.expert_actions)
    replay.task, replay.task_type, replay.plan = reset.task, reset.task_type, tuple(hindsight.expert_actions)
    replay.observation, replay.admissible = reset.observation, tuple(reset.admissible_actions)
  while True:
    active = [(i, r) for i, r in enumerate(replays) if r.running]
    if not active:
      return replays
    results = pool.step([(i, _record(r)) for i, r in active])
    for (_, replay), result in zip(active, results):
      replay.observation, replay.admissible = result.observation, tuple(result.admissible_actions)
      if failure_of(result) or result.done or len(replay.steps) == len(replay.plan):
        replay.won = bool(result.won) and not failure_of(result)
        replay.running = False


def replay_walkthroughs(pool: EnvPool, task_ids: Sequence[str]) -> tuple[list[list[ExpertStep]], list[str]]:
  """Per game whose walkthrough wins: its steps, in task order. Also returns the ids of the games whose
  walkthrough did not win (or whose env failed), which are left out."""
  games, dropped = [], []
  for start in range(0, len(task_ids), pool.num_envs):
    for replay in replay_wave(pool, task_ids[start : start + pool.num_envs]):
      if replay.won:
        games.append(replay.steps)
      else:
        dropped.append(replay.task_id)
  return games, dropped
