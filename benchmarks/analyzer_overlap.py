"""How much analyzer wall time hides behind scoring: one iteration's scoring with a slow analyzer endpoint
(a loopback server answering every call after a fixed delay).

  python benchmarks/analyzer_overlap.py [--delay=1.0] [--trajectories=16] [--concurrency=4]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]


class TimedHandle:
  def __init__(self, handle):
    self.handle, self.stats, self.waited = handle, handle.stats, 0.0

  def result(self, timeout=None):
    start = time.perf_counter()
    out = self.handle.result(timeout)
    self.waited += time.perf_counter() - start
    return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--delay", type=float, default=1.0)
  parser.add_argument("--trajectories", type=int, default=16)
  parser.add_argument("--concurrency", type=int, default=4)
  args = parser.parse_args()
  import jax
  from fault_server import FaultServer
  from hf_fixtures import make_hf_model, save_tiny_tokenizer

  from opid_jax.agent import rollout
  from opid_jax.envs import counting
  from opid_jax.envs.pool import EnvPool
  from opid_jax.generation.policy import make_policy
  from opid_jax.generation.sampler import Sampler, SamplingParams
  from opid_jax.model import loading
  from opid_jax.rl import opid_samples
  from opid_jax.rl.scoring import Scorer
  from opid_jax.skills.backends import make_backend

  model_dir = tempfile.mkdtemp()
  save_tiny_tokenizer(model_dir)
  make_hf_model("qwen3", model_dir, hidden_size=256, num_hidden_layers=4, intermediate_size=768)
  loaded = loading.load(model_dir)
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=(256,))
  scorer = Scorer(loaded.model, loaded.pad_id, micro_batch=8, prompt_buckets=(256, 1024), response_buckets=(32,))
  groups = args.trajectories // 4
  with EnvPool(functools.partial(counting.CountingEnv, max_steps=3), num_envs=args.trajectories, num_workers=1) as pool:
    policy = make_policy(sampler, SamplingParams(1.0, max_new_tokens=32), jax.random.PRNGKey(0))
    trajs = rollout.run_groups(
      pool, policy, loaded.tokenizer, [str(i) for i in range(groups)], 4, rollout.alfworld_agent(1, 3), 256
    )
  reply = json.dumps(
    {
      "episode_summary": "s",
      "episode_skill": "say the next number",
      "step_skills": {"0": "say the number after the current one"},
    }
  )
  score = lambda p, r, params, units=None: scorer.score(p, r, params=params, units=units).logprobs
  settings = opid_samples.OpidSettings(lambda_skill=0.01)
  opid_samples.build_samples(
    trajs,
    score=score,
    params=scorer.params,
    ref_params=None,
    tokenizer=loaded.tokenizer,
    settings=settings,
    analysis_handle=make_backend("expert").analyze_many_async(trajs),
  )
  with FaultServer(default="slow", reply=reply, delay_s=args.delay) as server:
    backend = make_backend(
      "openai", base_url=server.base_url, model="m", concurrency=args.concurrency, timeout_s=args.delay * 10
    )
    start = time.perf_counter()
    handle = TimedHandle(backend.analyze_many_async(trajs))
    opid_samples.build_samples(
      trajs,
      score=score,
      params=scorer.params,
      ref_params=None,
      tokenizer=loaded.tokenizer,
      settings=settings,
      analysis_handle=handle,
    )
    total = time.perf_counter() - start
    backend.close()
  analyzer = handle.stats.seconds
  print(f"{len(trajs)} trajectories, analyzer delay {args.delay} s per call, concurrency {args.concurrency}")
  print(
    f"  analyzer wall time {analyzer:.2f} s; scoring phase total {total:.2f} s; waited for the analyzer "
    f"{handle.waited:.2f} s"
  )
  print(f"  share of analyzer time hidden behind scoring: {100 * (analyzer - handle.waited) / analyzer:.0f} %")


if __name__ == "__main__":
  main()
