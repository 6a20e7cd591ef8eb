"""OPID steps 3-4: which skill each step gets, and the skill-augmented prompt text (pure functions).

Routing modes: critical_first (the step skill where the analyzer gave one, else the episode skill),
episode_only, step_only (no fallback), superimpose (both in one prompt), additive (the episode skill and the step
skill in two separate teacher prompts, whose log-prob gains are summed), none. A trajectory without a usable
SkillSet (analysis failed, or an empty episode skill) gets no skill at any step.
"""

from __future__ import annotations

import dataclasses

from opid_jax.agent.prompts import EPISODE_ANCHORS, TURN_ANCHOR as STEP_ANCHOR
from opid_jax.skills.records import SkillSet

ROUTING_MODES = ("critical_first", "episode_only", "step_only", "superimpose", "additive", "none")

EPISODE_HEADER = "**Episode skill (hindsight from a finished attempt at this task)**"
EPISODE_USAGE = "Let this lesson guide the whole episode, including the action you choose now:"
STEP_HEADER = "**Step skill (hindsight for this exact step)**"
STEP_USAGE = "Follow this advice when you choose the action for the current step:"


@dataclasses.dataclass(frozen=True)
class RoutedSkill:
  """The skill text(s) one step's augmented prompt carries; both None means no skill."""

  episode_skill: str | None = None
  step_skill: str | None = None

  @property
  def has_skill(self) -> bool:
    return self.episode_skill is not None or self.step_skill is not None


NO_SKILL = RoutedSkill()


def route_step(skills: SkillSet | None, step_index: int, mode: str) -> RoutedSkill:
  if mode not in ROUTING_MODES:
    raise ValueError(f"unknown routing mode {mode!r}; choose one of {ROUTING_MODES}")
  if mode == "none" or skills is None or not skills.episode_skill:
    return NO_SKILL
  step_skill = skills.step_skills.get(step_index) or None
  if mode == "critical_first":
    return RoutedSkill(step_skill=step_skill) if step_skill else RoutedSkill(skills.episode_skill)
  if mode == "episode_only":
    return RoutedSkill(skills.episode_skill)
  if mode == "step_only":
    return RoutedSkill(step_skill=step_skill)
  return RoutedSkill(skills.episode_skill, step_skill)  # superimpose, additive


def route_trajectory(skills: SkillSet | None, num_steps: int, mode: str) -> list[RoutedSkill]:
  return [route_step(skills, t, mode) for t in range(num_steps)]


def skill_section(header: str, usage: str, skill: str) -> list[str]:
  return [header, usage, f"[{' '.join(skill.split())}]"]


def _insert_paragraph(lines: list[str], at: int, paragraph: list[str]) -> list[str]:
  """Inserts `paragraph` before lines[at], separated from neighbouring text by one blank line."""
  before, after = lines[:at], lines[at:]
  block = list(paragraph)
  if before and before[-1].strip():
    block = [""] + block
  if after and after[0].strip():
    block = block + [""]
  return before + block + after


def _episode_position(lines: list[str]) -> int:
  for i, line in enumerate(lines):
    if any(anchor in line for anchor in EPISODE_ANCHORS):
      return i + 1
  return 0


def _step_position(lines: list[str]) -> int:
  for i in range(len(lines) - 1, -1, -1):
    if lines[i].lstrip().startswith(STEP_ANCHOR):
      return i
  ends_with_newline = len(lines) > 1 and lines[-1] == ""
  return len(lines) - 1 if ends_with_newline else len(lines)


def inject_skill(prompt_text: str, routed: RoutedSkill) -> str:
  """The user prompt (before the chat template) with the routed skill section(s) inserted.

  Episode skill: right after the first line holding an EPISODE_ANCHOR (the task or question; else at the
  start). Step skill: right before the last line starting with STEP_ANCHOR (else at the end). Each section is
  its own paragraph; the rest of the text is unchanged. No skill: the text unchanged.
  """
  if not routed.has_skill:
    return prompt_text
  lines = prompt_text.split("\n")
  if routed.episode_skill is not None:
    section = skill_section(EPISODE_HEADER, EPISODE_USAGE, routed.episode_skill)
    lines = _insert_paragraph(lines, _episode_position(lines), section)
  if routed.step_skill is not None:
    section = skill_section(STEP_HEADER, STEP_USAGE, routed.step_skill)
    lines = _insert_paragraph(lines, _step_position(lines), section)
  return "\n".join(lines)


def teacher_prompts(prompt_texts: list[str], skills: SkillSet | None, mode: str) -> list[list[str]]:
  """Per step of one trajectory: the teacher prompt texts whose log-prob gains make its skill advantage (empty: no
  skill). One prompt per step, except under `additive`: one with the episode skill, one with the step skill."""
  routed = route_trajectory(skills, len(prompt_texts), mode)
  if mode != "additive":
    return [[inject_skill(text, r)] if r.has_skill else [] for text, r in zip(prompt_texts, routed)]
  parts = [[RoutedSkill(r.episode_skill), RoutedSkill(step_skill=r.step_skill)] for r in routed]
  return [[inject_skill(text, p) for p in pair if p.has_skill] for text, pair in zip(prompt_texts, parts)]
