"""Learning curves of runs from their metrics.jsonl files: overlays per run, and mean curves with seed bands."""

from __future__ import annotations

import json
import os

from opid_jax.errors import UserError
from opid_jax.training.summary import binomial_se

PANELS = (
  ("success", "success rate"),
  ("episode_length", "episode length"),
  ("valid_action_ratio", "valid-action ratio"),
  ("adv/skill_share", "skill advantage share"),
)


def read_run(run_dir: str) -> list[dict]:
  from etils import epath

  path = epath.Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    raise UserError(f"{path} not found: is {run_dir} a training run directory?")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def moving_average(values: list[float], window: int) -> list[float]:
  out = []
  for i in range(len(values)):
    chunk = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
    out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
  return out


def plot_runs(run_dirs: list[str], out: str, smooth: int = 1) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
  for run_dir in run_dirs:
    rows = read_run(run_dir)
    label = os.path.basename(os.path.normpath(run_dir))
    steps = [r["step"] for r in rows]
    for ax, (key, title) in zip(axes, PANELS):
      values = [r.get(key) for r in rows]
      (line,) = ax.plot(steps, moving_average(values, smooth), label=label)
      if key == "success":
        evals = [r for r in rows if r.get("eval/success") is not None]
        if evals:
          x, y = [r["step"] for r in evals], [r["eval/success"] for r in evals]
          se = [binomial_se(r["eval/success"], int(r.get("eval/episodes") or 0)) for r in evals]
          se = [0.0 if s != s else s for s in se]  # unknown n: no bar
          ax.errorbar(x, y, yerr=se, fmt="o", capsize=3, color=line.get_color(), label=f"{label} (eval ± SE)")
  for ax, (_, title) in zip(axes, PANELS):
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plot_mean_curves(
  panels: dict[str, dict[str, tuple[list, list, list]]], out: str, xlabel: str = "iteration"
) -> None:
  """One panel per title; in each, one line per label with a +-1 std band: {title: {label: (x, mean, std)}}
  (e.g. evaluation success over seeds, per variant)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
  for ax, (title, lines) in zip(axes[0], panels.items()):
    for label, (x, mean, std) in lines.items():
      mean, std = np.asarray(mean, float), np.asarray(std, float)
      (line,) = ax.plot(x, mean, marker="o", markersize=3, label=label)
      ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
