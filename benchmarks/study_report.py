"""The CPU study's report: success tables (mean +- std over seeds, per split and per task type), steps to reach
GRPO's final success, episode length, wall time per run and phase, learning curves, and a computed verdict on
whether the paper's direction and ablation order hold. Reads only the run folders cpu_study.py wrote."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np

from opid_jax.training import curves

# ALFWorld, Qwen2.5-3B (the paper): the order the ablations should follow if the claim transfers.
PAPER = {"opid": 84.3, "episode_only": 79.1, "superimpose": 77.5, "grpo": 75.0, "step_only": 74.1}
PAPER_NAMES = {
  "opid": "OPID (critical-first)",
  "episode_only": "no step skills (episode_only)",
  "superimpose": "superimposed",
  "grpo": "GRPO",
  "step_only": "no episode skills (step_only)",
}
PHASES = ("rollout", "score", "update", "checkpoint", "eval")


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _fmt(values, scale: float = 100.0, digits: int = 1) -> str:
  if not len(values):
    return "—"
  mean, std = _mean_std(values)
  return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" if len(values) > 1 else f"{scale * mean:.{digits}f}"


def _initial(study) -> tuple[dict, dict]:
  """The SFT policy's evaluation (step 0): metrics keyed like the trainer's (eval/<split>/success ...), table."""
  path = os.path.join(study.root, "initial", "eval.json")
  if not os.path.exists(path):
    return {}, {}
  table = json.load(open(path))["table"]
  metrics = {f"eval/{k}": v for k, v in table["all"].items()}
  for name, row in table.items():
    if name.startswith("split:"):
      metrics.update({f"eval/{name[len('split:') :]}/{k}": v for k, v in row.items()})
  return metrics, table


def _eval_rows(run_dir: str, initial: dict) -> list[dict]:
  rows = [r for r in curves.read_run(run_dir) if "eval/success" in r]
  return ([{"step": 0, **initial}] if initial else []) + rows


def collect(study) -> dict:
  """variant -> seed -> {"evals": [eval rows], "rows": [all rows], "final_table": per-task-type table}."""
  initial, _ = _initial(study)
  runs: dict = {}
  for variant in study.args.variants:
    for seed in study.args.seeds:
      run_dir = study.run_dir(variant, seed)
      if not os.path.exists(os.path.join(run_dir, "summary.md")):
        continue  # unfinished runs are left out of the report (and listed as missing)
      rows = curves.read_run(run_dir)
      evals = _eval_rows(run_dir, initial)
      last = evals[-1]["step"]
      table_path = os.path.join(run_dir, "eval", f"iter_{last:06d}.json")
      table = json.load(open(table_path)) if os.path.exists(table_path) else {}
      runs.setdefault(variant, {})[seed] = {"evals": evals, "rows": rows, "final_table": table}
  return runs


def _curve(seeds: dict, key: str) -> tuple[list, list, list]:
  """Mean and std over seeds at the eval steps every seed has."""
  per_seed = [{r["step"]: r[key] for r in s["evals"] if key in r} for s in seeds.values()]
  steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
  values = [[p[step] for p in per_seed] for step in steps]
  return steps, [float(np.mean(v)) for v in values], [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]


def _final(seeds: dict, key: str) -> list[float]:
  return [s["evals"][-1][key] for s in seeds.values() if key in s["evals"][-1]]


def _kendall_tau(scores_a: dict, scores_b: dict) -> float:
  """Rank agreement of two score dicts over their common keys: +1 same order, -1 reversed; a tie in either counts 0."""
  common = [x for x in scores_a if x in scores_b]
  pairs = [(x, y) for i, x in enumerate(common) for y in common[i + 1 :]]
  if not pairs:
    return float("nan")
  return float(
    sum(np.sign(scores_a[x] - scores_a[y]) * np.sign(scores_b[x] - scores_b[y]) for x, y in pairs) / len(pairs)
  )


def _order(scores: dict) -> str:
  """'a > b = c': best first, exact ties joined by '='."""
  ranked = sorted(scores, key=lambda v: -scores[v])
  out = ranked[:1]
  for prev, v in zip(ranked, ranked[1:]):
    out += [" = " if abs(scores[prev] - scores[v]) < 1e-9 else " > ", v]
  return "".join(out)


def success_table(runs: dict) -> list[str]:
  lines = [
    "| variant | seeds | valid_seen | valid_unseen | both splits | eval episode length | train success (last 3 it.) |",
    "|---|---|---|---|---|---|---|",
  ]
  for variant, seeds in runs.items():
    train = [np.mean([r["success"] for r in s["rows"] if "success" in r][-3:]) for s in seeds.values()]
    lines.append(
      f"| {variant} | {len(seeds)} | {_fmt(_final(seeds, 'eval/valid_seen/success'))} | "
      f"{_fmt(_final(seeds, 'eval/valid_unseen/success'))} | {_fmt(_final(seeds, 'eval/success'))} | "
      f"{_fmt(_final(seeds, 'eval/episode_length'), 1.0)} | {_fmt(train)} |"
    )
  return lines


def task_type_table(runs: dict) -> list[str]:
  if not runs:
    return ["(no finished run yet)"]
  types = sorted(
    {
      t
      for seeds in runs.values()
      for s in seeds.values()
      for t in s["final_table"]
      if t != "all" and not t.startswith("split:")
    }
  )
  lines = ["| variant | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
  for variant, seeds in runs.items():
    cells = [_fmt([s["final_table"][t]["success"] for s in seeds.values() if t in s["final_table"]]) for t in types]
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return lines


def _train_curve(seeds: dict, key: str) -> tuple[list, np.ndarray, np.ndarray]:
  """Iterations, seed mean and seed std of a per-iteration training metric (over the iterations every seed has)."""
  per_seed = [[(r["step"], r[key]) for r in s["rows"] if key in r] for s in seeds.values()]
  length = min(len(p) for p in per_seed)
  values = np.array([[v for _, v in p[:length]] for p in per_seed], float)
  std = values.std(0, ddof=1) if len(values) > 1 else 0 * values[0]
  return [step for step, _ in per_seed[0][:length]], values.mean(0), std


def first_reaching(steps: list, values, target: float):
  """The first step whose value is >= target (None if none is)."""
  return next((s for s, v in zip(steps, values) if v >= target - 1e-12), None)


def steps_to_grpo(runs: dict, window: int = 3) -> list[str]:
  if "grpo" not in runs:
    return ["(no finished GRPO run yet)"]
  target = float(np.mean(_final(runs["grpo"], "eval/success")))
  _, grpo_train, _ = _train_curve(runs["grpo"], "success")
  train_target = float(np.mean(grpo_train[-window:]))
  lines = [
    f"GRPO's final success: {100 * target:.1f}% on both splits (greedy evaluation); {100 * train_target:.1f}% "
    f"in its rollouts (seed mean over its last {window} iterations).",
    "",
    "| variant | first evaluated iteration whose seed-mean success >= GRPO's final | first iteration whose "
    f"rollout success ({window}-iteration moving average, seed mean) >= GRPO's final |",
    "|---|---|---|",
  ]
  for variant, seeds in runs.items():
    steps, mean, _ = _curve(seeds, "eval/success")
    hit = first_reaching(steps, mean, target)
    train_steps, train, _ = _train_curve(seeds, "success")
    train_hit = first_reaching(train_steps, curves.moving_average(list(train), window), train_target)
    lines.append(
      f"| {variant} | {hit if hit is not None else 'not reached'} | "
      f"{train_hit if train_hit is not None else 'not reached'} |"
    )
  return lines


def time_table(runs: dict) -> tuple[list[str], float]:
  lines = [
    "| variant | runs | wall min per run | " + " | ".join(f"{p} min" for p in PHASES) + " |",
    "|---" * (len(PHASES) + 3) + "|",
  ]
  total = 0.0
  for variant, seeds in runs.items():
    per_run = [sum(r.get("time/step", 0.0) for r in s["rows"]) for s in seeds.values()]
    total += sum(per_run)
    phases = [np.mean([sum(r.get(f"time/{p}", 0.0) for r in s["rows"]) for s in seeds.values()]) / 60 for p in PHASES]
    lines.append(
      f"| {variant} | {len(seeds)} | {np.mean(per_run) / 60:.1f} | " + " | ".join(f"{v:.1f}" for v in phases) + " |"
    )
  return lines, total


def evaluation_se(p1: float, p2: float, episodes: int) -> float:
  """Binomial standard error of the difference of two success rates, each measured on `episodes` games: the noise
  of the evaluation itself (which games happen to be in the lists), separate from the seed-to-seed spread."""
  return float(np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / episodes))


def compare(runs: dict, a: str, b: str, episodes: int) -> str:
  """One verdict line for variant a - variant b on both splits. Resolved only with >= 2 seeds each and a gap larger
  than both the largest seed std and twice the evaluation's standard error."""
  fa, fb = _final(runs[a], "eval/success"), _final(runs[b], "eval/success")
  gap = 100 * (np.mean(fa) - np.mean(fb))
  spread = 100 * max(_mean_std(fa)[1], _mean_std(fb)[1])
  se = 100 * evaluation_se(float(np.mean(fa)), float(np.mean(fb)), episodes)
  n = min(len(fa), len(fb))
  if n < 2:
    judged = "one seed only: no statement about the direction is possible"
  elif abs(gap) <= max(spread, 2 * se):
    judged = "within the noise: not resolved at this scale"
  else:
    judged = f"{a} better" if gap > 0 else f"{b} better"
  return (
    f"- {a} - {b} on both splits: {gap:+.1f} points (largest seed std {spread:.1f}; evaluation standard error "
    f"of the difference {se:.1f}; {n} seed{'s' if n != 1 else ''}): {judged}."
  )


