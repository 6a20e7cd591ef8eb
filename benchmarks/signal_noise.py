"""The bfloat16 noise floor of OPID's skill signal, against the signal, on real ALFWorld steps.

  python benchmarks/signal_noise.py [--policy=small|smollm2|both] [--quick] [--cache=/tmp/opid_step_samples] [--out=FILE]

The skill advantage is A_skill = logp(response | prompt + skill) - logp(response | prompt) per token (times lambda).
Scoring in bfloat16 can move log-probs when nothing but the batch layout changes. Per policy (the small SFT policy;
SmolLM2-135M-Instruct), loaded with bfloat16 compute (loading.load(path, dtype="bfloat16")):

- Signal: the trajectories benchmarks/step.py harvests (same cache), analyzed by the expert analyzer, routed with
  critical_first; every routed step's no-skill and skill prompt scored in float32 (the bf16 model's parameters run by
  a float32 graph, scaffold.graphdef_in_dtype), each pair in one packed row as the trainer does. Signal = mean
  |A_skill| per token.
- Noise: the same samples (both prompts of each pair) scored with the same parameters in several layouts: packed as
  the trainer packs them (the reference: pairs share a row), packed by length alone (other neighbours), packed with
  mismatched pairs (other neighbours and positions), rows twice as long, each sample alone in its row, and the padded
  path with the config's and a smaller micro-batch. Noise = |logp(layout) - logp(reference)| per token: max, mean.
  Once with bfloat16 compute, once with the float32 graph.
- Also: mean |A_skill(bf16, pairs in a row) - A_skill(float32)| per token, the error of the skill signal itself.

The issue's threshold: float32 becomes the skill passes' default when the bf16 noise exceeds 10 % of the signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step  # noqa: E402  (benchmarks/step.py: harvesting, settings; it puts the repo root on sys.path)

THRESHOLD = 0.10
# Per policy: routed steps (pairs) measured (--quick: every routed step of the quick harvest), and whether float32
# scoring runs in every layout or only in FEW_LAYOUTS (SmolLM2 compiles each new shape for ~30 s here).
PAIRS = {"small": 32, "smollm2": 6}
ALL_F32_LAYOUTS = {"small": True, "smollm2": False}
FEW_LAYOUTS = 3  # the reference, packed by length, each sample alone


def layouts(config, scoring_packing, pairs: int) -> dict:
  """name -> (Scorer keyword arguments, units over the 2 * pairs samples or None, one call per sample?)."""
  from opid_jax.rl.scoring import Packing

  p = scoring_packing
  trainer_units = [[i, pairs + i] for i in range(pairs)]
  shifted_units = [[i, pairs + (i + 1) % pairs] for i in range(pairs)] if pairs > 1 else trainer_units
  return {
    "packed, pairs in a row (reference)": (dict(packing=p), trainer_units, False),
    "packed by length (other neighbours)": (dict(packing=p), None, False),
    "packed, each sample alone": (dict(packing=p), None, True),
    "packed, mismatched pairs": (dict(packing=p), shifted_units, False),
    "packed, rows 2x longer": (dict(packing=Packing(2 * p.pack_length, p.micro_batch_tokens)), trainer_units, False),
    f"padded, micro-batch {config.train.score_micro_batch}": (
      dict(micro_batch=config.train.score_micro_batch),
      None,
      False,
    ),
    "padded, micro-batch 2": (dict(micro_batch=2), None, False),
  }


def score_layouts(loaded, config, graphdef, prompts, responses, pairs: int, few: bool = False) -> dict:
  """layout name -> per-sample float32 log-prob arrays (`few`: the first FEW_LAYOUTS layouts only)."""
  import numpy as np

  from opid_jax.rl.scoring import Packing, Scorer
  from opid_jax.training import rl_trainer

  packing = Packing(rl_trainer.pack_length(config), config.train.score_micro_batch_tokens)
  common = dict(
    prompt_buckets=step.prompt_buckets(config),
    response_buckets=config.train.response_buckets,
    truncate_left=config.rollout.truncation_side == "left",
    graphdef=graphdef,
  )
  temperature = config.rollout.temperature
  out = {}
  chosen = list(layouts(config, packing, pairs).items())
  for name, (kwargs, units, alone) in chosen[:FEW_LAYOUTS] if few else chosen:
    scorer = Scorer(loaded.model, loaded.pad_id, **common, **kwargs)
    if alone:
      logp = [scorer.score([p], [r], temperature=temperature).logprobs[0] for p, r in zip(prompts, responses)]
    else:
      logp = scorer.score(prompts, responses, temperature=temperature, units=units).logprobs
    out[name] = [np.asarray(x, np.float64) for x in logp]
  return out


def deltas(by_layout: dict) -> dict:
  """layout -> (max, mean) |logp - logp(reference)| per token, and 'all layouts' over every non-reference one."""
  import numpy as np

  names = list(by_layout)
  ref = np.concatenate(by_layout[names[0]])
  rows, every = {}, []
  for name in names[1:]:
    d = np.abs(np.concatenate(by_layout[name]) - ref)
    every.append(d)
    rows[name] = (float(d.max()), float(d.mean()))
  d = np.concatenate(every)
  rows["all layouts"] = (float(d.max()), float(d.mean()))
  return rows


def skill_advantages(logp: list, pairs: int):
  import numpy as np

  return np.concatenate([logp[pairs + i] - logp[i] for i in range(pairs)])


def _only_teacher(teachers):
  """A step's one skill-augmented prompt, or None (skill_prompt_ids gives a list of teacher prompts per step)."""
  if not teachers:
    return None
  if isinstance(teachers[0], int):  # a single prompt (the earlier form of skill_prompt_ids)
    return list(teachers)
  if len(teachers) != 1:
    raise ValueError(f"critical_first routed {len(teachers)} teacher prompts to one step")
  return list(teachers[0])


