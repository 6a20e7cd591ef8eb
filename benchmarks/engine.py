"""Engine benchmark: our scorer and sampler against transformers on the same random weights and shapes.

  python benchmarks/engine.py [--shapes=tiny,qwen2.5-0.5b] [--dtype=float32] [--threads=2]

Both run in this process, one after the other, on a checkpoint saved once (so the weights are identical).
Workloads: scoring 8 x 512 tokens (8 prompts of 256 + responses of 256); generation of 64 new tokens with
sampling from 8 prompts of 256. Peak memory is the highest RSS seen during a workload minus the RSS before
the implementation's model was loaded (weights included), sampled every 5 ms.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time

SHAPES = {
  "tiny": dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=768,
    vocab_size=8192,
    tie_word_embeddings=False,
  ),
  "qwen2.5-0.5b": dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
  ),
}
BATCH, PROMPT, RESPONSE, NEW_TOKENS = 8, 256, 256, 64
# Rows per scoring micro-batch: on the 0.5B shape 2 is as fast as 8 with a quarter of the activation memory;
# the tiny shape is overhead-bound and wants the whole batch. The scorer's answers do not depend on it.
SCORE_MICRO_BATCH = {"tiny": 8, "qwen2.5-0.5b": 2}


def release_freed_memory() -> None:
  """Returns freed heap pages to the OS, so the next implementation's RSS baseline does not include (and its
  peak cannot hide inside) memory the previous one freed."""
  gc.collect()
  try:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
  """Highest RSS while the block runs."""

  def __enter__(self):
    self.peak, self._stop = rss_bytes(), threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()
    return self

  def _poll(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, rss_bytes())
      time.sleep(0.005)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())


def timed(fn, repeats=1):
  fn()  # warm-up (compilation for JAX, allocator warm-up for torch)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  return (time.perf_counter() - start) / repeats, out


def make_checkpoint(shape: str, out_dir: str):
  import torch
  import transformers

  cfg = transformers.Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, rms_norm_eps=1e-6)
  cfg.rope_parameters = {"rope_type": "default", "rope_theta": 1e6}
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
  model.save_pretrained(out_dir)
  model = None  # frees the weights before the next measurement
  gc.collect()


def inputs(vocab: int):
  import numpy as np

  rng = np.random.RandomState(0)
  prompts = rng.randint(10, vocab, size=(BATCH, PROMPT)).tolist()
  responses = rng.randint(10, vocab, size=(BATCH, RESPONSE)).tolist()
  return prompts, responses


def bench_ours(model_dir: str, vocab: int, dtype: str, repeats: int, micro_batch: int):
  import jax

  from opid_jax.generation.sampler import Sampler, SamplingParams
  from opid_jax.model import hf_io
  from opid_jax.rl.scoring import Scorer

  prompts, responses = inputs(vocab)
  release_freed_memory()
  base = rss_bytes()
  model, _, _ = hf_io.load_hf(model_dir, dtype=dtype, param_dtype=dtype)
  scorer = Scorer(model, pad_id=0, micro_batch=micro_batch, chunk_size=64)
  with PeakRss() as mem_score:
    t_compile = time.perf_counter()
    scorer.score(prompts, responses)
    t_compile = time.perf_counter() - t_compile
    t_score, _ = timed(lambda: scorer.score(prompts, responses), repeats)
  sampler = Sampler(model, stop_ids=[vocab - 1], pad_id=0, prompt_buckets=(PROMPT,), batch_buckets=(BATCH,))
  params = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS)
  with PeakRss() as mem_gen:
    t_gen, out = timed(lambda: sampler.generate(prompts, params, key=jax.random.PRNGKey(1)), repeats)
  new_tokens = sum(len(t) for t in out.tokens)
  return dict(
    score_tps=BATCH * (PROMPT + RESPONSE) / t_score,
    score_mem=mem_score.peak - base,
    gen_tps=new_tokens / t_gen,
    gen_mem=mem_gen.peak - base,
    score_compile_s=t_compile,
  )


def bench_transformers(model_dir: str, vocab: int, dtype: str, repeats: int):
  import torch
  import transformers

  prompts, responses = inputs(vocab)
  release_freed_memory()
  base = rss_bytes()
  torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
  ids = torch.tensor([p + r for p, r in zip(prompts, responses)])
  targets = torch.tensor(responses)

  def score():
    with torch.no_grad():
      logits = model(ids).logits[:, PROMPT - 1 : -1].float()
      return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]

  with PeakRss() as mem_score:
    t_score, _ = timed(score, repeats)
  prompt_ids = torch.tensor(prompts)

  def generate():
    with torch.no_grad():
      return model.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=NEW_TOKENS,
        eos_token_id=vocab - 1,
        pad_token_id=0,
      )

  with PeakRss() as mem_gen:
    t_gen, out = timed(generate, repeats)
  new_tokens = int((out[:, PROMPT:] != 0).sum())
  model = None  # frees the weights before the next measurement
  gc.collect()
  return dict(
    score_tps=BATCH * (PROMPT + RESPONSE) / t_score,
    score_mem=mem_score.peak - base,
    gen_tps=new_tokens / t_gen,
    gen_mem=mem_gen.peak - base,
  )


def scoring_flops(shape: str) -> float:
  """Model FLOPs the scoring workload needs: every layer on all tokens, causal attention, and the vocabulary
  projection on the response positions only (what any scorer must compute)."""
  c = SHAPES[shape]
  d, f, layers, heads, kv = (
    c["hidden_size"],
    c["intermediate_size"],
    c["num_hidden_layers"],
    c["num_attention_heads"],
    c["num_key_value_heads"],
  )
  head_dim = d // heads
  layer_params = d * head_dim * (2 * heads + 2 * kv) + 3 * d * f
  length = PROMPT + RESPONSE
  attention = layers * 4 * heads * head_dim * length * (length + 1) / 2
  return BATCH * (2 * layers * layer_params * length + attention + 2 * d * c["vocab_size"] * RESPONSE)


def gemm_gflops(shape: str, repeats: int = 5) -> tuple[float, float]:
  """The machine's ceiling: the workload's largest GEMM ([batch*length, hidden] x [hidden, ffn]) alone, float32,
  in JAX and in PyTorch."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  c = SHAPES[shape]
  m, k, n = BATCH * (PROMPT + RESPONSE), c["hidden_size"], c["intermediate_size"]
  a, b = np.random.rand(m, k).astype(np.float32), np.random.rand(k, n).astype(np.float32)
  matmul = jax.jit(jnp.matmul)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  t_jax, _ = timed(lambda: matmul(ja, jb).block_until_ready(), repeats)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  t_torch, _ = timed(lambda: ta @ tb, repeats)
  return 2 * m * k * n / t_jax / 1e9, 2 * m * k * n / t_torch / 1e9


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shapes", default="tiny,qwen2.5-0.5b")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  import torch

  torch.set_num_threads(args.threads)
  gb = 1024**3
  rows = []
  for shape in args.shapes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      make_checkpoint(shape, tmp)
      vocab = SHAPES[shape]["vocab_size"]
      ref = bench_transformers(tmp, vocab, args.dtype, args.repeats)
      ours = bench_ours(tmp, vocab, args.dtype, args.repeats, SCORE_MICRO_BATCH[shape])
    rows.append((shape, ours, ref))
    print(f"[{shape}] ours {ours}\n[{shape}] transformers {ref}", file=sys.stderr, flush=True)
  print(
    f"\nEngine benchmark ({args.dtype}, {args.threads} threads; scoring {BATCH}x{PROMPT + RESPONSE}, "
    f"generation {BATCH} x ({PROMPT} + {NEW_TOKENS}))"
  )
  print(
    f"{'shape':14} {'workload':10} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>6} "
    f"{'ours peak GB':>12} {'HF peak GB':>10} {'mem ratio':>9}"
  )
  for shape, ours, ref in rows:
    for kind, label in (("score", "scoring"), ("gen", "generation")):
      o, r = ours[f"{kind}_tps"], ref[f"{kind}_tps"]
      om, rm = ours[f"{kind}_mem"] / gb, ref[f"{kind}_mem"] / gb
      print(f"{shape:14} {label:10} {o:11.1f} {r:9.1f} {o / r:6.2f} {om:12.2f} {rm:10.2f} {om / rm:9.2f}")
  print("\nScoring as a fraction of the machine (model FLOPs the workload needs / time):")
  for shape, ours, ref in rows:
    per_token = scoring_flops(shape) / (BATCH * (PROMPT + RESPONSE))
    jax_gemm, torch_gemm = gemm_gflops(shape)
    print(
      f"{shape:14} ours {ours['score_tps'] * per_token / 1e9:6.1f} GFLOP/s, transformers "
      f"{ref['score_tps'] * per_token / 1e9:6.1f} GFLOP/s; the largest GEMM alone: JAX {jax_gemm:6.1f}, "
      f"PyTorch {torch_gemm:6.1f} GFLOP/s"
    )


if __name__ == "__main__":
  main()
