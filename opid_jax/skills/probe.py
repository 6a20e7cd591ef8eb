"""The skill-signal probe's logic: does a model's preference for the expert action move when a skill is in the prompt?

At each step of a replayed expert walkthrough (`opid_jax.sft.expert_replay`) three user prompts are rendered
exactly as RL rollouts render them: the plain one, one carrying the episode skill the `expert` analyzer writes
(`workflow_skill(plan)`) and one carrying its step skill (`next_action_skill(expert action)`). Two responses are
scored after each: the expert action and another admissible action, both in the SFT response format
(`action_response`). For each skill kind the probe reports how much the summed log-prob of each response moves
when the skill is added (with minus without) and the difference of the two moves, the "margin gain": a model that
reads skills raises the expert action more than the other one.

Everything but `scorer_sums` (a `score_fn` over the project's Scorer) is pure given a `score_fn` (prompt ids,
response ids -> summed log-probs); loading the model, running the environments and printing live in
`opid_jax.probe_skills`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from opid_jax.agent import prompts, rollout
from opid_jax.sft.expert_replay import ExpertStep
from opid_jax.skills.expert_backend import next_action_skill, workflow_skill
from opid_jax.skills.routing import RoutedSkill, inject_skill

SFT_THINK = "I take the next step of my plan."
PLAIN = "plain"
SKILL_KINDS = ("episode", "step")

SkillsFn = Callable[[ExpertStep], Mapping[str, RoutedSkill]]
# (prompt ids, response ids) -> one summed response log-prob per pair, in order.
ScoreFn = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], Sequence[float]]


def action_response(action: str) -> str:
  """The response text that plays `action`: a fixed short thought, then the action tag."""
  return f"<think>{SFT_THINK}</think><action>{action}</action>"


def _normalize(action: str) -> str:
  return " ".join(action.lower().split())


def step_seed(seed: int, step: ExpertStep) -> int:
  """A per-step seed that depends only on `seed`, the task id and the step index (no `hash()`, so it is
  the same in every process and does not move when other games are dropped)."""
  return (seed + zlib.crc32(f"{step.task_id}#{step.index}".encode())) % 2**32


def other_action(step: ExpertStep, seed: int) -> str | None:
  """A deterministic pseudo-random admissible action that is not the expert's; None when there is none."""
  expert = _normalize(step.expert_action)
  candidates = [a for a in step.admissible_actions if _normalize(a) != expert]
  if not candidates:
    return None
  return candidates[np.random.RandomState(step_seed(seed, step)).randint(len(candidates))]


def expert_skills(step: ExpertStep) -> dict[str, RoutedSkill]:
  """Per skill kind, the skill the `expert` analyzer writes for this step of a winning walkthrough."""
  return {
    "episode": RoutedSkill(episode_skill=workflow_skill(step.plan)),
    "step": RoutedSkill(step_skill=next_action_skill(step.expert_action)),
  }


@dataclasses.dataclass(frozen=True)
class ProbeItem:
  """One probed step: its responses' actions and its user prompts (`plain` and one per skill kind)."""

  step: ExpertStep
  other: str
  prompts: dict[str, str]

  @property
  def actions(self) -> dict[str, str]:
    return {"expert": self.step.expert_action, "other": self.other}


def user_prompt(step: ExpertStep, history_length: int) -> str:
  """The step's user message (before the chat template), as the ALFWorld rollout renders it."""
  agent = rollout.alfworld_agent(history_length)
  return agent.render(step.task, step.observation, list(step.admissible_actions), list(step.history), history_length)


def step_prompts(step: ExpertStep, skills: Mapping[str, RoutedSkill], history_length: int) -> dict[str, str]:
  """The plain user prompt and, per skill kind, that prompt with the kind's skill injected."""
  plain = user_prompt(step, history_length)
  return {PLAIN: plain, **{kind: inject_skill(plain, routed) for kind, routed in skills.items()}}


def build_items(
  games: Sequence[Sequence[ExpertStep]], seed: int, history_length: int, skills_fn: SkillsFn = expert_skills
) -> tuple[list[ProbeItem], int]:
  """Probe items for every step that has another admissible action; also the number of steps skipped."""
  items, skipped = [], 0
  for game in games:
    for step in game:
      other = other_action(step, seed)
      if other is None:
        skipped += 1
        continue
      items.append(ProbeItem(step, other, step_prompts(step, skills_fn(step), history_length)))
  return items, skipped


def response_ids(tokenizer: Any, action: str, end_id: int) -> list[int]:
  """Token ids of `action_response(action)` (no special tokens added) closed by the end-of-turn id."""
  return list(tokenizer(action_response(action), add_special_tokens=False)["input_ids"]) + [int(end_id)]


def end_of_turn_id(tokenizer: Any, stop_ids: Sequence[int]) -> int:
  """The stop id that closes an assistant turn: the tokenizer's EOS if the chat template writes it, else
  another stop token the template writes, else the EOS, else the first stop id."""
  template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
  written = [i for i in stop_ids if (tokenizer.convert_ids_to_tokens(int(i)) or "\0") in template]
  eos = tokenizer.eos_token_id
  if eos is not None and eos in written:
    return int(eos)
  if written:
    return int(written[0])
  return int(eos) if eos is not None and eos in stop_ids else int(stop_ids[0])


def longest_response(items: Sequence[ProbeItem], tokenizer: Any, end_id: int) -> int:
  return max((len(response_ids(tokenizer, a, end_id)) for item in items for a in item.actions.values()), default=1)


