"""WebShop env speed: index build time, peak memory, search latency and env steps/s for 16 x 8 envs.

Runs each catalogue size in a fresh process (so peak RSS is that size's alone) on generated catalogues:

  .venv/bin/python benchmarks/webshop.py                      # 300 and 100,000 products
  .venv/bin/python benchmarks/webshop.py --sizes=300 --episodes=2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

GROUPS, GROUP_SIZE, MAX_STEPS = 16, 8, 15


def _rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _policy_action(rng: random.Random, admissible: list[str], query: str, step: int) -> str:
  """A scripted explorer: search first, then random clicks, buying on the last step when it can."""
  if step == 0 or not admissible:
    return f"search[{query}]"
  if step == MAX_STEPS - 1 and "click[buy now]" in admissible:
    return "click[buy now]"
  choice = rng.choice(admissible)
  return f"search[{query}]" if choice.startswith("search[") else choice


def measure(n: int, data_dir: str, episodes: int, seed: int) -> dict:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from opid_jax.envs.webshop import catalogue as webshop_catalogue
  from opid_jax.envs.webshop.env import WebShopEnv, candidate_queries
  from opid_jax.envs.webshop.world import load_world

  report = {"products": n}
  t0 = time.perf_counter()
  webshop_catalogue.write_catalogue(data_dir, n=n, seed=seed)
  report["generate_s"] = time.perf_counter() - t0
  rss_before = _rss_mib()
  t0 = time.perf_counter()
  world = load_world(data_dir)
  report["load_and_index_s"] = time.perf_counter() - t0
  report["goals"] = len(world.goals)
  report["rss_world_mib"] = _rss_mib() - rss_before
  report["peak_rss_mib"] = _peak_rss_mib()

  rng = random.Random(seed)
  queries = [candidate_queries(g, world.by_asin[g.asin])[0] for g in rng.sample(world.goals, 200)]
  world.search(queries[0])  # warm-up
  latencies = []
  for query in queries:
    t0 = time.perf_counter()
    world.search(query)
    latencies.append(time.perf_counter() - t0)
  report["search_ms_mean"] = 1e3 * float(np.mean(latencies))
  report["search_ms_p95"] = 1e3 * float(np.percentile(latencies, 95))

  envs = [WebShopEnv(world) for _ in range(GROUPS * GROUP_SIZE)]
  steps, searches, t0 = 0, 0, time.perf_counter()
  for episode in range(episodes):
    task_ids = rng.sample(world.task_ids("train"), GROUPS)
    starts = [env.reset(task_ids[i // GROUP_SIZE]) for i, env in enumerate(envs)]
    admissible = [s.admissible_actions for s in starts]
    done = [False] * len(envs)
    for step in range(MAX_STEPS):
      for i, env in enumerate(envs):
        if done[i]:
          continue
        query = candidate_queries(env.goal, world.by_asin[env.goal.asin])[0]
        action = _policy_action(rng, admissible[i], query, step)
        searches += action.startswith("search[")
        result = env.step(action)
        admissible[i], done[i] = result.admissible_actions, result.done
        steps += 1
  elapsed = time.perf_counter() - t0
  report.update(env_steps=steps, env_steps_per_s=steps / elapsed, search_share=searches / max(steps, 1))
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="300,100000")
  parser.add_argument("--episodes", type=int, default=4, help="rounds of 16 x 8 episodes per size")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one is not None:
    print(json.dumps(measure(args.one, args.dir, args.episodes, args.seed)))
    return
  for n in (int(s) for s in args.sizes.split(",")):
    with tempfile.TemporaryDirectory() as data_dir:
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          f"--one={n}",
          f"--dir={data_dir}",
          f"--episodes={args.episodes}",
          f"--seed={args.seed}",
        ],
        check=True,
        capture_output=True,
        text=True,
      ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    print(
      f"{n:>7} products  {report['goals']:>7} goals  generate {report['generate_s']:6.1f} s  "
      f"load+index {report['load_and_index_s']:6.1f} s  world {report['rss_world_mib']:7.0f} MiB  "
      f"peak RSS {report['peak_rss_mib']:7.0f} MiB  search {report['search_ms_mean']:6.2f} ms "
      f"(p95 {report['search_ms_p95']:6.2f})  16x8 envs {report['env_steps_per_s']:7.0f} steps/s "
      f"({report['search_share']:.0%} searches)"
    )


if __name__ == "__main__":
  main()