def verdict(runs: dict, episodes: int) -> list[str]:
  finals = {v: float(np.mean(_final(s, "eval/success"))) for v, s in runs.items() if _final(s, "eval/success")}
  lines = []
  if "opid" in finals:
    others = [v for v in ("grpo", "episode_only", "step_only", "superimpose") if v in finals]
    lines += [
      compare(runs, "opid", v, episodes).replace("- opid - grpo", "- OPID - GRPO (the paper's direction)")
      for v in others
    ]
  if len(finals) >= 3:
    paper = {v: PAPER[v] for v in finals if v in PAPER}
    lines.append(
      f"- Observed order: {_order(finals)}; paper's order: {_order(paper)}; Kendall tau "
      f"{_kendall_tau(finals, paper):+.2f} (+1: same order, -1: reversed, ties count 0). Gaps inside the "
      "noise above make the order itself noise."
    )
  return lines or ["- Not enough finished runs for a verdict."]


def sft_table(study, phases=()) -> list[str]:
  """Held-out NLL per response token of the expert action, with each kind of skill in the prompt, over SFT."""
  path = os.path.join(study.root, "sft", "metrics.jsonl")
  if not os.path.exists(path):
    return ["(SFT not run)"]
  rows = [r for r in curves.read_run(os.path.join(study.root, "sft")) if "heldout/nll_none" in r]
  seconds = sum(
    r.get("time/step", sum(v for k, v in r.items() if k.startswith("time/")))
    for r in curves.read_run(os.path.join(study.root, "sft"))
  )
  lines = [
    "| SFT step | held-out NLL, no skill | + episode skill | + step skill | train NLL |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['step']} | {r['heldout/nll_none']:.3f} | {r['heldout/nll_episode']:.3f} | "
      f"{r['heldout/nll_step']:.3f} | {r['sft/nll']:.3f} |"
    )
  return lines + [
    "",
    f"SFT wall time (update, checkpoints, held-out scoring): {seconds / 60:.0f} min; phases (each "
    f"resumes the last, the cosine schedule re-stretched over the new length): {', '.join(map(str, phases))} "
    "steps.",
  ]


