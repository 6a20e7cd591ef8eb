"""Env throughput of the pool on real ALFWorld games (no model: actions come from expert plans).

  python benchmarks/envs.py --data_dir=data/alfworld [--groups=16 --group_size=8 --workers=2]

Measures the batched reset of groups x group_size envs (the first one, which also builds the envs;
a reset of the same games; a reset to new games, the steady state of training), and batched steps/s with seeded random admissible actions (`--policy=random`:
episodes rarely end, so every batch holds all envs) or the expert walkthroughs (`--policy=expert`:
episodes end with a win). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opid_jax.envs.alfworld import AlfworldEnv, list_games  # noqa: E402
from opid_jax.envs.pool import EnvPool, TaskStream, failure_of  # noqa: E402


def rss_mib(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return 0.0


def cpu_seconds(pids: list[int]) -> float:
  """User + system CPU time of the worker processes: unlike wall time, immune to other load."""
  total = 0
  for pid in pids:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
  return total / os.sysconf("SC_CLK_TCK")


def play(pool: EnvPool, resets, plans, steps: int, seed: int, expert: bool) -> dict[str, float]:
  """Steps every running env `steps` times in batches; returns the throughput figures."""
  rng = random.Random(seed)
  admissible = {i: r.admissible_actions for i, r in enumerate(resets)}
  running = set(admissible)
  env_steps, batch_times = 0, []
  for turn in range(steps):
    if not running:
      break
    order = sorted(running)
    actions = [(i, plans[i][turn] if expert and turn < len(plans[i]) else rng.choice(admissible[i])) for i in order]
    started = time.perf_counter()
    results = pool.step(actions)
    batch_times.append(time.perf_counter() - started)
    env_steps += len(order)
    for i, result in zip(order, results):
      if result.done or failure_of(result):
        running.discard(i)
      admissible[i] = result.admissible_actions
  total = sum(batch_times)
  return {
    "env_steps": env_steps,
    "step_batches": len(batch_times),
    "step_seconds": total,
    "env_steps_per_s": env_steps / total if total else 0.0,
    "mean_batch_s": total / max(1, len(batch_times)),
  }


def group_requests(tasks: list[str], group_size: int) -> list[tuple[int, str]]:
  return [(g * group_size + k, task) for g, task in enumerate(tasks) for k in range(group_size)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="data/alfworld")
  parser.add_argument("--split", default="train")
  parser.add_argument("--groups", type=int, default=16)
  parser.add_argument("--group_size", type=int, default=8)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--policy", choices=("random", "expert"), default="random")
  parser.add_argument(
    "--plain_textworld", action="store_true", help="without AlfworldEnv's memoized translation and grammar parsing"
  )
  parser.add_argument(
    "--envs_per_block", type=int, default=None, help="consecutive envs per worker block (default: the group size)"
  )
  args = parser.parse_args()

  stream = TaskStream(list_games(args.data_dir, args.split), seed=args.seed)
  requests = group_requests(stream.next_tasks(args.groups), args.group_size)
  next_requests = group_requests(stream.next_tasks(args.groups), args.group_size)
  block = args.envs_per_block or args.group_size
  report = {
    "envs": len(requests),
    "workers": args.workers,
    "envs_per_block": block,
    "split": args.split,
    "policy": args.policy,
    "cpus": os.cpu_count(),
    "memoized_textworld": not args.plain_textworld,
  }
  started = time.perf_counter()
  factory = functools.partial(AlfworldEnv, args.data_dir, memoize_textworld=not args.plain_textworld)
  with EnvPool(factory, num_envs=len(requests), num_workers=args.workers, envs_per_block=block) as pool:
    report["pool_start_s"] = time.perf_counter() - started
    pids = pool.worker_pids()
    started, cpu = time.perf_counter(), cpu_seconds(pids)
    resets = pool.reset(requests)
    report["reset_first_load_s"] = time.perf_counter() - started
    report["reset_first_load_cpu_s"] = cpu_seconds(pids) - cpu
    plans = [h.expert_actions for h in pool.hindsight([i for i, _ in requests])]
    started, cpu = time.perf_counter(), cpu_seconds(pids)
    resets = pool.reset(requests)
    report["reset_again_s"] = time.perf_counter() - started
    report["reset_again_cpu_s"] = cpu_seconds(pids) - cpu
    started, cpu = time.perf_counter(), cpu_seconds(pids)
    pool.reset(next_requests)
    report["reset_new_games_s"] = time.perf_counter() - started
    report["reset_new_games_cpu_s"] = cpu_seconds(pids) - cpu
    resets = pool.reset(requests)
    report["reset_failures"] = sum(bool(failure_of(r)) for r in resets)
    cpu = cpu_seconds(pids)
    report.update(play(pool, resets, plans, args.steps, args.seed, args.policy == "expert"))
    report["cpu_ms_per_env_step"] = 1000 * (cpu_seconds(pids) - cpu) / max(1, report["env_steps"])
    report["worker_rss_mib"] = [round(rss_mib(pid)) for pid in pool.worker_pids()]
    report["restarts"] = pool.restarts
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}))


if __name__ == "__main__":
  main()
