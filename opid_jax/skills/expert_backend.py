"""A deterministic analyzer with no LLM: skills from the environment's privileged hindsight.

With an expert walkthrough (ALFWorld, WebShop) the episode skill is the expert plan (for a failure:
the first mistake, then the plan) and the step skills sit at the first steps where the agent left
the plan, naming the plan's next action. With gold answers (search QA) the skills point at the gold
answer and at the step where the evidence was, or should have been, retrieved.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from opid_jax.agent.trajectory import Trajectory
from opid_jax.skills.analyzer import AnalysisSpec, skip_reason
from opid_jax.skills.backend_base import AnalyzerBackend, Future, completed_future
from opid_jax.skills.records import AnalysisResult, AnalyzerStats, SkillSet


def _normalize_action(action: str) -> str:
  return " ".join(action.lower().split())


def plan_deviations(actions: Sequence[str], plan: Sequence[str]) -> tuple[list[tuple[int, str]], int]:
  """Walks the agent's actions along the plan.

  Returns the (step index, plan action expected there) of every step that did not advance the plan,
  and how many plan actions were completed. Steps after the plan is complete are not judged.
  """
  deviations = []
  progress = 0
  for t, action in enumerate(actions):
    if progress == len(plan):
      break
    if _normalize_action(action) == _normalize_action(plan[progress]):
      progress += 1
    else:
      deviations.append((t, plan[progress]))
  return deviations, progress


def workflow_skill(plan: Sequence[str]) -> str:
  """The episode skill of a won trajectory (and of an expert walkthrough)."""
  return f"Workflow that solves this task: {' -> '.join(plan)}."


def next_action_skill(expected: str) -> str:
  """The step skill at a step where the plan needed `expected`."""
  return f"Do '{expected}' now: it is the next action of the plan that solves this task."


def _plan_skills(trajectory: Trajectory, max_step_skills: int) -> SkillSet:
  plan = list(trajectory.hindsight.expert_actions)
  actions = [step.action for step in trajectory.steps]
  deviations, progress = plan_deviations(actions, plan)
  plan_text = " -> ".join(plan)
  if trajectory.won:
    summary = f"The task was completed in {trajectory.length} steps."
    episode_skill = workflow_skill(plan)
  elif deviations:
    t, expected = deviations[0]
    done = "" if trajectory.steps[t].valid else " (a malformed output)"
    summary = f"The task was not completed in {trajectory.length} steps; the agent first left the plan at step {t}."
    episode_skill = (
      f"Mistake to avoid: at step {t} you did '{actions[t]}'{done} where the plan needed "
      f"'{expected}', and the task was never completed. Follow this plan instead: "
      f"{plan_text}."
    )
  else:
    summary = f"The agent followed the plan but stopped after {progress} of {len(plan)} actions."
    episode_skill = (
      f"Mistake to avoid: stopping before the plan is finished ({progress} of "
      f"{len(plan)} actions done). Follow this plan to the end: {plan_text}."
    )
  step_skills = {t: next_action_skill(expected) for t, expected in deviations[:max_step_skills]}
  return SkillSet(summary, episode_skill, step_skills)


def normalize_answer(text: str) -> str:
  """Lowercase, no punctuation, no articles, single spaces (the exact-match convention)."""
  text = "".join(char for char in text.lower() if char not in string.punctuation)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def _last_answer_step(trajectory: Trajectory) -> tuple[int | None, str]:
  for step in reversed(trajectory.steps):
    answers = _ANSWER.findall(step.response_text)
    if answers:
      return step.index, answers[-1].strip()
  return None, ""


def _evidence_step(trajectory: Trajectory, gold: str) -> int | None:
  """First step (after the question itself) whose observation mentions the gold answer."""
  wanted = normalize_answer(gold)
  for step in trajectory.steps[1:]:
    if wanted and f" {wanted} " in f" {normalize_answer(step.observation)} ":
      return step.index
  return None


def _first_search_step(trajectory: Trajectory) -> int:
  for step in trajectory.steps:
    if "<search>" in step.response_text.lower():
      return step.index
  return 0


def _answer_skills(trajectory: Trajectory, max_step_skills: int) -> SkillSet:
  golds = list(trajectory.hindsight.gold_answers)
  answer_step, given = _last_answer_step(trajectory)
  gold = next((g for g in golds if normalize_answer(g) == normalize_answer(given)), golds[0])
  evidence = _evidence_step(trajectory, gold)
  seen_at = f": the passages you saw at step {evidence} name it" if evidence is not None else ""

  step_skills: dict[int, str] = {}
  if not trajectory.won and evidence is None:
    step_skills[_first_search_step(trajectory)] = (
      f"Search for the question's key entity so that the passages mention '{gold}'."
    )
  if trajectory.won:
    summary = f"The agent answered '{given}', which is correct."
    episode_skill = (
      f"Workflow that worked: search for the question's key entity, read the passages "
      f"for the answer, then answer <answer>{gold}</answer>."
    )
    final_step = answer_step if answer_step is not None else trajectory.length - 1
    step_skills[final_step] = f"Answer <answer>{gold}</answer>{seen_at}."
  elif answer_step is not None:
    summary = f"The agent answered '{given}', but the correct answer is '{gold}'."
    episode_skill = (
      f"Mistake to avoid: answering '{given}' without evidence for it; the correct "
      f"answer is '{gold}'. Search until a passage states the answer, then answer "
      "with what it says."
    )
    step_skills[answer_step] = f"Answer <answer>{gold}</answer> instead of '{given}'{seen_at}."
  else:
    summary = f"The agent never answered; the correct answer is '{gold}'."
    episode_skill = (
      f"Mistake to avoid: using every step without answering; the correct answer is "
      f"'{gold}'. Answer as soon as a passage states it."
    )
    step_skills[trajectory.length - 1] = f"Stop searching and answer <answer>{gold}</answer>{seen_at}."
  kept = dict(sorted(step_skills.items())[:max_step_skills])
  return SkillSet(summary, episode_skill, kept)


def expert_skill_set(trajectory: Trajectory, max_step_skills: int) -> SkillSet | None:
  """Skills from hindsight alone; None when the trajectory carries no hindsight."""
  if trajectory.hindsight.expert_actions:
    return _plan_skills(trajectory, max_step_skills)
  if trajectory.hindsight.gold_answers:
    return _answer_skills(trajectory, max_step_skills)
  return None


def expert_result(trajectory: Trajectory, spec: AnalysisSpec, stats: AnalyzerStats) -> AnalysisResult:
  stats.add("trajectories")
  reason = skip_reason(trajectory)
  if reason:
    stats.add("skipped")
    return AnalysisResult(trajectory.traj_id, None, reason)
  skills = expert_skill_set(trajectory, spec.max_step_skills)
  if skills is None:
    stats.add("final_failures")
    return AnalysisResult(trajectory.traj_id, None, "no hindsight (expert actions or gold answers)")
  stats.add("with_skill")
  return AnalysisResult(trajectory.traj_id, skills)


class ExpertBackend(AnalyzerBackend):
  name = "expert"

  def _start(self, trajectories: Sequence[Trajectory], stats: AnalyzerStats) -> list[Future]:
    return [completed_future(expert_result(t, self.spec, stats)) for t in trajectories]
