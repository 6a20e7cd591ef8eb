"""The LLM analyzer's side of OPID step 2: request text, lenient reply parsing, the repair loop.

One request per finished trajectory, as the official OPID analyzer sends it: a single user message (no system
message) that asks for skills on at most min(max_step_skills, T) critical steps, indexed from 0. The reply must be
a JSON object with `episode_summary`, `episode_skill` and `step_skills`; a reply that cannot be read or whose
episode skill is empty is unusable and gets a repair request, within `max_parse_attempts` requests in all (2, as
the official analyzer). Transport (HTTP, a local sampler) and the completion-token cap live in the backends.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from opid_jax.agent.trajectory import Trajectory
from opid_jax.skills.lenient_json import find_json_object
from opid_jax.skills.records import AnalysisResult, AnalyzerStats, SkillSet

__all__ = [
  "AnalysisSpec",
  "AnalysisResult",
  "SkillSet",
  "SkillParseError",
  "MAX_STEP_SKILLS",
  "Message",
  "ChatMany",
  "discounted_returns",
  "skip_reason",
  "requested_step_skills",
  "build_analysis_messages",
  "build_repair_messages",
  "parse_skill_set",
  "analyze_batch",
]

Message = dict[str, str]
# Sends many conversations, returns one reply per conversation: the text, or the exception that ended it.
ChatMany = Callable[[list[list[Message]]], list["str | BaseException"]]

MAX_STEP_SKILLS = {"alfworld": 5, "webshop": 5, "search": 2}


@dataclasses.dataclass(frozen=True)
class AnalysisSpec:
  gamma: float = 0.95
  max_step_skills: int = 5  # the request asks for at most min(max_step_skills, T) step skills
  max_parse_attempts: int = 2  # requests per trajectory, the first one included (then repairs)
  max_observation_chars: int | None = None  # None keeps observations whole
  max_completion_tokens: int | None = 4096  # the reply's token cap sent with each request (None: the server's)

  def __post_init__(self):
    if self.max_parse_attempts < 1:
      raise ValueError(f"max_parse_attempts must be at least 1, not {self.max_parse_attempts}")
    if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
      raise ValueError(f"max_completion_tokens must be at least 1 or None, not {self.max_completion_tokens}")


class SkillParseError(ValueError):
  pass


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
  """G_t = sum_{u >= t} gamma^(u - t) r_u for every step t."""
  returns = [0.0] * len(rewards)
  running = 0.0
  for t in range(len(rewards) - 1, -1, -1):
    running = rewards[t] + gamma * running
    returns[t] = running
  return returns


def skip_reason(trajectory: Trajectory) -> str:
  """Why a trajectory is not worth an analyzer call ("" when it is)."""
  if not trajectory.steps:
    return "trajectory has no steps"
  if trajectory.failure_reason:
    return f"trajectory ended by a fault: {trajectory.failure_reason}"
  return ""


_INTRO = (
  "You study one finished episode of a language-model agent and distill it into skills: short, "
  "reusable guidance that would help the same agent act better on this kind of task. "
  "Answer with one JSON object and nothing else."
)


def _clip(text: str, limit: int | None) -> str:
  if limit is None or len(text) <= limit:
    return text
  return text[:limit] + f" ...[{len(text) - limit} more characters]"


def _format_step(step, step_return: float, spec: AnalysisSpec) -> str:
  malformed = "" if step.valid else " (malformed output: the format was wrong)"
  return "\n".join(
    [
      f"### Step {step.index} (G_{step.index} = {step_return:.4f})",
      "Observation:",
      _clip(step.observation, spec.max_observation_chars),
      "Agent response:",
      step.response_text,
      f"Action sent to the environment: {step.action!r}{malformed}",
    ]
  )


def _outcome_line(trajectory: Trajectory) -> str:
  verdict = (
    "SUCCESS: the agent completed the task." if trajectory.won else "FAILURE: the agent did not complete the task."
  )
  return f"{verdict} Episode return: {trajectory.episode_return:g}. Steps taken: {trajectory.length}."


def requested_step_skills(trajectory: Trajectory, spec: AnalysisSpec) -> int:
  """How many step skills the request asks for at most: min(max_step_skills, T)."""
  return max(0, min(spec.max_step_skills, trajectory.length))


def _instructions(trajectory: Trajectory, spec: AnalysisSpec) -> str:
  last = trajectory.length - 1
  count = requested_step_skills(trajectory, spec)
  if trajectory.won:
    episode_skill = "the workflow that worked, as ordered steps the agent can reuse on similar tasks"
  else:
    episode_skill = "the key mistake to avoid on similar tasks, and what to do instead"
  if count:
    step_skills = (
      f'- "step_skills": guidance for at most {count} critical step(s), as an object mapping a 0-based step '
      f'index (a key from "0" to "{last}"; step 0 is the first step) to one short imperative sentence telling '
      "the agent what to do at that step: advice it can act on then, not an account of what happened. "
      "Pick only the critical steps: the decisions that won or lost the episode, wasted steps, repeated "
      "or invalid actions. The keys you write are the steps you pick; use {} when no step stands out."
    )
  else:
    step_skills = '- "step_skills": {} (no step guidance is asked for this episode).'
  return "\n".join(
    [
      "## Your answer",
      "Return one JSON object with exactly these three keys:",
      '- "episode_summary": two or three sentences on what happened.',
      f'- "episode_skill": one string, never empty: {episode_skill}.',
      step_skills,
      'Example shape: {"episode_summary": "...", "episode_skill": "...", '
      f'"step_skills": {{"{min(1, last)}": "..."}}}}',
    ]
  )


def build_analysis_messages(trajectory: Trajectory, spec: AnalysisSpec) -> list[Message]:
  """The analyzer request for one finished trajectory: one user message, no system message (as the official one)."""
  returns = discounted_returns([step.reward for step in trajectory.steps], spec.gamma)
  steps = [_format_step(step, g, spec) for step, g in zip(trajectory.steps, returns)]
  user = "\n\n".join(
    [
      _INTRO,
      f"## Task\n{trajectory.task}",
      f"## Outcome\n{_outcome_line(trajectory)}",
      "## Steps\nSteps are numbered from 0. Each step shows the observation the agent saw, its full response, "
      "the action the environment received, and the discounted return G_t from that step on "
      f"(gamma = {spec.gamma}).",
      *steps,
      _instructions(trajectory, spec),
    ]
  )
  return [{"role": "user", "content": user}]


_MAX_ECHOED_REPLY_CHARS = 8000


def build_repair_messages(messages: list[Message], bad_reply: str, problem: str) -> list[Message]:
  """A fresh request after an unusable reply: one user message holding the first request's text, what was
  wrong, the unusable reply and the ask to answer again (the official analyzer's retry has this shape)."""
  request = next((m["content"] for m in messages if m["role"] == "user"), "")
  repair = "\n".join(
    [
      "## Your previous answer could not be used",
      f"Problem: {problem}.",
      "Previous answer:",
      _clip(bad_reply, _MAX_ECHOED_REPLY_CHARS),
      "",
      'Reply again with only one JSON object with the keys "episode_summary", "episode_skill" (not empty) and '
      '"step_skills" as described above, no other text.',
    ]
  )
  return [{"role": "user", "content": f"{request}\n\n{repair}"}]


# "3", "step 3", "Step_3", "t=3", "step #3:"; a bare "-1" is not a step.
_STEP_KEY = re.compile(r"^\s*(?:(?:step|t)\s*[_#:=-]?\s*)?(\d+)\s*:?\s*$", re.IGNORECASE)


def _step_index(key: Any) -> int | None:
  if isinstance(key, bool):
    return None
  if isinstance(key, int):
    return key
  if isinstance(key, str):
    match = _STEP_KEY.match(key)
    return int(match.group(1)) if match else None
  return None


def _as_text(value: Any) -> str:
  if isinstance(value, str):
    return " ".join(value.split())
  if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
    return " ".join(" ".join(item.split()) for item in value)
  return ""


def _step_entries(raw: Any) -> list[tuple[Any, Any]]:
  """(key, skill) pairs from a mapping, or from a list of {"step": i, "skill": s} records."""
  if isinstance(raw, dict):
    return list(raw.items())
  entries = []
  if isinstance(raw, list):
    for item in raw:
      if isinstance(item, dict):
        key = next((item[k] for k in ("step", "index", "t", "step_index") if k in item), None)
        skill = next((item[k] for k in ("skill", "step_skill", "text", "advice") if k in item), None)
        entries.append((key, skill))
  return entries


def parse_skill_set(reply: str, num_steps: int, max_step_skills: int) -> SkillSet:
  """Reads the analyzer's reply; raises SkillParseError when it holds no usable answer.

  Step keys that are not steps of the trajectory are dropped, then the first `max_step_skills`
  (in the reply's order) are kept. An empty `episode_skill` parses fine (the caller decides).
  """
  try:
    answer = find_json_object(reply, accept=lambda obj: "episode_skill" in obj)
  except ValueError as err:
    raise SkillParseError('no JSON object with an "episode_skill" key') from err
  step_skills: dict[int, str] = {}
  for key, value in _step_entries(answer.get("step_skills")):
    index = _step_index(key)
    skill = _as_text(value)
    if index is None or not 0 <= index < num_steps or not skill or index in step_skills:
      continue
    if len(step_skills) == max_step_skills:
      break
    step_skills[index] = skill
  return SkillSet(
    episode_summary=_as_text(answer.get("episode_summary")),
    episode_skill=_as_text(answer.get("episode_skill")),
    step_skills=step_skills,
  )


def _usable_skills(reply: str, trajectory: Trajectory, spec: AnalysisSpec, stats: AnalyzerStats) -> SkillSet:
  """The reply's skills; SkillParseError when it cannot be read or its episode skill is empty."""
  skills = parse_skill_set(reply, trajectory.length, spec.max_step_skills)
  if not skills.episode_skill:
    stats.add("empty_skills")
    raise SkillParseError('the "episode_skill" is empty')
  return skills


def analyze_batch(
  trajectories: Sequence[Trajectory], chat_many: ChatMany, spec: AnalysisSpec, stats: AnalyzerStats
) -> list[AnalysisResult]:
  """Analyzes trajectories in rounds: first requests, then repairs of the unusable replies.

  A reply is unusable when no answer can be read from it or its episode skill is empty; after
  `spec.max_parse_attempts` unusable replies the trajectory gets no skill. Results come back in input
  order; every failure is a result with `skills=None`, never an exception. Counters: `parse_failures`
  counts unusable replies (`empty_skills` those with an empty episode skill among them), `final_failures`
  the trajectories left without skill, so trajectories = skipped + with_skill + final_failures.
  """
  stats.add("trajectories", len(trajectories))
  results: list[AnalysisResult | None] = [None] * len(trajectories)
  requests: dict[int, list[Message]] = {}
  for i, trajectory in enumerate(trajectories):
    reason = skip_reason(trajectory)
    if reason:
      stats.add("skipped")
      results[i] = AnalysisResult(trajectory.traj_id, None, reason)
    else:
      requests[i] = build_analysis_messages(trajectory, spec)

  pending = dict(requests)
  for attempt in range(1, spec.max_parse_attempts + 1):
    if not pending:
      break
    order = list(pending)
    replies = chat_many([pending[i] for i in order])
    next_round: dict[int, list[Message]] = {}
    for i, reply in zip(order, replies, strict=True):
      trajectory = trajectories[i]
      if isinstance(reply, BaseException):
        stats.add("final_failures")
        results[i] = AnalysisResult(trajectory.traj_id, None, f"analyzer call failed: {reply}")
        continue
      try:
        skills = _usable_skills(reply, trajectory, spec, stats)
      except SkillParseError as err:
        stats.add("parse_failures")
        if attempt < spec.max_parse_attempts:
          stats.add("repairs")
          next_round[i] = build_repair_messages(requests[i], reply, str(err))
        else:
          stats.add("final_failures")
          results[i] = AnalysisResult(trajectory.traj_id, None, f"no usable reply after {attempt} tries: {err}", reply)
        continue
      stats.add("with_skill")
      results[i] = AnalysisResult(trajectory.traj_id, skills, "", reply)
    pending = next_round
  return results  # type: ignore[return-value]
