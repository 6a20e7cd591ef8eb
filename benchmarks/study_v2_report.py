"""Study v2's report: the pre-registered plan (results/cpu_study_v2.md up to "## Results", word for word), then the
results computed from the study's pieces: the screening, E1's success tables, the primary contrasts with their
intervals and verdicts (only once every planned seed of a contrast has finished), curves with seed bands and cost."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np
import study_v2_lists as lists
from scipy import stats

from opid_jax.envs.alfworld import TASK_TYPES, task_type_of
from opid_jax.training import curves

PLAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "cpu_study_v2.md")
RESULTS_HEADING = "## Results"
BOOTSTRAP_RESAMPLES = 10_000
CURVES = (("success", "rollout success"), ("ppo/approx_kl", "approx-KL"), ("adv/skill_share", "skill share"))
PHASES = ("rollout", "score", "update", "eval")


def plan_text() -> str:
  text = open(PLAN).read()
  return text[: text.index(RESULTS_HEADING)].rstrip() + "\n"


def _pct(x: float) -> str:
  return f"{100 * x:.1f}"


def _mean_std(values) -> str:
  if not len(values):
    return "—"
  values = 100 * np.asarray(values, float)
  return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def t_interval(diffs, confidence: float) -> tuple[float, float]:
  """The t-interval of the mean of paired differences (n - 1 degrees of freedom)."""
  diffs = np.asarray(diffs, float)
  half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
  return float(diffs.mean() - half), float(diffs.mean() + half)


def paired_bootstrap(a: list[dict], b: list[dict], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
  """95 % percentile interval of mean success(a) - mean success(b): seeds drawn with replacement, then games with
  replacement (the same games for both). a[i], b[i]: seed i's {game: won}, over the same games."""
  games = sorted(a[0])
  won_a = np.array([[s[g]["won"] for g in games] for s in a], float)
  won_b = np.array([[s[g]["won"] for g in games] for s in b], float)
  rng = np.random.default_rng(seed)
  seeds = rng.integers(0, len(a), size=(resamples, len(a)))
  picks = rng.integers(0, len(games), size=(resamples, len(games)))
  diff = won_a - won_b  # [seeds, games]
  means = np.array([diff[s][:, p].mean() for s, p in zip(seeds, picks)])
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def verdict(low: float, high: float) -> str:
  if low > 0:
    return "for OPID"
  if high < 0:
    return "against OPID"
  return "unresolved at this power"


class Reader:
  def __init__(self, study):
    self.study = study

  def path(self, *parts) -> str:
    return os.path.join(self.study.root, *parts)

  def evaluation(self, piece: str) -> tuple[dict, dict] | None:
    """(table, {game: outcome}) of a finished evaluation piece, or None."""
    if not os.path.exists(self.path(piece, "eval.json")):
      return None
    return json.load(open(self.path(piece, "eval.json")))["table"], self.study.outcomes(piece)

  def run(self, piece: str) -> dict | None:
    """A finished run: its metrics rows, final table and per-game outcomes."""
    if not os.path.exists(self.path(piece, "summary.md")):
      return None
    rows = curves.read_run(self.path(piece))
    last = max(r["step"] for r in rows if "eval/success" in r)
    name = self.path(piece, "eval", f"iter_{last:06d}")
    return {"rows": rows, "table": json.load(open(name + ".json")), "games": json.load(open(name + ".games.json"))}


def screening(reader: Reader, sizes) -> list[str]:
  found = reader.evaluation("screen")
  if found is None:
    return ["Not run yet."]
  _, games = found
  chosen = lists.e1_types(games, sizes)
  lines = ["| task type | games | successes | success % | joins E1 |", "|---|---|---|---|---|"]
  for t in TASK_TYPES:
    won = [g["won"] for task_id, g in games.items() if task_type_of(task_id) == t]
    lines.append(
      f"| {t} | {len(won)} | {sum(won)} | {_pct(np.mean(won)) if won else '—'} | {'yes' if t in chosen else 'no'} |"
    )
  lines += ["", f"E1's task types: {', '.join(chosen) if chosen else 'none (E1 is not run)'}."]
  return lines


def _split_success(table: dict, split: str) -> float | None:
  row = table.get(f"split:{split}")
  return row["success"] if row else None


