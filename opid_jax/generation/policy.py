"""The rollout's generators: a policy callable over the static sampler (prompt ids in, (response ids, log-probs)
out, one batch per turn) and the pipelined rollout's generator over the continuous engine."""

from __future__ import annotations

import dataclasses
import time

import jax

from opid_jax.generation.engine import ContinuousEngine
from opid_jax.generation.sampler import Sampler, SamplingParams


def make_policy(sampler: Sampler, sampling: SamplingParams, key: jax.Array, stats: dict | None = None):
  """One sampler call per turn, each with its own derived key. `stats`, when given, accumulates generation
  seconds and tokens (the rest of a rollout is env and prompt work)."""
  calls = [0]

  def policy(prompt_ids):
    start = time.perf_counter()
    out = sampler.generate(prompt_ids, sampling, key=jax.random.fold_in(key, calls[0]))
    calls[0] += 1
    if stats is not None:
      stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - start
      stats["prompt_tokens"] = stats.get("prompt_tokens", 0) + sum(len(p) for p in prompt_ids)
      stats["new_tokens"] = stats.get("new_tokens", 0) + sum(len(t) for t in out.tokens)
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
    self.stats["prompt_tokens"] = self.stats.get("prompt_tokens", 0) + len(prompt_ids)
    key = jax.random.fold_in(jax.random.fold_in(self.key, traj_id), step)
    return self.engine.submit(prompt_ids, self.sampling, key)

  def step(self):
    before = dataclasses.replace(self.engine.stats)
    start = time.perf_counter()
    ended = self.engine.step()
    self.stats["seconds"] = self.stats.get("seconds", 0.0) + time.perf_counter() - start
    self.stats["new_tokens"] = self.stats.get("new_tokens", 0) + sum(len(r.tokens) for r in ended)
    after = self.engine.stats
    for name in ("slot_steps", "decode_tokens", "decode_steps"):
      self.stats[name] = self.stats.get(name, 0) + getattr(after, name) - getattr(before, name)
    return ended