def probe_table(study) -> list[str]:
  lines = ["| policy | skill | steps | expert shift (nats) | other shift | margin gain |", "|---|---|---|---|---|---|"]
  found = False
  labels = {"init_policy": "random init", "policy": "after SFT", "smollm2": "SmolLM2-135M-Instruct (reference)"}
  for name, label in labels.items():
    path = os.path.join(study.root, f"probe_{name}.json")
    if not os.path.exists(path):
      continue
    found = True
    report = json.load(open(path))
    for kind, row in report["kinds"].items():
      lines.append(
        f"| {label} | {kind} | {row['steps']} | {row['expert_shift']:+.2f} | {row['other_shift']:+.2f} | "
        f"{row['margin_gain']:+.2f} |"
      )
  return lines if found else ["(probe not run)"]


def _run_config(study, runs: dict) -> dict:
  """The config.json of one finished run (every run shares all but the seed and the OPID settings)."""
  for variant, seeds in runs.items():
    for seed in seeds:
      path = os.path.join(study.run_dir(variant, seed), "config.json")
      if os.path.exists(path):
        return json.load(open(path))
  return {}


def limits(study, runs: dict, episodes: int) -> list[str]:
  seeds = sorted({s for v in runs.values() for s in v})
  config = _run_config(study, runs)
  train, rollout = config.get("train", {}), config.get("rollout", {})
  finals = [f for seeds in runs.values() for f in _final(seeds, "eval/success")]
  p = float(np.mean(finals)) if finals else 0.1
  return [
    f"- Scale: a few-million-parameter policy trained from scratch (SFT on expert walkthroughs), "
    f"{train.get('steps', '?')} RL iterations of {rollout.get('tasks_per_batch', '?')} tasks x "
    f"{rollout.get('group_size', '?')} rollouts (history window {rollout.get('history_window', '?')}); the paper "
    "trains a 3B instruct model for 150 iterations of 16 x 8.",
    "- The analyzer is `expert`: skills come from the walkthrough (privileged, always right), not from an LLM "
    "reading the trajectory; the SFT data teaches the policy to read exactly these skill texts.",
    f"- Seeds: {len(seeds)} ({', '.join(map(str, seeds)) or 'none'}) finished per variant at most; "
    "differences smaller than the seed spread are not evidence either way.",
    f"- Evaluation is greedy on the full valid_seen (140) and valid_unseen (134) lists ({episodes} games) with a "
    f"{rollout.get('max_steps', '?')}-step cap, after iteration 0 (the shared SFT policy) and every "
    f"{train.get('eval_every', '?')} iterations. At {100 * p:.0f}% success (the runs' mean) one evaluation's "
    f"binomial standard error is {100 * np.sqrt(p * (1 - p) / max(episodes, 1)):.1f} points, so a difference "
    "between two variants needs several points to mean anything, whatever the seeds say.",
  ]


