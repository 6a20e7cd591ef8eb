"""Study v2's report: the pre-registered plan (results/cpu_study_v2.md up to "## Results", word for word), then the
results computed from the study's pieces: the screening, E1's success tables, the primary contrasts with their
intervals and verdicts (only once every planned seed of a contrast has finished), curves with seed bands and cost."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np
import study_v2_lists as lists
import study_v2_skill_signal as skill_signal
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
    signal = self.path(piece, skill_signal.FILE)
    return {
      "rows": rows,
      "table": json.load(open(name + ".json")),
      "games": json.load(open(name + ".games.json")),
      "skill_signal": json.load(open(signal)) if os.path.exists(signal) else None,
    }


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


def collect(reader: Reader, pieces: dict[str, list[tuple[int, str]]]) -> dict:
  """variant -> {seed: finished run}, from {variant: [(seed, piece)]} (unfinished runs left out)."""
  return {
    v: {seed: r for seed, piece in planned if (r := reader.run(piece)) is not None} for v, planned in pieces.items()
  }


def success_table(runs: dict, initial, splits: list[str]) -> list[str]:
  labels = [("held-out train" if s == "train" else s) + " games" for s in splits]
  head = "| variant | seeds | whole list | " + " | ".join(labels)
  lines = [head + " | skill share | approx-KL | rollout success (last 3 it.) |", "|---" * (len(splits) + 6) + "|"]
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
  return lines


def contrast(runs: dict, variant: str, baseline: str, planned_seeds) -> tuple[str, float | None]:
  """One paired contrast's line, and the lower end of its 97.5 % t-interval (None until it can be computed)."""
  a, b = runs.get(variant, {}), runs.get(baseline, {})
  paired = [s for s in planned_seeds if s in a and s in b]
  name = f"{variant} − {baseline}"
  if len(paired) < len(planned_seeds):
    return f"- {name}: pending ({len(paired)} of {len(planned_seeds)} paired seeds finished).", None
  diffs = [a[s]["table"]["all"]["success"] - b[s]["table"]["all"]["success"] for s in paired]
  if len(diffs) < 2:
    return f"- {name}: {100 * diffs[0]:+.1f} points (one seed: no interval, no verdict).", None
  low, high = t_interval(diffs, 0.95)
  low_b, high_b = t_interval(diffs, 0.975)
  boot = paired_bootstrap([a[s]["games"] for s in paired], [b[s]["games"] for s in paired])
  line = (
    f"- {name}: {100 * np.mean(diffs):+.1f} points (per seed: "
    + ", ".join(f"{100 * d:+.1f}" for d in diffs)
    + f"); 95 % t-interval [{100 * low:+.1f}, {100 * high:+.1f}]; 97.5 % [{100 * low_b:+.1f}, {100 * high_b:+.1f}];"
    f" bootstrap 95 % [{100 * boot[0]:+.1f}, {100 * boot[1]:+.1f}]: **{verdict(low, high)}**."
  )
  return line, low_b


