"""Plain records that flow from rollout to the analyzer and the trainer (host-side, no JAX)."""

from __future__ import annotations

import dataclasses
from typing import Any

from opid_jax.envs.base import Hindsight


@dataclasses.dataclass
class Step:
  index: int  # 0-based step index within the trajectory
  observation: str  # the raw observation the policy saw at this step
  admissible_actions: list[str]
  prompt_text: str  # the rendered prompt (after the chat template)
  prompt_ids: list[int]
  response_ids: list[int]  # sampled tokens, end-of-turn token included when sampled
  response_text: str  # response_prefix + the decoded response_ids
  action: str  # what the env received
  valid: bool  # False when the output was malformed (penalised)
  reward: float = 0.0
  done: bool = False
  sampled_logprobs: list[float] | None = None  # per response token, at sampling time
  user_prompt_text: str = ""  # the user message before the chat template (where skills are injected)
  response_prefix: str = ""  # what the rollout pre-filled the assistant turn with (end of prompt_text)


@dataclasses.dataclass
class Trajectory:
  group_id: int  # trajectories of one group share a task
  traj_id: int  # unique within an iteration
  task_id: str
  task: str
  task_type: str
  steps: list[Step] = dataclasses.field(default_factory=list)
  won: bool = False
  episode_return: float = 0.0
  hindsight: Hindsight = dataclasses.field(default_factory=Hindsight)
  failure_reason: str = ""  # set when the episode ended through a fault (dead worker, timeout)
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def length(self) -> int:
    return len(self.steps)