def run_policy(name: str, args) -> dict:
  import numpy as np

  from opid_jax.rl import opid_samples
  from opid_jax.skills.backends import make_backend
  from opid_jax.training import rl_trainer, scaffold

  config = step.policy_config(name, args.data_dir, args.split, args.attention)
  setting = step.POLICIES[name]
  h = dataclasses.replace(setting.quick if args.quick else setting.harvest, temperature=args.temperature)
  h = dataclasses.replace(h, tasks=args.tasks or h.tasks, max_steps=args.max_steps or h.max_steps)
  trajectories = step.harvest(name, config, h, args.cache)  # plays with the config's (float32) model if not cached
  loaded = step.load_policy(config, dtype="bfloat16")
  param_dtype = str(loaded.model.embed[...].dtype)
  f32_graph = scaffold.graphdef_in_dtype(loaded.model, "float32")

  with make_backend("expert", max_step_skills=5) as analyzer:
    analyses = analyzer.analyze_many(trajectories)
  settings = opid_samples.OpidSettings(
    lambda_skill=1.0,
    routing="critical_first",
    max_prompt_tokens=config.rollout.max_prompt_tokens,
    truncation_side=config.rollout.truncation_side,
  )
  # Per step: its teacher prompts (critical_first routes one skill, or none, to a step).
  skill_ids = [
    _only_teacher(t) for t in opid_samples.skill_prompt_ids(trajectories, analyses, loaded.tokenizer, settings)
  ]
  prompts, responses = step.step_pairs(trajectories)
  routed = [i for i, ids in enumerate(skill_ids) if ids is not None]
  if not routed:
    raise SystemExit(f"[{name}] no step was routed a skill")
  chosen = [routed[j] for j in step.subset(len(routed), 0 if args.quick else args.pairs or PAIRS[name])]
  pairs = len(chosen)
  all_prompts = [prompts[i] for i in chosen] + [skill_ids[i] for i in chosen]
  all_responses = [responses[i] for i in chosen] * 2
  tokens = sum(len(responses[i]) for i in chosen)
  row = rl_trainer.pack_length(config)
  fit = sum(len(prompts[i]) + len(skill_ids[i]) + 2 * len(responses[i]) <= row for i in chosen)
  print(
    f"[{name}] {len(prompts)} steps, {len(routed)} routed a skill; measuring {pairs} pairs ({tokens} response tokens "
    f"each side), parameters {param_dtype}; {fit} of the {pairs} pairs fit one packed row of {row} tokens (packing.pack "
    "splits a longer pair over two rows)",
    flush=True,
  )
  result = dict(policy=name, harvest=dataclasses.asdict(h), steps=len(prompts), routed=len(routed), pairs=pairs)
  result.update(pack_length=row, pairs_in_one_row=fit)
  result.update(response_tokens=tokens, param_dtype=param_dtype, compute={})
  advantages = {}
  for compute, graphdef in (("bfloat16", None), ("float32", f32_graph)):
    start = time.perf_counter()
    few = compute == "float32" and not (args.all_f32_layouts or ALL_F32_LAYOUTS[name])
    by_layout = score_layouts(loaded, config, graphdef, all_prompts, all_responses, pairs, few=few)
    result["compute"][compute] = deltas(by_layout)
    advantages[compute] = skill_advantages(next(iter(by_layout.values())), pairs)
    print(f"[{name}] {compute} scoring in {len(by_layout)} layouts: {time.perf_counter() - start:.0f} s", flush=True)
  signal = float(np.abs(advantages["float32"]).mean())
  result.update(
    signal_mean_abs=signal,
    signal_median_abs=float(np.median(np.abs(advantages["float32"]))),
    signal_max_abs=float(np.abs(advantages["float32"]).max()),
    bf16_skill_error_mean=float(np.abs(advantages["bfloat16"] - advantages["float32"]).mean()),
    bf16_skill_error_max=float(np.abs(advantages["bfloat16"] - advantages["float32"]).max()),
  )
  return result