def _code_note(study) -> list[str]:
  """ROOT/code_commit.txt, when present, says which commit the runs ran from (first line) and why (the rest)."""
  path = os.path.join(study.root, "code_commit.txt")
  if not os.path.exists(path):
    return []
  commit, *why = open(path).read().strip().splitlines()
  return ["", f"Code: the runs ran from commit `{commit}`. " + " ".join(line.strip() for line in why)]


def _notes(study) -> list[str]:
  """ROOT/notes.md (hand-written history of the study, kept in the store), verbatim, when present."""
  path = os.path.join(study.root, "notes.md")
  return ["", open(path).read().strip()] if os.path.exists(path) else []


def write_report(study, lr: float, lam: float, tune_scores: dict) -> str:
  runs = collect(study)
  out = study.args.report if not study.short else os.path.join(study.root, "cpu_study.md")
  out = os.path.abspath(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  stem = os.path.splitext(out)[0]
  _, initial_table = _initial(study)
  episodes = int(initial_table.get("all", {}).get("episodes", 274))
  missing = [f"{v}_s{s}" for v in study.args.variants for s in study.args.seeds if s not in runs.get(v, {})]
  panels = {}
  for key, title in (
    ("eval/valid_seen/success", "valid_seen success (greedy, no skills)"),
    ("eval/valid_unseen/success", "valid_unseen success (greedy, no skills)"),
  ):
    panels[title] = {v: _curve(seeds, key) for v, seeds in runs.items()}
  curve_png = stem + "_eval.png"
  train_png = stem + "_train.png"
  if runs:
    curves.plot_mean_curves(panels, curve_png)
    train_panels = {"training success (rollouts, with sampling)": {}, "training episode length": {}}
    for v, seeds in runs.items():
      for key, title in (
        ("success", "training success (rollouts, with sampling)"),
        ("episode_length", "training episode length"),
      ):
        train_panels[title][v] = _train_curve(seeds, key)
    curves.plot_mean_curves(train_panels, train_png)
  times, total_seconds = time_table(runs)
  sft = os.path.join(study.root, "sft", "sft_summary.json")
  sft_info = json.load(open(sft)) if os.path.exists(sft) else {}
  lines = [
    "# CPU-scale OPID study on real ALFWorld games",
    "",
    f"Generated by `benchmarks/cpu_study.py` on {datetime.date.today().isoformat()} from {study.args.root}"
    f"{' (SHORT mode: a smoke test, not a result)' if study.short else ''}.",
    *_code_note(study),
    *_notes(study),
    "",
    f"Status: {sum(len(v) for v in runs.values())} of {len(study.args.variants) * len(study.args.seeds)} "
    f"runs finished{' (the study is in progress; the verdict below covers the finished runs only)' if missing else ''}.",
    "",
    "## Verdict (computed from the numbers below)",
    *verdict(runs, episodes),
    "",
    "## Success after training (greedy, no skills; mean ± std over seeds, %)",
    "",
    *success_table(runs),
    "",
    (
      f"Initial (SFT) policy, same evaluation: valid_seen "
      f"{100 * initial_table.get('split:valid_seen', {}).get('success', float('nan')):.1f}%, valid_unseen "
      f"{100 * initial_table.get('split:valid_unseen', {}).get('success', float('nan')):.1f}%."
      if initial_table
      else "Initial (SFT) policy: not evaluated yet."
    ),
    "",
    "## Success per task type (both splits, final evaluation, %)",
    "",
    *task_type_table(runs),
    "",
    "## Iterations to reach GRPO's final success",
    "",
    *steps_to_grpo(runs),
    "",
    "## SFT warm start (behaviour cloning on expert walkthrough steps)",
    "",
    *sft_table(study, study.sft_phases),
    "",
    "## Does the policy read skills? (`opid_jax.probe_skills`, first valid_seen games)",
    "",
    *probe_table(study),
    "",
    "## Learning curves",
    *(
      [f"![evaluation]({os.path.basename(curve_png)})", f"![training]({os.path.basename(train_png)})"]
      if runs
      else ["(no finished run yet)"]
    ),
    "",
    "## Tuning on valid_train only (final success of short OPID / GRPO runs, %)",
    "",
    "| run | valid_train success |",
    "|---|---|",
    *[f"| {k} | {100 * v:.1f} |" for k, v in sorted(tune_scores.items())],
    "",
    (
      f"Chosen: lr={lr:g} (best GRPO tuning run; every variant uses it), lambda_skill={lam:g} (best OPID tuning "
      "run at that lr; a tie goes to the smaller value, the one nearer the paper's 0.001). With 50 games a tie "
      "(equal success counts) says the tuning could not tell the values apart."
      if len(tune_scores) == 4 or study.short
      else f"Tuning not finished ({len(tune_scores)} of 4 runs); nothing is chosen yet."
    ),
    "",
    "## Cost",
    "",
    *times,
    "",
    f"Total RL wall time of the finished runs: {total_seconds / 3600:.2f} h; SFT: {sft_info.get('steps', '?')} "
    f"steps on {sft_info.get('train_examples', '?')} examples.",
    "",
    f"Missing (not finished yet): {', '.join(missing) if missing else 'none'}.",
    "",
    "## What limits the conclusion",
    *limits(study, runs, episodes),
  ]
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  return out
