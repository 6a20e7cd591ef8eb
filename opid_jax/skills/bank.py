"""Skill-GRPO's skill bank: one episode skill per task type, from the analyzer's earlier iterations.

Skill-GRPO puts skills in the student's own rollout prompts, so a skill must exist before an episode starts. The
SDAR repository reads static per-task-type skill files; here the bank is filled by the analyzer of the same run, so
that every row learns from the same analyzer: after each iteration, each task type's entry becomes the episode skill
of that iteration's latest analysed trajectory of the type, a successful one preferred. Its state is a plain dict
(saved with the checkpoint's host state, so a resumed run continues with the same bank).
"""

from __future__ import annotations

from typing import Sequence

from opid_jax.skills.routing import RoutedSkill, inject_skill


class SkillBank:
  def __init__(self, skills: dict[str, str] | None = None):
    self.skills: dict[str, str] = dict(skills or {})

  def update(self, trajectories: Sequence, analyses: Sequence | None) -> None:
    by_traj = {a.traj_id: a for a in (analyses or []) if a.has_skill}
    chosen: dict[str, tuple[bool, str]] = {}
    for traj in trajectories:
      result = by_traj.get(traj.traj_id)
      if result is None:
        continue
      won, _ = chosen.get(traj.task_type, (False, ""))
      if traj.won or not won:
        chosen[traj.task_type] = (bool(traj.won), result.skills.episode_skill)
    self.skills.update({task_type: skill for task_type, (_, skill) in chosen.items()})

  def student_prompt(self, user_text: str, task_type: str) -> str:
    """The user prompt with the bank's episode skill for this task type injected (unchanged when it has none)."""
    skill = self.skills.get(task_type)
    return inject_skill(user_text, RoutedSkill(skill)) if skill else user_text

  def state_dict(self) -> dict[str, str]:
    return dict(self.skills)