def _metric_mean(rows: list[dict], key: str, last: int | None = None) -> float:
  values = [r[key] for r in rows if key in r]
  return float(np.mean(values[-last:] if last else values)) if values else float("nan")


def e1_section(reader: Reader, study) -> tuple[list[str], dict]:
  from cpu_study_v2 import E1_VARIANTS, e1_piece

  initial = reader.evaluation(os.path.join("e1", "initial"))
  runs = {
    v: {s: r for s in study.args.seeds if (r := reader.run(e1_piece(v, s))) is not None}
    for v in study.args.variants
    if v in E1_VARIANTS
  }
  splits = [study.args.train_split, *study.args.valid_splits]
  head = "| variant | seeds | whole list | " + " | ".join(f"{s} games" for s in splits)
  lines = [
    head + " | skill share | approx-KL | rollout success (last 3 it.) |",
    "|---" * (len(splits) + 6) + "|",
  ]
  if initial:
    table, _ = initial
    cells = [_pct(x) if (x := _split_success(table, s)) is not None else "—" for s in splits]
    lines.append(f"| SFT start | — | {_pct(table['all']['success'])} | " + " | ".join(cells) + " | — | — | — |")
  for variant, seeds in runs.items():
    if not seeds:
      lines.append(f"| {variant} | 0 | — |" + " — |" * (len(splits) + 3))
      continue
    finals = [r["table"] for r in seeds.values()]
    cells = [_mean_std([x for t in finals if (x := _split_success(t, s)) is not None]) for s in splits]
    share = [_metric_mean(r["rows"], "adv/skill_share") for r in seeds.values()]
    kl = [_metric_mean(r["rows"], "ppo/approx_kl") for r in seeds.values()]
    rollout = [_metric_mean(r["rows"], "success", last=3) for r in seeds.values()]
    lines.append(
      f"| {variant} | {len(seeds)} | {_mean_std([t['all']['success'] for t in finals])} | "
      + " | ".join(cells)
      + f" | {_mean_std(share)} | {np.mean(kl):.1e} | {_mean_std(rollout)} |"
    )
  lines += ["", "Success in %, mean ± std over seeds; skill share: the skill term's share of the advantage mass."]
  return lines, runs


def contrasts(runs: dict, planned_seeds: list[int]) -> list[str]:
  lines = []
  grpo = runs.get("grpo", {})
  supports = False
  for variant, seeds in runs.items():
    if variant == "grpo":
      continue
    paired = [s for s in planned_seeds if s in seeds and s in grpo]
    if len(paired) < len(planned_seeds):
      lines.append(f"- {variant} − grpo: pending ({len(paired)} of {len(planned_seeds)} paired seeds finished).")
      continue
    diffs = [seeds[s]["table"]["all"]["success"] - grpo[s]["table"]["all"]["success"] for s in paired]
    if len(diffs) < 2:
      lines.append(f"- {variant} − grpo: {100 * diffs[0]:+.1f} points (one seed: no interval, no verdict).")
      continue
    low, high = t_interval(diffs, 0.95)
    low_b, high_b = t_interval(diffs, 0.975)
    boot = paired_bootstrap([seeds[s]["games"] for s in paired], [grpo[s]["games"] for s in paired])
    supports |= low_b > 0
    lines.append(
      f"- {variant} − grpo: {100 * np.mean(diffs):+.1f} points (per seed: "
      + ", ".join(f"{100 * d:+.1f}" for d in diffs)
      + f"); 95 % t-interval [{100 * low:+.1f}, {100 * high:+.1f}]; 97.5 % [{100 * low_b:+.1f}, {100 * high_b:+.1f}];"
      f" bootstrap 95 % [{100 * boot[0]:+.1f}, {100 * boot[1]:+.1f}]: **{verdict(low, high)}**."
    )
  complete = lines and not any("pending" in line or "one seed" in line for line in lines)
  if complete:
    lines.append(
      "- E1 as a whole (H1): "
      + ("supported (a lambda's 97.5 % interval lies above 0)." if supports else "not supported at this power.")
    )
  return lines or ["(no finished run yet)"]


