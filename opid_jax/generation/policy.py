"""The rollout's policy callable over the sampler: prompt ids in, (response ids, log-probs) out."""

from __future__ import annotations

import time

import jax

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