def tables(results: list[dict]) -> str:
  lines = ["### Noise: |logp(layout) - logp(pairs in a row)| per token, same samples, same parameters\n"]
  lines += ["| policy | compute | layout | max | mean |", "|---|---|---|---|---|"]
  for res in results:
    for compute, rows in res["compute"].items():
      for layout, (mx, mean) in rows.items():
        lines.append(f"| {res['policy']} | {compute} | {layout} | {mx:.2e} | {mean:.2e} |")
  lines += ["", "### Noise against the signal (mean |A_skill| per token, float32 scoring)\n"]
  lines += [
    "| policy | routed pairs | response tokens | signal mean (median, max) | bf16 noise mean (max) | bf16 noise / signal "
    "| bf16 A_skill error mean (max) | error / signal | f32 noise mean (max) | f32 noise / signal | bf16 > 10 %? |",
    "|" + "---|" * 11,
  ]
  for res in results:
    s = res["signal_mean_abs"]
    bmax, bmean = res["compute"]["bfloat16"]["all layouts"]
    fmax, fmean = res["compute"]["float32"]["all layouts"]
    err, err_max = res["bf16_skill_error_mean"], res["bf16_skill_error_max"]
    res["bf16_noise_over_signal"], res["bf16_error_over_signal"] = bmean / s, err / s
    over = "yes" if max(bmean, err) / s > THRESHOLD else "no"
    lines.append(
      f"| {res['policy']} | {res['pairs']} | {res['response_tokens']} | {s:.3f} ({res['signal_median_abs']:.3f}, "
      f"{res['signal_max_abs']:.2f}) "
      f"| {bmean:.2e} ({bmax:.2e}) | {100 * bmean / s:.1f} % | {err:.2e} ({err_max:.2e}) | {100 * err / s:.1f} % "
      f"| {fmean:.1e} ({fmax:.1e}) | {100 * fmean / s:.4f} % | {over} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--policy", default="both", choices=("small", "smollm2", "both"))
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a couple of games, 2 steps): a smoke test")
  parser.add_argument("--cache", default="/tmp/opid_step_samples", help="folder of the harvested trajectories")
  parser.add_argument("--out", default="", help="also write the results as JSON here")
  parser.add_argument("--data_dir", default="", help="ALFWorld data (default: the config's, data/alfworld)")
  parser.add_argument("--split", default="", help="the split the games come from (default: the config's, train)")
  parser.add_argument("--tasks", type=int, default=0, help="override the number of tasks played")
  parser.add_argument("--max_steps", type=int, default=0, help="override the step cap of the games")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--pairs", type=int, default=0, help="routed steps measured (0: the policy's default)")
  parser.add_argument("--all_f32_layouts", action="store_true", help="float32 scoring in every layout (SmolLM2 too)")
  parser.add_argument("--attention", default="", help="override model.attention (default: the config's, auto)")
  args = parser.parse_args()
  names = ("small", "smollm2") if args.policy == "both" else (args.policy,)
  results = [run_policy(name, args) for name in names]
  print("\n## bfloat16 noise floor of the skill signal (critical_first, expert analyzer, real ALFWorld steps)\n")
  print(tables(results))
  print()
  for res in results:
    verdict = (
      "exceeds" if max(res["bf16_noise_over_signal"], res["bf16_error_over_signal"]) > THRESHOLD else "stays under"
    )
    print(
      f"- {res['policy']}: bf16 noise {100 * res['bf16_noise_over_signal']:.1f} % and bf16 A_skill error "
      f"{100 * res['bf16_error_over_signal']:.1f} % of the signal: {verdict} the {100 * THRESHOLD:.0f} % threshold"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
