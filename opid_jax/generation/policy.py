"""The rollout's generators: a policy callable over the static sampler (prompt ids in, (response ids, log-probs)
out, one batch per turn) and the pipelined rollout's generator over the continuous engine."""

from __future__ import annotations

import dataclasses
import time

import jax

from opid_jax.errors import UserError
from opid_jax.generation.engine import ContinuousEngine
from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.parallel import distributed


def make_policy(sampler: Sampler, sampling: SamplingParams, key: jax.Array, stats: dict | None = None):
  """One sampler call per turn, each with its own derived key. `stats`, when given, accumulates generation
  seconds and tokens (the rest of a rollout is env and prompt work)."""
  calls = [0]

  def policy(prompt_ids):
    start = time.perf_counter()
    out = sampler.generate(prompt_ids, sampling, key=jax.random.fold_in(key, calls[0]))
    calls[0] += 1
    if stats is not None:
      lengths = [len(t) for t in out.tokens]
      _add(
        stats,
        seconds=time.perf_counter() - start,
        prompt_tokens=sum(len(p) for p in prompt_ids),
        new_tokens=sum(lengths),
        # Decode steps after the first token, which comes out of the prefill; every row waits for the longest.
        decode_tokens=sum(lengths) - len(lengths),
        slot_steps=len(lengths) * (max(lengths, default=1) - 1),
      )
    return list(zip(out.tokens, out.logprobs))

  return policy


class EnginePolicy:
  """The pipelined rollout's generator over a continuous engine: the prompt of an episode's step `t` draws with
  `fold_in(fold_in(key, traj_id), t)`, so trajectories do not depend on timing or slot placement.
  `stats` accumulates as `make_policy`'s does, plus the engine's slot counters."""

  def __init__(self, engine: ContinuousEngine, sampling: SamplingParams, key: jax.Array, stats: dict | None = None):
    self.engine, self.sampling, self.key = engine, sampling, key
    self.stats = stats if stats is not None else {}

  @property
  def busy(self) -> bool:
    return self.engine.busy

  def submit(self, prompt_ids, traj_id: int, step: int):
    _add(self.stats, prompt_tokens=len(prompt_ids))
    key = jax.random.fold_in(jax.random.fold_in(self.key, traj_id), step)
    return self.engine.submit(prompt_ids, self.sampling, key)

  def step(self):
    before = dataclasses.replace(self.engine.stats)
    start = time.perf_counter()
    ended = self.engine.step()
    after = self.engine.stats
    _add(
      self.stats,
      seconds=time.perf_counter() - start,
      new_tokens=sum(len(r.tokens) for r in ended),
      decode_tokens=after.decode_tokens - before.decode_tokens,
      slot_steps=after.slot_steps - before.slot_steps,
    )
    return ended

  def finish(self) -> None:
    """Nothing to wait for (a continuous engine runs in one process); Lockstep's counterpart."""


def _add(stats: dict, **counts) -> None:
  for name, value in counts.items():
    stats[name] = stats.get(name, 0) + value


ENGINES = ("static", "continuous")  # rollout.engine


@dataclasses.dataclass
class Generation:
  """A run's generation backend, built once: the static sampler and, for rollout.engine=continuous, the engine."""

  sampler: Sampler
  engine: ContinuousEngine | None = None

  def set_params(self, params) -> None:
    self.sampler.set_params(params)
    if self.engine is not None:
      self.engine.set_params(params)

  def generator(self, sampling: SamplingParams, key: jax.Array, stats: dict | None = None):
    """What `play_groups` plays with; `.finish()` once this process has no more prompts."""
    if self.engine is not None:
      return EnginePolicy(self.engine, sampling, key, stats)
    return distributed.Lockstep(make_policy(self.sampler, sampling, key, stats))


def build_generation(loaded, rollout_config, prompt_buckets, num_envs: int) -> Generation:
  """The sampler, and the engine with `rollout.slots` slots (0: `num_envs`, every episode in flight)."""
  r = rollout_config
  truncate = r.truncation_side == "left"
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=prompt_buckets, truncate_left=truncate)
  if r.engine == "static":
    return Generation(sampler)
  if jax.process_count() > 1:
    raise UserError("rollout.engine=continuous runs in one process; multi-process runs use rollout.engine=static")
  engine = ContinuousEngine(
    loaded.model,
    loaded.stop_ids,
    loaded.pad_id,
    slots=r.slots or num_envs,
    max_new_tokens=r.max_new_tokens,
    decode_steps=r.decode_steps,
    prompt_buckets=prompt_buckets,
    truncate_left=truncate,
  )
  return Generation(sampler, engine)


def generation_metrics(stats: dict) -> dict[str, float]:
  """From a generator's `stats`: rollout/slot_utilisation (useful decode tokens per slot-step; the static path
  counts every row of a turn's batch until its longest response ends), perf/decode_tokens_per_s, and for the
  pipelined rollout time/rollout_env_hidden (env seconds hidden behind decoding) and time/rollout_env_exposed."""
  metrics = {}
  if stats.get("slot_steps"):
    metrics["rollout/slot_utilisation"] = stats["decode_tokens"] / stats["slot_steps"]
  if stats.get("seconds"):
    metrics["perf/decode_tokens_per_s"] = stats.get("new_tokens", 0) / stats["seconds"]
  if "env_busy_seconds" in stats:
    metrics["time/rollout_env_hidden"] = stats["env_busy_seconds"] - stats["env_exposed_seconds"]
    metrics["time/rollout_env_exposed"] = stats["env_exposed_seconds"]
  return metrics
