"""Per-iteration cost of each `algo.name` row on the `alfworld_small` setting, in one process, on the same samples.

  python benchmarks/algo_rows.py [--rows=grpo,opid,...] [--tasks=4] [--group=4] [--max_steps=8]

Every row plays the same first iteration (same policy, seed and games), so the rollouts are identical and the rows
differ only in what they add: the teacher scoring pass (OPID, the distillation rows, RLSD), the analyzer (every row
with skills; `expert` here), the extra loss term (SDAR, OPSD, GRPO+OPSD, Skill-SD). Each row runs twice and the
second run is timed (compilation excluded). Prints seconds per phase and the total as a ratio to GRPO.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT]


def run_row(name: str, args) -> dict[str, float]:
  from configs import alfworld_small
  from opid_jax.training import algo_rows, rl_trainer

  c = alfworld_small.get_config()
  c.model.path = args.policy
  c.env.data_dir = args.data_dir
  c.algo.name = name
  row = algo_rows.ROWS[name]
  if row.teacher and not row.opid_term:
    c.opid.lambda_skill = 0.0
  c.rollout.update(tasks_per_batch=args.tasks, group_size=args.group, max_steps=args.max_steps)
  c.train.update(steps=1, eval_at_end=False, eval_every=0)
  metrics = {}
  for _ in range(2):  # the first run compiles
    metrics = rl_trainer.train(c, tempfile.mkdtemp(prefix=f"rows_{name}_"))
  return metrics


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", default="grpo,gigpo,opid,skill_grpo,sdar,opsd,grpo_opsd,rlsd,skill_sd")
  parser.add_argument("--policy", default=os.path.join(_ROOT, "results/cpu_study/sft/policy"))
  parser.add_argument("--data_dir", default=os.path.join(_ROOT, "data/alfworld"))
  parser.add_argument("--tasks", type=int, default=4)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--max_steps", type=int, default=8)
  args = parser.parse_args()
  os.chdir(_ROOT)
  phases = ("rollout", "score", "update")
  results = {name: run_row(name, args) for name in args.rows.split(",")}
  base = results.get("grpo")
  print("\n| row | samples | scored tokens | " + " | ".join(f"{p} s" for p in phases) + " | total s | x GRPO |")
  print("|---" * (len(phases) + 5) + "|")
  for name, m in results.items():
    total = sum(m.get(f"time/{p}", 0.0) for p in phases)
    ratio = total / sum(base.get(f"time/{p}", 0.0) for p in phases) if base else float("nan")
    cells = [f"{m.get(f'time/{p}', 0.0):.2f}" for p in phases]
    print(
      f"| {name} | {m['samples']} | {m['scored_tokens']} | " + " | ".join(cells) + f" | {total:.2f} | {ratio:.2f} |"
    )


if __name__ == "__main__":
  main()
