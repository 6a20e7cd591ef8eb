"""The closing summary of a run, from its metrics.jsonl: before/after success, skills, analyzer faults, time."""

from __future__ import annotations

from typing import Sequence


def _first(rows, key):
  return next((r[key] for r in rows if r.get(key) is not None), None)


def _last(rows, key):
  return next((r[key] for r in reversed(rows) if r.get(key) is not None), None)


def _fmt(value, digits=3) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def binomial_se(rate: float, n: int) -> float:
  """The standard error of a success rate measured on n independent games: sqrt(p (1 - p) / n)."""
  return (rate * (1.0 - rate) / n) ** 0.5 if n > 0 else float("nan")


def _eval_success(row: dict) -> str:
  """`0.125 ± 0.068 (n=24)`: an evaluation's success with its binomial standard error, so noise reads as noise."""
  rate, n = row.get("eval/success"), int(row.get("eval/episodes") or 0)
  if rate is None:
    return "-"
  return f"{rate:.3f} ± {binomial_se(rate, n):.3f} (n={n})" if n else f"{rate:.3f}"


def summary_rows(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
  """(metric, before, after) rows. Before/after come from evaluations when the run made them, else from
  the first and last training iterations."""
  train_rows = [r for r in rows if r.get("step", 0) > 0 and "success" in r]
  evals = [r for r in rows if r.get("eval/success") is not None]
  out = []
  for key, label in (
    ("success", "success rate"),
    ("valid_action_ratio", "valid-action ratio"),
    ("episode_length", "episode length"),
  ):
    if len(evals) >= 2 and key == "success":
      out.append((f"{label} (eval ± binomial SE)", _eval_success(evals[0]), _eval_success(evals[-1])))
    elif len(evals) >= 2:
      out.append((f"{label} (eval)", _fmt(evals[0].get(f"eval/{key}")), _fmt(evals[-1].get(f"eval/{key}"))))
    out.append((f"{label} (training rollouts)", _fmt(_first(train_rows, key)), _fmt(_last(train_rows, key))))
  coverage = [r["adv/skill_coverage"] for r in train_rows if r.get("adv/skill_coverage") is not None]
  share = [r["adv/skill_share"] for r in train_rows if r.get("adv/skill_share") is not None]
  out.append(("skill coverage (mean)", "", _fmt(sum(coverage) / len(coverage)) if coverage else "-"))
  mean_share = sum(share) / len(share) if share else None
  out.append(("episode advantage share (mean)", "", _fmt(None if mean_share is None else 1.0 - mean_share, 4)))
  out.append(("skill advantage share (mean)", "", _fmt(mean_share, 4)))
  successes = [r["success"] for r in train_rows]
  out.append(("training success per iteration", "", " ".join(f"{s:.2f}" for s in successes) or "-"))
  failures = sum(r.get("analyzer/final_failures", 0) or 0 for r in train_rows)
  calls = sum(r.get("analyzer/trajectories", 0) or 0 for r in train_rows)
  out.append(("analyzer failures / trajectories", "", f"{failures} / {calls}"))
  phases = sorted({k for r in rows for k in r if k.startswith("time/") and k != "time/step"})
  for key in phases:
    out.append((f"seconds in {key[5:]}", "", f"{sum(r.get(key, 0) or 0 for r in rows):.1f}"))
  return out


def summary_table(rows: Sequence[dict]) -> str:
  lines = ["| metric | before | after |", "|---|---|---|"]
  lines += [f"| {m} | {b} | {a} |" for m, b, a in summary_rows(rows)]
  return "\n".join(lines)
