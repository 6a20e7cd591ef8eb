"""Behaviour-cloning examples from expert walkthroughs: replay once (cached as JSON lines), render per epoch.

An example is one expert step rendered exactly as an RL rollout renders its prompt, with the expert's action as
the response. A configurable share of examples carries a skill in the prompt, written the way the `expert`
analyzer writes it (the walkthrough as an episode skill, or "do X now" as a step skill), so that a small model
learns to read skills the way instruct models do.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import numpy as np

from opid_jax.agent import prompts as prompt_lib
from opid_jax.agent.prompts import HistoryEntry
from opid_jax.envs import alfworld
from opid_jax.envs.pool import EnvPool
from opid_jax.errors import UserError
from opid_jax.sft.expert_replay import ExpertStep, replay_walkthroughs
from opid_jax.skills import probe as skill_probe, routing


@dataclasses.dataclass(frozen=True)
class SkillShare:
  episode: float = 0.0  # share of examples whose prompt carries the episode skill
  step: float = 0.0  # share that carries the step skill (the rest carries none)

  def __post_init__(self):
    if min(self.episode, self.step) < 0 or self.episode + self.step > 1:
      raise UserError(f"skill shares must be >= 0 and sum to at most 1, got episode={self.episode} step={self.step}")


def step_to_json(step: ExpertStep) -> dict:
  record = dataclasses.asdict(step)
  record["history"] = [[h.observation, h.action] for h in step.history]
  return record


def step_from_json(record: dict) -> ExpertStep:
  fields = dict(record)
  fields["history"] = tuple(HistoryEntry(o, a) for o, a in record["history"])
  fields["admissible_actions"] = tuple(record["admissible_actions"])
  fields["plan"] = tuple(record["plan"])
  return ExpertStep(**fields)


def select_games(data_dir: str, split: str, num_games: int, seed: int) -> list[str]:
  """`num_games` games of a split in a seeded order (all when num_games <= 0), so task types mix."""
  try:
    games = alfworld.list_games(data_dir, split)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from None
  return choose_games(games, num_games, seed)


def choose_games(games: list[str], num_games: int, seed: int) -> list[str]:
  """The first `num_games` of `games` (a sorted split listing) in a seeded order; all of them when num_games <= 0."""
  order = np.random.RandomState(seed).permutation(len(games))
  chosen = [games[i] for i in order]
  return chosen[:num_games] if num_games > 0 else chosen


def build_expert_steps(
  data_dir: str, task_ids: Sequence[str], num_workers: int = 2, envs_per_worker: int = 8
) -> tuple[list[ExpertStep], list[str]]:
  factory = functools.partial(alfworld.AlfworldEnv, data_dir=data_dir, max_steps=100)
  num_envs = max(1, min(len(task_ids), num_workers * envs_per_worker))
  with EnvPool(factory, num_envs=num_envs, num_workers=num_workers) as pool:
    games, dropped = replay_walkthroughs(pool, list(task_ids))
  return [step for game in games for step in game], dropped


def load_or_build(
  cache_path: str, data_dir: str, split: str, num_games: int, seed: int, num_workers: int = 2
) -> list[ExpertStep]:
  """The cached expert steps at `cache_path`, replaying the walkthroughs first when the file is missing."""
  if not os.path.exists(cache_path):
    task_ids = select_games(data_dir, split, num_games, seed)
    steps, dropped = build_expert_steps(data_dir, task_ids, num_workers)
    if not steps:
      raise UserError(f"no walkthrough of the {len(task_ids)} {split} games in {data_dir} could be replayed")
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    tmp = cache_path + ".tmp"
    with open(tmp, "w") as f:
      for step in steps:
        f.write(json.dumps(step_to_json(step)) + "\n")
    os.replace(tmp, cache_path)  # a killed build leaves no half-written cache behind
    if dropped:
      print(f"sft data: {len(dropped)} of {len(task_ids)} walkthroughs did not win and were left out", flush=True)
  with open(cache_path) as f:
    return [step_from_json(json.loads(line)) for line in f if line.strip()]


def skill_kinds(count: int, share: SkillShare, rng: np.random.RandomState) -> list[str]:
  """Per example: 'episode', 'step' or 'none', drawn with the configured shares."""
  draws = rng.uniform(size=count)
  return ["episode" if u < share.episode else "step" if u < share.episode + share.step else "none" for u in draws]


def example_prompt(step: ExpertStep, kind: str, history_window: int) -> str:
  """The user prompt a rollout would render at this step, with the `expert` analyzer's skill of `kind`
  ('episode', 'step' or 'none') injected."""
  plain = skill_probe.user_prompt(step, history_window)
  return plain if kind == "none" else routing.inject_skill(plain, skill_probe.expert_skills(step)[kind])


def tokenize_example(
  tokenizer, step: ExpertStep, kind: str, history_window: int, end_of_turn_id: int, max_prompt_tokens: int | None
) -> tuple[list[int], list[int]]:
  """Prompt ids exactly as a rollout makes them; response ids as the policy would sample them (end of turn
  included)."""
  chat = prompt_lib.to_chat_text(tokenizer, example_prompt(step, kind, history_window))
  prompt_ids = prompt_lib.tokenize_prompt(tokenizer, chat, max_prompt_tokens, side="left")  # SFT always cuts
  return prompt_ids, skill_probe.response_ids(tokenizer, step.expert_action, end_of_turn_id)


def corpus_texts(steps: Sequence[ExpertStep], history_window: int) -> list[str]:
  """Every text a policy trained on these steps reads or writes (for training a tokenizer)."""
  texts = []
  for step in steps:
    texts.extend(example_prompt(step, kind, history_window) for kind in ("none", "episode", "step"))
    texts.append(skill_probe.action_response(step.expert_action))
  return texts
