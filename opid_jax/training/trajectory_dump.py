"""Trajectory dumps: one JSON line per trajectory of an iteration, with the skills the analyzer gave it."""

from __future__ import annotations

import json
from typing import Sequence

from opid_jax.agent.trajectory import Trajectory


def trajectory_record(traj: Trajectory, analysis=None) -> dict:
  skills = analysis.skills if analysis is not None and analysis.has_skill else None
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
      }
      for s in traj.steps
    ],
  }


def dump_trajectories(workdir: str, iteration: int, trajectories: Sequence[Trajectory], analyses=None) -> str:
  """Writes WORKDIR/trajectories/iter_NNNNNN.jsonl (local or gs://); returns its path."""
  from etils import epath

  folder = epath.Path(workdir) / "trajectories"
  folder.mkdir(parents=True, exist_ok=True)
  by_traj = {a.traj_id: a for a in (analyses or [])}
  lines = [json.dumps(trajectory_record(t, by_traj.get(t.traj_id))) for t in trajectories]
  path = folder / f"iter_{iteration:06d}.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)