def e1_contrasts(runs: dict, planned_seeds) -> list[str]:
  results = [contrast(runs, v, "grpo", planned_seeds) for v in runs if v != "grpo"]
  lines = [line for line, _ in results]
  lows = [low for _, low in results]
  if lows and all(low is not None for low in lows):
    supported = any(low > 0 for low in lows)
    lines.append(
      "- E1 as a whole (H1): "
      + ("supported (a lambda's 97.5 % interval lies above 0)." if supported else "not supported at this power.")
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


def skill_signal_table(runs: dict) -> list[str]:
  """The skill term by kind of step, pooled over the seeds whose runs kept the summary."""
  lines = []
  for variant, seeds in runs.items():
    kept = {seed: r["skill_signal"] for seed, r in seeds.items() if r.get("skill_signal")}
    seeds_text = ", ".join(str(s) for s in sorted(kept))
    for kind, row in skill_signal.pooled(list(kept.values())).items():
      lines.append(
        f"| {variant} | {seeds_text} | {kind} | {row['steps']} | {row['mean']:+.2f} | {_pct(row['positive_share'])} |"
      )
  if not lines:
    return []
  return [
    "",
    "What the skill term said (training steps; the skill-conditioned log-probability of the sampled response minus "
    "the old policy's, summed over its tokens, lambda not applied):",
    "",
    "| variant | seeds | kind of step | steps | mean log-prob change (nats) | share raised (%) |",
    "|---|---|---|---|---|---|",
    *lines,
  ]


def band(seeds: dict, key: str):
  """study_report's seed mean and std per iteration; None when a seed never logged `key`."""
  from study_report import _train_curve

  if any(not any(key in r for r in s["rows"]) for s in seeds.values()):
    return None
  return _train_curve(seeds, key)


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


def cost(reader: Reader, evaluations: list[str], runs: dict[str, dict]) -> list[str]:
  """Wall time of the evaluation pieces and, per group of runs (label -> variant -> seeds), per run and phase."""
  lines = ["| piece | runs | wall min per run | " + " | ".join(f"{p} min" for p in PHASES) + " |"]
  lines.append("|---" * (len(PHASES) + 3) + "|")
  total = 0.0
  for piece in evaluations:
    path = reader.path(piece, "time.json")
    if os.path.exists(path):
      seconds = json.load(open(path))["seconds"]
      total += seconds
      lines.append(f"| {piece} | 1 | {seconds / 60:.1f} |" + " — |" * len(PHASES))
  for label, group in runs.items():
    for variant, seeds in group.items():
      if not seeds:
        continue
      per_run = [sum(r.get("time/step", 0.0) for r in s["rows"]) for s in seeds.values()]
      total += sum(per_run)
      phases = [np.mean([sum(r.get(f"time/{p}", 0.0) for r in s["rows"]) for s in seeds.values()]) for p in PHASES]
      lines.append(
        f"| {label} {variant} | {len(seeds)} | {np.mean(per_run) / 60:.1f} | "
        + " | ".join(f"{p / 60:.1f}" for p in phases)
        + " |"
      )
  return lines + ["", f"Total so far: {total / 3600:.2f} h of wall time (2 CPU cores)."]


def e2_section(reader: Reader, study, splits: list[str]) -> tuple[list[str], dict, dict]:
  """E2's tuning, lambda choice and comparison; (lines, {group label: runs}, runs of the comparison)."""
  from cpu_study_v2 import E2_VARIANTS, choose_lambda, e2_piece, gate

  initial_piece = os.path.join("e2", "tune", "initial")
  initial = reader.evaluation(initial_piece)
  if initial is None:
    return ["Not started: it follows E1 (see the plan)."], {}, {}
  p0, games = initial[0]["all"]["success"], len(initial[1])
  lines = [
    f"Tuning on {study.args.tune_split} ({games} games; SFT start {_pct(p0)} %), GRPO, seed 0:",
    "",
    "| run | settings | success % | minus SFT start | 3 standard errors | passes the gate |",
    "|---|---|---|---|---|---|",
  ]
  tuning = {}
  for name in ("T1", "T2", "T3", "T4", "T5", "T6"):
    piece = os.path.join("e2", "tune", name)
    if (run := reader.run(piece)) is None:
      continue
    tuning[name] = run
    p1 = run["table"]["all"]["success"]
    passes, se = gate(p1, p0, games)
    config = json.load(open(reader.path(piece, "config.json")))
    settings = (
      f"lr {config['optim']['lr']:g}, temperature {config['rollout']['temperature']:g}, "
      f"{config['rollout']['tasks_per_batch']} x {config['rollout']['group_size']}, {config['train']['steps']} it."
    )
    lines.append(
      f"| {name} | {settings} | {_pct(p1)} | {100 * (p1 - p0):+.1f} | {300 * se:.1f} | {'yes' if passes else 'no'} |"
    )
  passed = study.e2_settings(run_missing=False)
  if study.args.skip_gate:
    lines += ["", "The gate was skipped (--skip_gate): a machinery test, not a result."]
  if passed is None:
    verdict = (
      "No tuning run passed the gate: E2 stops here, as the plan says (no lambda runs, no comparison)."
      if "T6" in tuning  # T6 is the last tuning run
      else "No tuning run has passed the gate (yet)."
    )
    return lines + ["", verdict], {"E2 tuning": {"grpo": tuning}}, {}
  lines += ["", f"Passing settings: {passed[0]}.", "", "| lambda | success % |", "|---|---|"]
  lambdas = {}
  for lam in study.lambdas:
    if (run := reader.run(os.path.join("e2", "lambda", f"opid_l{lam:g}"))) is not None:
      lambdas[lam] = run
      lines.append(f"| {lam:g} | {_pct(run['table']['all']['success'])} |")
  groups = {"E2 tuning": {"grpo": tuning}, "E2 lambda": {"opid": lambdas}}
  if len(lambdas) < len(study.lambdas):
    return lines + ["", "Lambda runs pending."], groups, {}
  lam = choose_lambda({k: r["table"]["all"]["success"] for k, r in lambdas.items()})
  lines += ["", f"Chosen lambda: {lam:g}."]
  pieces = {v: [(s, e2_piece(v, s)) for s in range(study.e2_seeds[v])] for v in E2_VARIANTS}
  runs = collect(reader, pieces)
  e2_initial = reader.evaluation(os.path.join("e2", "initial"))
  lines += ["", *success_table(runs, e2_initial, splits), "", "Contrasts (whole E2 list, paired by seed):", ""]
  lines.append(contrast(runs, "opid", "grpo", range(study.e2_seeds["opid"]))[0])
  for ablation in ("episode_only", "step_only", "superimpose"):
    lines.append(contrast(runs, "opid", ablation, range(study.e2_seeds[ablation]))[0])
  if all(len(runs[v]) == study.e2_seeds[v] for v in runs):
    from study_report import PAPER, _kendall_tau, _order

    means = {v: float(np.mean([r["table"]["all"]["success"] for r in seeds.values()])) for v, seeds in runs.items()}
    lines.append(
      f"- Observed order {_order(means)}; the paper's {_order(PAPER)}; Kendall tau {_kendall_tau(means, PAPER):+.2f}."
    )
  lines += task_types(runs, e2_initial)
  lines += skill_signal_table(runs)
  groups["E2"] = runs
  return lines, groups, runs


def write_report(study) -> str:
  from cpu_study_v2 import E1_VARIANTS, e1_piece

  reader = Reader(study)
  out = study.args.report if not study.short else os.path.join(study.root, "cpu_study_v2.md")
  parts = [plan_text(), RESULTS_HEADING, ""]
  parts.append(f"Generated by `benchmarks/cpu_study_v2.py --stage=report` on {datetime.date.today().isoformat()}.")
  if study.short:
    parts.append("SHORT mode: tiny lists and one-iteration runs; these numbers test the machinery, nothing else.")
  commit = os.path.join(study.store, "code_commit.txt") if study.store else ""
  if commit and os.path.exists(commit):
    parts.append(f"Code: every piece ran from commit `{open(commit).read().split()[0][:12]}`.")
  splits = [study.args.train_split, *study.args.valid_splits]
  parts += ["", "### Screening (S)", "", *screening(reader, study.sizes), "", "### E1"]
  runs = collect(reader, {v: [(s, e1_piece(v, s)) for s in study.e1_seeds] for v in E1_VARIANTS})
  e1_initial = reader.evaluation(os.path.join("e1", "initial"))
  parts += ["", *success_table(runs, e1_initial, splits)]
  parts += ["", "Primary contrasts (success on the whole E1 list, paired by seed):", ""]
  parts += e1_contrasts(runs, study.e1_seeds)
  parts += task_types(runs, e1_initial)
  parts += skill_signal_table(runs)
  stem = os.path.splitext(out)[0]
  if plot(runs, stem + "_e1.png"):
    parts += ["", f"![E1 training curves]({os.path.basename(stem)}_e1.png)"]
  e2_lines, e2_groups, e2_runs = e2_section(reader, study, splits)
  parts += ["", "### E2", "", *e2_lines]
  if plot(e2_runs, stem + "_e2.png"):
    parts += ["", f"![E2 training curves]({os.path.basename(stem)}_e2.png)"]
  evaluations = [
    "screen",
    os.path.join("e1", "initial"),
    os.path.join("e2", "tune", "initial"),
    os.path.join("e2", "initial"),
  ]
  parts += ["", "### Cost", "", *cost(reader, evaluations, {"E1": runs, **e2_groups})]
  for heading, name, absent in (
    ("Deviations from the plan", "deviations.md", "None so far."),
    ("What limits the conclusion", "limits.md", "Written once E1's contrasts are in."),
  ):
    path = os.path.join(study.store or study.root, name)
    parts += ["", f"### {heading}", "", open(path).read().strip() if os.path.exists(path) else absent]
  with open(out, "w") as f:
    f.write("\n".join(parts) + "\n")
  return out
