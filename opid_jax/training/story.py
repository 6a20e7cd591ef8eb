"""OPID's signal in words: a few steps of a run's trajectory dumps, each with its observation, the skill the
analyzer wrote for it, the action the policy took, and how much the skill in the prompt raised or lowered that
action's log-probability (sum over the action's tokens of logp_skill - logp_old: A_skill before lambda)."""

from __future__ import annotations

import json
from typing import Sequence


def _clip(text: str, limit: int) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


def scored_steps(records: Sequence[dict]) -> list[tuple[dict, dict]]:
  """(trajectory, step) pairs whose step was scored with a skill."""
  return [(t, s) for t in records for s in t.get("steps", []) if s.get("skill_logp_delta") is not None]


def pick_examples(records: Sequence[dict], count: int = 3) -> list[tuple[dict, dict]]:
  """The steps the skill raised most and lowered most, then the largest remaining |change|; at most `count`."""
  steps = scored_steps(records)
  if not steps:
    return []
  by_delta = sorted(steps, key=lambda ts: ts[1]["skill_logp_delta"])
  picked = [by_delta[-1], by_delta[0]] if len(by_delta) > 1 else [by_delta[0]]
  rest = sorted(
    (ts for ts in steps if not any(ts is p for p in picked)), key=lambda ts: -abs(ts[1]["skill_logp_delta"])
  )
  return (picked + rest)[:count]


def _skill_text(step: dict) -> str:
  routed = step.get("routed_skill") or {}
  parts = [
    f"step skill: {routed['step']}" if routed.get("step") else "",
    f"episode skill: {routed['episode']}" if routed.get("episode") else "",
  ]
  return " / ".join(p for p in parts if p) or "-"


def example_steps_markdown(records: Sequence[dict], iteration: int, count: int = 3) -> str:
  """A markdown section with `count` example steps of one iteration's dump ('' when no step had a skill)."""
  examples = pick_examples(records, count)
  if not examples:
    return ""
  lines = [f"### What the skills said (iteration {iteration}, from trajectories/iter_{iteration:06d}.jsonl)", ""]
  for traj, step in examples:
    delta = step["skill_logp_delta"]
    verb = "raised" if delta >= 0 else "lowered"
    outcome = "won" if traj.get("won") else "lost"
    lines += [
      f"- **{_clip(traj.get('task', ''), 90)}** ({traj.get('task_type', '')}, episode {outcome}), step {step['index']}",
      f"  - observation: {_clip(step.get('observation', ''), 220)}",
      f"  - {_clip(_skill_text(step), 260)}",
      f"  - action: `{step.get('action', '')}` ({'valid' if step.get('valid') else 'invalid'})",
      f"  - the skill {verb} this action's log-probability by {abs(delta):.3f} nats; episode advantage "
      f"{step.get('episode_advantage', 0.0):+.3f}",
    ]
  return "\n".join(lines)


def last_dump(workdir: str) -> tuple[int, list[dict]] | None:
  """(iteration, records) of the newest trajectory dump in WORKDIR/trajectories, or None."""
  from etils import epath

  folder = epath.Path(workdir) / "trajectories"
  if not folder.exists():
    return None
  files = sorted(folder.glob("iter_*.jsonl"))
  if not files:
    return None
  iteration = int(files[-1].name[len("iter_") : -len(".jsonl")])
  return iteration, [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