def task_types(runs: dict, initial) -> list[str]:
  types = sorted({t for seeds in runs.values() for r in seeds.values() for t in r["table"] if t in TASK_TYPES})
  if len(types) < 2:
    return []
  lines = ["| variant | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
  if initial:
    lines.append("| SFT start | " + " | ".join(_pct(initial[0][t]["success"]) for t in types) + " |")
  for variant, seeds in runs.items():
    cells = [_mean_std([r["table"][t]["success"] for r in seeds.values() if t in r["table"]]) for t in types]
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return ["", "Success per task type (whole list, %):", "", *lines]


def band(seeds: dict, key: str):
  per_seed = [[(r["step"], r[key]) for r in s["rows"] if key in r] for s in seeds.values()]
  length = min(len(p) for p in per_seed)
  if not length:
    return None
  values = np.array([[v for _, v in p[:length]] for p in per_seed], float)
  std = values.std(0, ddof=1) if len(values) > 1 else np.zeros(length)
  return [step for step, _ in per_seed[0][:length]], values.mean(0), std


def plot(runs: dict, out: str) -> bool:
  panels = {}
  for key, title in CURVES:
    lines = {v: b for v, seeds in runs.items() if seeds and (b := band(seeds, key)) is not None}
    if lines:
      panels[title] = lines
  if not panels:
    return False
  curves.plot_mean_curves(panels, out)
  return True


def cost(reader: Reader, runs: dict) -> list[str]:
  lines = ["| piece | runs | wall min per run | " + " | ".join(f"{p} min" for p in PHASES) + " |"]
  lines.append("|---" * (len(PHASES) + 3) + "|")
  total = 0.0
  for piece in ("screen", os.path.join("e1", "initial")):
    path = reader.path(piece, "time.json")
    if os.path.exists(path):
      seconds = json.load(open(path))["seconds"]
      total += seconds
      lines.append(f"| {piece} | 1 | {seconds / 60:.1f} |" + " — |" * len(PHASES))
  for variant, seeds in runs.items():
    if not seeds:
      continue
    per_run = [sum(r.get("time/step", 0.0) for r in s["rows"]) for s in seeds.values()]
    total += sum(per_run)
    phases = [np.mean([sum(r.get(f"time/{p}", 0.0) for r in s["rows"]) for s in seeds.values()]) for p in PHASES]
    lines.append(
      f"| {variant} | {len(seeds)} | {np.mean(per_run) / 60:.1f} | "
      + " | ".join(f"{p / 60:.1f}" for p in phases)
      + " |"
    )
  return lines + ["", f"Total so far: {total / 3600:.2f} h of wall time (2 CPU cores)."]


def write_report(study) -> str:
  reader = Reader(study)
  out = study.args.report if not study.args.short else os.path.join(study.root, "cpu_study_v2.md")
  parts = [plan_text(), RESULTS_HEADING, ""]
  parts.append(f"Generated by `benchmarks/cpu_study_v2.py --stage=report` on {datetime.date.today().isoformat()}.")
  if study.args.short:
    parts.append("SHORT mode: tiny lists and one-iteration runs; these numbers test the machinery, nothing else.")
  commit = os.path.join(study.store, "code_commit.txt") if study.store else ""
  if commit and os.path.exists(commit):
    parts.append(f"Code: every piece ran from commit `{open(commit).read().split()[0][:12]}`.")
  parts += ["", "### Screening (S)", "", *screening(reader, study.sizes), "", "### E1"]
  section, runs = e1_section(reader, study)
  parts += ["", *section, "", "Primary contrasts (success on the whole E1 list, paired by seed):", ""]
  parts += contrasts(runs, study.args.seeds)
  parts += task_types(runs, reader.evaluation(os.path.join("e1", "initial")))
  figure = os.path.splitext(out)[0] + "_e1.png"
  if plot(runs, figure):
    parts += ["", f"![E1 training curves]({os.path.basename(figure)})"]
  parts += ["", "### Cost", "", *cost(reader, runs)]
  deviations = os.path.join(study.store or study.root, "deviations.md")
  parts += ["", "### Deviations from the plan", ""]
  parts.append(open(deviations).read().strip() if os.path.exists(deviations) else "None so far.")
  parts += ["", "### E2", "", "Not started: it follows E1 (see the plan)."]
  with open(out, "w") as f:
    f.write("\n".join(parts) + "\n")
  return out
