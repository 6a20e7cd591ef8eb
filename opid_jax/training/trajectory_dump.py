"""Trajectory dumps: one JSON line per trajectory of an iteration, with the skills the analyzer gave it and, per
step, the skill routed to it and OPID's two signals (episode advantage, skill log-prob change of the action)."""

from __future__ import annotations

import json
from typing import Sequence

from opid_jax.agent.trajectory import Trajectory
from opid_jax.skills import routing


def _step_signals(step, sample, routed) -> dict:
  out = {}
  if routed is not None and (routed.episode_skill or routed.step_skill):
    out["routed_skill"] = {"episode": routed.episode_skill, "step": routed.step_skill}
  if sample is not None:
    out["episode_advantage"] = sample.episode_advantage
    out["skill_logp_delta"] = sample.skill_logp_delta
  return out


def trajectory_record(traj: Trajectory, analysis=None, samples_by_step=None, routing_mode: str = "none") -> dict:
  skills = analysis.skills if analysis is not None and analysis.has_skill else None
  routed = routing.route_trajectory(skills, traj.length, routing_mode)
  samples_by_step = samples_by_step or {}
  return {
    "group_id": traj.group_id,
    "traj_id": traj.traj_id,
    "task_id": traj.task_id,
    "task": traj.task,
    "task_type": traj.task_type,
    "won": traj.won,
    "return": traj.episode_return,
    "failure_reason": traj.failure_reason,
    "skills": None
    if skills is None
    else {
      "episode_summary": skills.episode_summary,
      "episode_skill": skills.episode_skill,
      "step_skills": {str(k): v for k, v in skills.step_skills.items()},
    },
    "analyzer_failure": "" if analysis is None else analysis.failure,
    "steps": [
      {
        "index": s.index,
        "observation": s.observation,
        "response": s.response_text,
        "action": s.action,
        "valid": s.valid,
        "reward": s.reward,
        "done": s.done,
        **_step_signals(s, samples_by_step.get((traj.traj_id, s.index)), routed[s.index]),
      }
      for s in traj.steps
    ],
  }


def dump_trajectories(
  workdir: str, iteration: int, trajectories: Sequence[Trajectory], analyses=None, samples=(), routing_mode="none"
) -> str:
  """Writes WORKDIR/trajectories/iter_NNNNNN.jsonl (local or gs://); returns its path. `samples` (the iteration's
  step samples) add each step's signals; `routing_mode` names the skill each step was scored with."""
  from etils import epath

  folder = epath.Path(workdir) / "trajectories"
  folder.mkdir(parents=True, exist_ok=True)
  by_traj = {a.traj_id: a for a in (analyses or [])}
  by_step = {s.source: s for s in samples if s.source is not None}
  lines = [json.dumps(trajectory_record(t, by_traj.get(t.traj_id), by_step, routing_mode)) for t in trajectories]
  path = folder / f"iter_{iteration:06d}.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)
