"""OPID advantages (method.md section 1, step 6), as pure numpy functions.

A step sample's score is its episode's return minus `invalid_penalty` when that step's output was malformed.
GRPO statistics run over the group; the skill advantage is the per-token log-prob gain from the skill.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ADV_NORMS = ("mean_std", "mean")
GROUP_STATS = ("steps", "trajectories")


def step_scores(episode_returns: np.ndarray, valid: np.ndarray, invalid_penalty: float) -> np.ndarray:
  return np.asarray(episode_returns, np.float64) - invalid_penalty * (~np.asarray(valid, bool))


def group_advantages(
  scores: np.ndarray,
  group_ids: np.ndarray,
  traj_ids: np.ndarray,
  *,
  norm: str = "mean_std",
  stats: str = "steps",
  eps: float = 1e-6,
) -> np.ndarray:
  """Per-sample episode advantage A_ep.

  stats="steps": mean and std over every step sample of the group (longer trajectories weigh more).
  stats="trajectories": over one value per trajectory (the mean score of its steps).
  The std is the sample std (ddof=1, as torch.std). A group whose scores are all equal, or that has a single
  value, gets 0.
  """
  if norm not in ADV_NORMS:
    raise ValueError(f"adv_norm must be one of {ADV_NORMS}, got {norm!r}")
  if stats not in GROUP_STATS:
    raise ValueError(f"group_stats must be one of {GROUP_STATS}, got {stats!r}")
  scores = np.asarray(scores, np.float64)
  group_ids, traj_ids = np.asarray(group_ids), np.asarray(traj_ids)
  adv = np.zeros_like(scores)
  for g in np.unique(group_ids):
    in_group = group_ids == g
    values = scores[in_group]
    if stats == "trajectories":
      values = np.array([scores[in_group & (traj_ids == t)].mean() for t in np.unique(traj_ids[in_group])])
    if len(values) < 2 or np.ptp(values) == 0:
      continue
    centred = scores[in_group] - values.mean()
    adv[in_group] = centred / (values.std(ddof=1) + eps) if norm == "mean_std" else centred
  return adv


def skill_advantages(teacher_logps: Sequence[Sequence[np.ndarray]], logp_old: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Per-token A_skill = sum over the step's teacher prompts of (logp_teacher - logp_old) (detached,
  unnormalised): one teacher normally, two under `additive` routing; zeros where a step has none."""
  out = []
  for teachers, old in zip(teacher_logps, logp_old):
    old = np.asarray(old, np.float64)
    out.append(sum((np.asarray(t, np.float64) - old for t in teachers), np.zeros_like(old)))
  return out


def total_advantages(episode_adv: np.ndarray, skill_adv: Sequence[np.ndarray], lambda_skill: float) -> list[np.ndarray]:
  """Per-token A = A_ep (broadcast over the response) + lambda_skill * A_skill."""
  return [a + lambda_skill * s for a, s in zip(episode_adv, skill_adv)]


def advantage_metrics(
  episode_adv: np.ndarray, skill_adv: Sequence[np.ndarray], has_skill: np.ndarray, lambda_skill: float
) -> dict[str, float]:
  """Skill coverage, A_skill statistics over skilled tokens, and its share of the total |advantage|."""
  has_skill = np.asarray(has_skill, bool)
  lengths = np.array([len(s) for s in skill_adv])
  skilled = np.concatenate([s for s, h in zip(skill_adv, has_skill) if h]) if has_skill.any() else np.zeros(0)
  ep_mass = float(np.sum(np.abs(episode_adv) * lengths))
  skill_mass = float(lambda_skill * sum(np.abs(s).sum() for s in skill_adv))
  total = ep_mass + skill_mass
  return {
    "adv/skill_coverage": float(has_skill.mean()) if len(has_skill) else 0.0,
    "adv/skill_mean": float(skilled.mean()) if skilled.size else 0.0,
    "adv/skill_std": float(skilled.std()) if skilled.size else 0.0,
    "adv/skill_share": skill_mass / total if total > 0 else 0.0,
    "adv/episode_abs_mean": float(np.abs(episode_adv).mean()) if len(episode_adv) else 0.0,
  }
