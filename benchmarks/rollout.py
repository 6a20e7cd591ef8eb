"""Static (turn-by-turn batches) against continuous (slots, pipelined episodes) rollouts, in one process, on the
same prompts and seeds.

  python benchmarks/rollout.py synthetic [--shape=tiny|qwen2.5-0.5b] [--episodes=64] [--turns=10] [--slots=64]
  python benchmarks/rollout.py alfworld [--policy=small|smollm2] [--tasks=16] [--group=4] [--steps=10]
  python benchmarks/rollout.py synthetic --quick   # a CPU smoke run

synthetic: `episodes` concurrent episodes of `turns` turns on a random-weight model; every response is forced to
stop at a length drawn from ALFWorld's `<think>` distribution (heavy-tailed, mean ~150, capped at 512 tokens) by
giving each request that many new tokens and no stop id it can sample. The static path decodes each turn's batch
until its longest response ends (its max_new_tokens is that longest length rounded up to a multiple of 8 to bound
compilations: what its stop check does); the continuous engine gives each request its own length and the next
turn's prompt joins the queue the moment the previous response ends (envs answer at once here).
alfworld: real ALFWorld train games through an EnvPool at temperature 1.0, both engines (the same tasks; sampling
streams differ between engines, so the episodes differ).

Reported: wall seconds (each path run twice, the second timed: compilation excluded), slot utilisation (useful
decode tokens per slot-step; the static path's slots are the rows of a turn's batch), decode steps per useful token,
tokens/s, and (alfworld) the env share of wall time. The speed-up is static wall / continuous wall.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.dirname(os.path.abspath(__file__))]

import accelerator  # noqa: E402  (SHAPES, model_config, alfworld_lengths)


def _synthetic_workload(episodes: int, turns: int, max_prompt: int, max_response: int, vocab: int, seed: int):
  """Per episode, per turn: (prompt ids, forced response length)."""
  import numpy as np

  rng = np.random.RandomState(seed)
  lengths = accelerator.alfworld_lengths(episodes * turns, seed, max_prompt, max_response)
  work = []
  for e in range(episodes):
    row = []
    for t in range(turns):
      prompt_len, response_len = lengths[e * turns + t]
      row.append((rng.randint(1, vocab, size=prompt_len).tolist(), response_len))
    work.append(row)
  return work


def _static_synthetic(sampler, work, temperature: float):
  import jax

  from opid_jax.generation.sampler import SamplingParams

  key = jax.random.PRNGKey(0)
  useful = slot_steps = steps = 0
  for t in range(len(work[0])):
    prompts = [row[t][0] for row in work]
    wanted = [row[t][1] for row in work]
    longest = -(-max(wanted) // 8) * 8
    sampler.generate(prompts, SamplingParams(temperature, max_new_tokens=longest), key=jax.random.fold_in(key, t))
    useful += sum(w - 1 for w in wanted)  # decode tokens: the first comes out of the prefill
    slot_steps += len(prompts) * (longest - 1)
    steps += longest - 1
  return useful, slot_steps, steps


def _continuous_synthetic(engine, work, temperature: float):
  import jax

  from opid_jax.generation.sampler import SamplingParams

  key = jax.random.PRNGKey(0)
  before = engine.stats.decode_tokens, engine.stats.slot_steps, engine.stats.decode_steps
  turn_of = {}

  def ask(e: int, t: int) -> None:
    prompt, length = work[e][t]
    request = engine.submit(prompt, SamplingParams(temperature, max_new_tokens=length), jax.random.fold_in(key, e))
    turn_of[request] = (e, t)

  for e in range(len(work)):
    ask(e, 0)
  full_steps = full_tokens = 0  # while every episode is still running: the steady state before the drain
  while engine.busy:
    running = engine.in_flight
    d_tokens, d_steps = engine.stats.decode_tokens, engine.stats.slot_steps
    for request in engine.step():
      e, t = turn_of.pop(request)
      assert len(request.tokens) == work[e][t][1]  # the forced length, exactly
      if t + 1 < len(work[e]):
        ask(e, t + 1)
    if running >= min(engine.slots, len(work)) and all(t < len(work[0]) - 1 for _, t in turn_of.values()):
      full_tokens += engine.stats.decode_tokens - d_tokens
      full_steps += engine.stats.slot_steps - d_steps
  s = engine.stats
  steady = full_tokens / full_steps if full_steps else float("nan")
  return s.decode_tokens - before[0], s.slot_steps - before[1], s.decode_steps - before[2], steady


def synthetic(args) -> dict:
  import jax
  import numpy as np

  from opid_jax.generation.engine import ContinuousEngine
  from opid_jax.generation.sampler import Sampler
  from opid_jax.model.decoder import create_model

  cfg = accelerator.model_config(args.shape, "xla", args.quick)
  if args.shape == "tiny":  # a small vocabulary: the tiny shape measures scheduling, not the vocabulary projection
    cfg = dataclasses.replace(cfg, vocab_size=min(cfg.vocab_size, 4096))
  if jax.devices()[0].platform == "cpu":  # bfloat16 matmuls are slow on CPU
    cfg = dataclasses.replace(cfg, dtype="float32")
  model = create_model(cfg, seed=0)
  work = _synthetic_workload(args.episodes, args.turns, args.max_prompt, args.max_response, cfg.vocab_size, args.seed)
  buckets = (args.max_prompt // 4, args.max_prompt // 2, args.max_prompt)
  never = [cfg.vocab_size]  # a stop id no request can sample: lengths are forced
  sampler = Sampler(model, never, 0, prompt_buckets=buckets)
  engine = ContinuousEngine(
    model,
    never,
    0,
    slots=args.slots,
    max_new_tokens=args.max_response,
    decode_steps=args.decode_steps,
    prompt_buckets=buckets,
  )
  rows = {}
  for name, run in (
    ("static", lambda: _static_synthetic(sampler, work, 1.0)),
    ("continuous", lambda: _continuous_synthetic(engine, work, 1.0)),
  ):
    start = time.perf_counter()
    run()  # compiles every shape the timed run meets
    print(f"{name}: warm-up run {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    jax.effects_barrier()
    start = time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    print(f"{name}: timed run {wall:.1f} s", file=sys.stderr, flush=True)
    useful, slot_steps, steps = result[:3]
    rows[name] = {
      "wall_s": wall,
      "slot_utilisation": useful / slot_steps,
      "steady_utilisation": result[3] if len(result) > 3 else float("nan"),
      "decode_steps_per_useful_token": steps / useful,
      "decode_tokens_per_s": useful / wall,
    }
  lengths = np.asarray([w for row in work for _, w in row])
  return {
    "benchmark": "synthetic",
    "shape": args.shape,
    "device": jax.devices()[0].device_kind,
    "episodes": args.episodes,
    "turns": args.turns,
    "slots": args.slots,
    "decode_steps": args.decode_steps,
    "response_mean": float(lengths.mean()),
    "response_max": int(lengths.max()),
    "rows": rows,
    "speedup": rows["static"]["wall_s"] / rows["continuous"]["wall_s"],
  }


POLICIES = {
  "small": ("configs/alfworld_small.py", "results/cpu_study/sft/policy"),
  "smollm2": ("configs/demo_smollm2.py", ""),
}


def alfworld(args) -> dict:
  import jax

  from opid_jax.agent import env_setup
  from opid_jax.agent.pipelined_rollout import play_groups
  from opid_jax.batching import padding
  from opid_jax.envs.pool import EnvPool, TaskStream
  from opid_jax.generation.policy import build_generation, generation_metrics
  from opid_jax.generation.sampler import SamplingParams
  from opid_jax.model import loading

  config_path, model_path = POLICIES[args.policy]
  config = _load_config(config_path)
  if model_path:
    config.model.path = model_path
  if args.data_dir:
    config.env.data_dir = args.data_dir
  config.env.train_split = args.split
  config.rollout.max_steps = args.steps
  r = config.rollout
  env = env_setup.build(config.env, r)
  loaded = loading.load(config.model.path, dtype=config.model.dtype, attention=config.model.attention)
  tasks = TaskStream(env.train_tasks, seed=args.seed).next_tasks(args.tasks)
  buckets = padding.buckets_up_to(r.max_prompt_tokens, config.train.prompt_buckets)
  sampling = SamplingParams(1.0, r.top_p, r.top_k, r.max_new_tokens)
  rows = {}
  num_envs = args.tasks * args.group
  with EnvPool(env.factory, num_envs=num_envs, num_workers=args.workers, envs_per_block=args.group) as pool:
    for name in ("static", "continuous"):
      r.engine = name
      r.slots = args.slots
      generation = build_generation(loaded, r, buckets, num_envs)
      for timed in (False, True):
        stats: dict = {}
        policy = generation.generator(sampling, jax.random.PRNGKey(args.seed), stats)
        start = time.perf_counter()
        trajectories = play_groups(
          pool, policy, loaded.tokenizer, tasks, args.group, env.agent, max_prompt_tokens=r.max_prompt_tokens
        )
        wall = time.perf_counter() - start
      m = generation_metrics(stats)
      env_s = stats.get("env_exposed_seconds", wall - stats.get("seconds", 0.0))
      rows[name] = {
        "wall_s": wall,
        "slot_utilisation": m.get("rollout/slot_utilisation", float("nan")),
        "decode_tokens_per_s": m.get("perf/decode_tokens_per_s", float("nan")),
        "env_share": env_s / wall,
        "env_hidden_s": m.get("time/rollout_env_hidden", 0.0),
        "steps": sum(len(t.steps) for t in trajectories),
        "new_tokens": stats.get("new_tokens", 0),
        "success": sum(t.won for t in trajectories) / len(trajectories),
      }
  return {
    "benchmark": "alfworld",
    "policy": args.policy,
    "model": config.model.path,
    "device": jax.devices()[0].device_kind,
    "tasks": args.tasks,
    "group": args.group,
    "max_steps": args.steps,
    "rows": rows,
    "speedup": rows["static"]["wall_s"] / rows["continuous"]["wall_s"],
  }


def _load_config(path: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(_ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def print_table(result: dict) -> None:
  head = {k: v for k, v in result.items() if k != "rows"}
  print(f"## Rollout engines: {result['benchmark']}")
  print(json.dumps(head))
  cols = [c for c in next(iter(result["rows"].values()))]
  print("| engine | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  for name, row in result["rows"].items():
    cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
    print(f"| {name} | " + " | ".join(cells) + " |")
  print(f"speed-up (static wall / continuous wall): {result['speedup']:.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("mode", choices=("synthetic", "alfworld"))
  parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run")
  parser.add_argument("--shape", default="tiny", choices=sorted(accelerator.SHAPES))
  parser.add_argument("--episodes", type=int, default=64)
  parser.add_argument("--turns", type=int, default=10)
  parser.add_argument("--slots", type=int, default=None, help="default: 64 (synthetic), one per env (alfworld)")
  parser.add_argument("--decode_steps", type=int, default=8)
  parser.add_argument("--max_prompt", type=int, default=512)
  parser.add_argument("--max_response", type=int, default=512)
  parser.add_argument("--policy", default="small", choices=sorted(POLICIES))
  parser.add_argument("--tasks", type=int, default=16)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if args.slots is None:
    args.slots = 64 if args.mode == "synthetic" else 0
  if args.quick:
    args.episodes, args.turns, args.slots = min(args.episodes, 8), min(args.turns, 3), min(args.slots or 8, 8)
    args.max_prompt, args.max_response = min(args.max_prompt, 64), min(args.max_response, 64)
    args.tasks, args.group, args.steps = min(args.tasks, 2), min(args.group, 2), min(args.steps, 3)
  result = synthetic(args) if args.mode == "synthetic" else alfworld(args)
  print_table(result)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
