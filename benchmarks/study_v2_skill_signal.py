"""What OPID's skill term said, by kind of step: one run's trajectory dumps -> RUN/skill_signal.json.

Each dumped step of an OPID run carries `skill_logp_delta`, the skill-conditioned log-probability of the sampled
response minus the old policy's (summed over the response's tokens; lambda not applied). Steps fall into four
kinds: a step skill was routed and the agent took the very action it names (the `expert` analyzer's step skills
read "Do 'ACTION' now: ..."), a step skill was routed and the agent did something else, a step skill names no
action (free text, e.g. an LLM analyzer's), or only the episode skill was routed. If the skill-conditioned policy
reads its skill, the first kind is pushed up and the second down; an uninformative teacher gives both the same sign.
The store keeps no trajectory dumps, so this summary is what lasts.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

FILE = "skill_signal.json"
KINDS = ("step skill, its action taken", "step skill, another action", "step skill, free text", "episode skill only")
_NAMED_ACTION = re.compile(r"^Do '(.+?)' now")


def step_kind(step: dict) -> str | None:
  """The kind of a dumped step, or None when no skill was routed to it."""
  if step.get("skill_logp_delta") is None:
    return None
  skill = (step.get("routed_skill") or {}).get("step")
  if not skill:
    return KINDS[3]
  named = _NAMED_ACTION.match(skill)
  if named is None:
    return KINDS[2]
  return KINDS[0] if named.group(1) == step.get("action") else KINDS[1]


def summarize(trajectories: list[dict]) -> dict[str, dict]:
  """Kind -> count, mean, median and share of positive log-probability deltas (kinds with no steps left out)."""
  deltas: dict[str, list[float]] = {k: [] for k in KINDS}
  for trajectory in trajectories:
    for step in trajectory.get("steps", []):
      kind = step_kind(step)
      if kind is not None:
        deltas[kind].append(float(step["skill_logp_delta"]))
  return {
    kind: {
      "steps": len(v),
      "mean": float(np.mean(v)),
      "median": float(np.median(v)),
      "positive_share": float(np.mean(np.asarray(v) > 0)),
    }
    for kind, v in deltas.items()
    if v
  }


def write(run_dir: str) -> bool:
  """Writes RUN/skill_signal.json from RUN/trajectories/*.jsonl; False when the run dumped no skilled steps."""
  trajectories = []
  for path in sorted(glob.glob(os.path.join(run_dir, "trajectories", "*.jsonl"))):
    with open(path) as f:
      trajectories += [json.loads(line) for line in f if line.strip()]
  summary = summarize(trajectories)
  if not summary:
    return False
  with open(os.path.join(run_dir, FILE), "w") as f:
    json.dump(summary, f, indent=1)
  return True


def pooled(summaries: list[dict[str, dict]]) -> dict[str, dict]:
  """Several runs' summaries pooled step-weighted (medians are not poolable and are left out)."""
  out = {}
  for kind in KINDS:
    parts = [s[kind] for s in summaries if kind in s]
    n = sum(p["steps"] for p in parts)
    if n:
      out[kind] = {
        "steps": n,
        "mean": sum(p["mean"] * p["steps"] for p in parts) / n,
        "positive_share": sum(p["positive_share"] * p["steps"] for p in parts) / n,
      }
  return out