def score_items(
  items: Sequence[ProbeItem], tokenizer: Any, end_id: int, score_fn: ScoreFn, max_prompt_tokens: int | None
) -> list[dict[str, dict[str, float]]]:
  """Per item: {prompt variant: {"expert" | "other": summed log-prob}}.

  Each distinct (prompt ids, response ids) pair is scored once, so a skill that leaves the prompt unchanged
  gives a shift of exactly zero (and the plain prompt is shared by every kind)."""
  pairs: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
  layout = []
  for item in items:
    responses = {name: tuple(response_ids(tokenizer, a, end_id)) for name, a in item.actions.items()}
    where = {}
    for variant, text in item.prompts.items():
      ids = tuple(prompts.tokenize_prompt(tokenizer, prompts.to_chat_text(tokenizer, text), max_prompt_tokens))
      for name, response in responses.items():
        where[(variant, name)] = pairs.setdefault((ids, response), len(pairs))
    layout.append(where)
  unique = list(pairs)
  sums = list(score_fn([list(p) for p, _ in unique], [list(r) for _, r in unique])) if unique else []
  if len(sums) != len(unique):
    raise ValueError(f"score_fn returned {len(sums)} values for {len(unique)} pairs")
  out = []
  for where in layout:
    table: dict[str, dict[str, float]] = {}
    for (variant, name), k in where.items():
      table.setdefault(variant, {})[name] = float(sums[k])
    out.append(table)
  return out


def shifts(logprobs: Mapping[str, Mapping[str, float]], kind: str) -> dict[str, float]:
  """Skill minus no skill, for each response, and the margin gain (expert shift minus other shift)."""
  expert = logprobs[kind]["expert"] - logprobs[PLAIN]["expert"]
  other = logprobs[kind]["other"] - logprobs[PLAIN]["other"]
  return {"expert": expert, "other": other, "margin_gain": expert - other}


def step_record(item: ProbeItem, logprobs: Mapping[str, Mapping[str, float]]) -> dict:
  kinds = [v for v in item.prompts if v != PLAIN]
  return {
    "task_id": item.step.task_id,
    "task_type": item.step.task_type,
    "step": item.step.index,
    "expert_action": item.step.expert_action,
    "other_action": item.other,
    "logprob": {v: dict(logprobs[v]) for v in item.prompts},
    "shift": {kind: shifts(logprobs, kind) for kind in kinds},
  }


def probe(
  items: Sequence[ProbeItem], tokenizer: Any, end_id: int, score_fn: ScoreFn, max_prompt_tokens: int | None = 2048
) -> list[dict]:
  """The record of every probed step: its actions, log-probs per prompt variant, and shifts per kind."""
  scored = score_items(items, tokenizer, end_id, score_fn, max_prompt_tokens)
  return [step_record(item, lp) for item, lp in zip(items, scored)]


RESPONSE_BUCKETS = (32, 64)
PROMPT_BUCKETS = (256, 512, 1024, 2048)


def scorer_sums(
  model: Any, pad_id: int, longest_response: int, max_prompt_tokens: int, micro_batch: int = 8
) -> ScoreFn:
  """A ScoreFn over `opid_jax.rl.scoring.Scorer`: float64 sums of its float32 token log-probs (temperature 1).

  Response buckets are (32, 64), grown in steps of 64 (the scorer's chunk) if an action needs more."""
  from opid_jax.batching import padding
  from opid_jax.rl.scoring import Scorer

  response_limit = max(RESPONSE_BUCKETS[-1], -(-longest_response // 64) * 64)
  scorer = Scorer(
    model,
    pad_id,
    micro_batch=micro_batch,
    prompt_buckets=padding.buckets_up_to(max_prompt_tokens, PROMPT_BUCKETS),
    response_buckets=padding.buckets_up_to(response_limit, RESPONSE_BUCKETS),
    truncate_left=True,
  )

  def score(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> list[float]:
    out = scorer.score(prompt_ids, response_ids, temperature=1.0)
    return [float(np.sum(lp, dtype=np.float64)) for lp in out.logprobs]

  return score


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if len(values) else math.nan


def summarize_kind(records: Sequence[dict], kind: str) -> dict:
  """Mean shifts over the steps, and how often the expert response beats the other without / with the skill."""
  rows = [r for r in records if kind in r["shift"]]

  def wins(variant: str) -> float:
    return _mean([float(r["logprob"][variant]["expert"] > r["logprob"][variant]["other"]) for r in rows])

  return {
    "steps": len(rows),
    "expert_shift": _mean([r["shift"][kind]["expert"] for r in rows]),
    "other_shift": _mean([r["shift"][kind]["other"] for r in rows]),
    "margin_gain": _mean([r["shift"][kind]["margin_gain"] for r in rows]),
    "expert_preferred_without": wins(PLAIN),
    "expert_preferred_with": wins(kind),
  }


def summarize(records: Sequence[dict], kinds: Sequence[str] = SKILL_KINDS) -> dict[str, dict]:
  return {kind: summarize_kind(records, kind) for kind in kinds}


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
  """A fixed-width table: one row per skill kind."""
  header = (
    f"{'skill':<8} {'steps':>5} {'expert shift':>13} {'other shift':>12} {'margin gain':>12} "
    f"{'expert preferred (without -> with)':>35}"
  )
  lines = [header, "-" * len(header)]
  for kind, s in summary.items():
    preferred = f"{s['expert_preferred_without']:.2f} -> {s['expert_preferred_with']:.2f}"
    lines.append(
      f"{kind:<8} {s['steps']:>5} {s['expert_shift']:>+13.3f} {s['other_shift']:>+12.3f} "
      f"{s['margin_gain']:>+12.3f} {preferred:>35}"
    )
  return "\n".join(lines)
