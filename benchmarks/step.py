"""One OPID iteration of a small model on CPU, broken down by phase, with achieved FLOP/s.

  python benchmarks/step.py [--shape=tiny] [--iterations=3]

Runs the real trainer (counting env, expert analyzer, reference KL on) and reports the last iteration, so
compilation is excluded. FLOPs: 2 x (parameters touched per token) per scored token plus attention;
an update costs 3x the forward (4x with remat).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]

SHAPES = {
  "tiny": dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=768,
    vocab_size=8192,
  ),
  "small": dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=1536,
    vocab_size=8192,
  ),
}


def flops_per_token(cfg, context: float) -> float:
  """Forward FLOPs per token: matmuls over all non-embedding weights plus the vocabulary projection, and
  attention scores/values over `context` keys."""
  d, f, v, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  weights = L * (d * (q + 2 * kv) + q * d + 3 * d * f) + d * v
  attention = L * 2 * q * context
  return 2 * (weights + attention)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shape", default="tiny")
  parser.add_argument("--iterations", type=int, default=3)
  parser.add_argument("--tasks", type=int, default=4)
  parser.add_argument("--group", type=int, default=4)
  args = parser.parse_args()
  from hf_fixtures import make_hf_model, save_tiny_tokenizer

  from configs import smoke
  from opid_jax.model.config import ModelConfig
  from opid_jax.training import rl_trainer

  tmp = tempfile.mkdtemp()
  model_dir = os.path.join(tmp, "model")
  save_tiny_tokenizer(model_dir)
  make_hf_model("qwen2", model_dir, **SHAPES[args.shape])
  c = smoke.get_config()
  c.model.path = model_dir
  c.rollout.update(tasks_per_batch=args.tasks, group_size=args.group, max_new_tokens=32, max_steps=3)
  c.ppo.update(mini_batch_size=64, micro_batch_size=8)
  c.train.update(steps=args.iterations, score_micro_batch=8, response_buckets=(32,))
  c.checkpoint.update(save_every=1)  # a row's time/checkpoint is the previous iteration's save
  rl_trainer.train(c, os.path.join(tmp, "run"))
  with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  cfg = ModelConfig.from_hf_dict(json.load(open(os.path.join(model_dir, "config.json"))))
  samples = last["samples"]
  avg_len = last["sample_tokens"] / samples
  fpt = flops_per_token(cfg, avg_len / 2)
  score_flops = last["scored_tokens"] * fpt
  update_flops = 3 * last["sample_tokens"] * fpt
  print(
    f"\nOPID iteration, {args.shape} shape ({cfg.num_params() / 1e6:.1f} M params), {args.tasks} tasks x "
    f"{args.group} rollouts, {samples} step samples, {last['sample_tokens']} tokens"
  )
  for phase in ("rollout", "score", "update", "checkpoint"):
    print(f"  {phase:10} {last.get('time/' + phase, 0):7.2f} s")
  print(f"  {'total':10} {last['time/step']:7.2f} s")
  print(
    f"  scoring: {last['scored_tokens']} tokens over all passes, {score_flops / last['time/score'] / 1e9:.1f} GFLOP/s"
  )
  print(f"  update:  {update_flops / last['time/update'] / 1e9:.1f} GFLOP/s (forward + backward)")


if __name__ == "__main__":
  main()
