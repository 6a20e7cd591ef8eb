"""Evaluation: the policy alone (no analyzer, no skills) on a fixed task list; metrics per task type."""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import numpy as np
import tqdm

from opid_jax.agent import rollout
from opid_jax.agent.pipelined_rollout import play_groups
from opid_jax.agent.trajectory import Trajectory


def trajectory_metrics(trajectories: Sequence[Trajectory], prefix: str = "") -> dict[str, float]:
  """Success, return, length and valid-action ratio over trajectories (and failures from faults)."""
  if not trajectories:
    return {}
  steps = [s for t in trajectories for s in t.steps]
  return {
    f"{prefix}success": float(np.mean([t.won for t in trajectories])),
    f"{prefix}return": float(np.mean([t.episode_return for t in trajectories])),
    f"{prefix}episode_length": float(np.mean([t.length for t in trajectories])),
    f"{prefix}valid_action_ratio": float(np.mean([s.valid for s in steps])) if steps else 0.0,
    f"{prefix}env_failures": float(sum(bool(t.failure_reason) for t in trajectories)),
  }


def split_of(task_id: str) -> str:
  """The split a task id names first (`valid_seen/...` -> `valid_seen`); '' for ids without one."""
  return task_id.split("/")[0] if "/" in task_id else ""


def first_per_split(task_ids: Sequence[str], count: int) -> list[str]:
  """The first `count` tasks of each split (in order; all of them when count <= 0)."""
  if count <= 0:
    return list(task_ids)
  taken: dict[str, int] = collections.defaultdict(int)
  out = []
  for task_id in task_ids:
    split = split_of(task_id)
    if taken[split] < count:
      taken[split] += 1
      out.append(task_id)
  return out


def per_task_type(trajectories: Sequence[Trajectory]) -> dict[str, dict[str, float]]:
  """Rows per task type, then (when the tasks come from several splits) one `split:<name>` row per split, then
  `all`."""
  groups: dict[str, list[Trajectory]] = collections.defaultdict(list)
  splits: dict[str, list[Trajectory]] = collections.defaultdict(list)
  for t in trajectories:
    groups[t.task_type].append(t)
    splits[split_of(t.task_id)].append(t)
  table = {name: {**trajectory_metrics(ts), "episodes": len(ts)} for name, ts in sorted(groups.items())}
  if len(splits) > 1:
    table.update({f"split:{name}": {**trajectory_metrics(ts), "episodes": len(ts)} for name, ts in splits.items()})
  table["all"] = {**trajectory_metrics(trajectories), "episodes": len(trajectories)}
  return table


def evaluate(
  pool,
  policy: Callable,
  tokenizer,
  agent: rollout.AgentSpec,
  task_ids: Sequence[str],
  max_prompt_tokens: int | None,
  truncation_side: str = "left",
  progress: bool = False,
) -> tuple[dict[str, dict[str, float]], list[Trajectory]]:
  """One episode per task; with `progress`, a bar on stderr counts finished games and the success so far."""
  bar = tqdm.tqdm(total=len(task_ids), desc="evaluation", unit="game", disable=not progress, dynamic_ncols=True)
  counts = {"won": 0, "done": 0}  # a disabled bar counts nothing

  def finished(trajectory: Trajectory) -> None:
    counts["won"] += bool(trajectory.won)
    counts["done"] += 1
    bar.update(1)
    bar.set_postfix_str(f"success {counts['won']}/{counts['done']} = {counts['won'] / counts['done']:.3f}")

  try:
    trajectories = play_groups(
      pool,
      policy,
      tokenizer,
      task_ids,
      1,
      agent,
      max_prompt_tokens=max_prompt_tokens,
      truncation_side=truncation_side,
      on_episode_end=finished,
    )
  finally:
    bar.close()
  return per_task_type(trajectories), trajectories


def markdown_table(table: dict[str, dict[str, float]]) -> str:
  cols = ("episodes", "success", "episode_length", "valid_action_ratio")
  lines = ["| task type | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, row in table.items():
    cells = [f"{row.get(c, 0):.0f}" if c == "episodes" else f"{row.get(c, 0):.3f}" for c in cols]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_table(
  folder: str,
  name: str,
  table: dict[str, dict[str, float]],
  report: dict | None = None,
  trajectories: Sequence[Trajectory] = (),
) -> None:
  """FOLDER/NAME.json (the `report` dict, or the table alone) and FOLDER/NAME.md (the markdown table); with
  trajectories also FOLDER/NAME.games.json, each game's outcome (for comparisons paired by game); local or gs://."""
  import json

  from etils import epath

  out = epath.Path(folder)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.json").write_text(json.dumps(report if report is not None else table, indent=2))
  (out / f"{name}.md").write_text(markdown_table(table) + "\n")
  if trajectories:
    (out / f"{name}.games.json").write_text(json.dumps(game_outcomes(trajectories), indent=0))


def game_outcomes(trajectories: Sequence[Trajectory]) -> dict[str, dict[str, float]]:
  """task id -> {"won": 0 or 1, "length": steps} (one episode per task, as `evaluate` plays them)."""
  return {t.task_id: {"won": int(bool(t.won)), "length": t.length} for t in trajectories}
