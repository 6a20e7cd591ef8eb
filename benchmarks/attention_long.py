"""Long-row attention on CPU: xla (the reference) vs chunked (flash attention in JAX), forward only.

  python benchmarks/attention_long.py [--rows=4] [--length=8192] [--impls=xla,chunked] [--repeats=3]

Each implementation runs in its own subprocess (so ru_maxrss is its own): jitted forward of packed rows (two
samples per row plus trailing padding), 4 query heads on 2 kv heads of 64 dims, float32. Reports tokens/s,
XLA's temp bytes (compiled.memory_analysis()) and the process's peak RSS, and the ratios against the first impl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT]


def measure(impl: str, rows: int, length: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from opid_jax.model import attention

  kv_heads, groups, head_dim = 2, 2, 64
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(rows, length, kv_heads, groups, head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(rows, length, kv_heads, head_dim)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(rows, length, kv_heads, head_dim)), jnp.float32)
  segments = np.zeros((rows, length), np.int32)
  segments[:, : length // 2] = 1
  segments[:, length // 2 : length - length // 16] = 2
  segments = jnp.asarray(segments)
  fn = jax.jit(lambda q, k, v, s: attention.attend(q, k, v, s, s, impl=impl))
  compiled = fn.lower(q, k, v, segments).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  compiled(q, k, v, segments).block_until_ready()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(q, k, v, segments).block_until_ready()
    times.append(time.perf_counter() - start)
  best = min(times)
  return dict(
    impl=impl,
    seconds=best,
    tokens_per_s=rows * length / best,
    temp_mib=temp / 2**20,
    maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
  )


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", type=int, default=4)
  parser.add_argument("--length", type=int, default=8192)
  parser.add_argument("--impls", default="xla,chunked")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.child, args.rows, args.length, args.repeats)))
    return
  results = []
  for impl in args.impls.split(","):
    cmd = [sys.executable, __file__, f"--child={impl}", f"--rows={args.rows}", f"--length={args.length}"]
    out = subprocess.run(cmd + [f"--repeats={args.repeats}"], check=True, capture_output=True, text=True).stdout
    results.append(json.loads(out.strip().splitlines()[-1]))
  base = results[0]
  print(f"{args.rows} rows x {args.length} tokens, 4 heads on 2 kv heads x 64 dims, float32, forward")
  print(
    f"{'impl':8} {'s':>7} {'tokens/s':>10} {'speed':>6} {'temp MiB':>9} {'ratio':>6} {'maxrss MiB':>11} {'ratio':>6}"
  )
  for r in results:
    print(
      f"{r['impl']:8} {r['seconds']:7.3f} {r['tokens_per_s']:10.0f} {r['tokens_per_s'] / base['tokens_per_s']:6.2f} "
      f"{r['temp_mib']:9.1f} {r['temp_mib'] / base['temp_mib']:6.3f} {r['maxrss_mib']:11.1f} "
      f"{r['maxrss_mib'] / base['maxrss_mib']:6.3f}"
    )


if __name__ == "__main__":
  main()
