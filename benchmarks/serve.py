"""`serve` throughput: 32 concurrent clients versus one client at a time, on a tiny random model.

python benchmarks/serve.py [--requests=64] [--clients=32] [--max_tokens=32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]


def run_clients(url: str, requests: int, clients: int, max_tokens: int) -> tuple[float, int]:
  import httpx

  body = {
    "messages": [{"role": "user", "content": "You are in a room. Your task is to: put a mug in the sink."}],
    "max_tokens": max_tokens,
    "temperature": 1.0,
  }
  tokens = [0] * requests
  next_index = [0]
  lock = threading.Lock()

  def client():
    with httpx.Client(timeout=600) as http:
      while True:
        with lock:
          i = next_index[0]
          next_index[0] += 1
        if i >= requests:
          return
        tokens[i] = http.post(f"{url}/chat/completions", json=body).json()["usage"]["completion_tokens"]

  start = time.perf_counter()
  threads = [threading.Thread(target=client) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return time.perf_counter() - start, sum(tokens)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--requests", type=int, default=64)
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--max_tokens", type=int, default=32)
  args = parser.parse_args()
  from hf_fixtures import make_hf_model, save_tiny_tokenizer

  from opid_jax.generation.server import build_server

  model_dir = tempfile.mkdtemp()
  save_tiny_tokenizer(model_dir)
  make_hf_model("qwen3", model_dir, hidden_size=256, num_hidden_layers=4, intermediate_size=768)
  httpd, batcher = build_server(model_dir, "127.0.0.1", 0, max_batch=args.clients, max_prompt_tokens=512)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
  # Warm-up: compile every batch bucket the measurement can meet, so it times serving, not compilation.
  from opid_jax.generation.sampler import SamplingParams
  from opid_jax.model import tokenizer as tok

  prompt = tok.encode(batcher.tokenizer, tok.chat_prompt(batcher.tokenizer, [{"role": "user", "content": "hi"}]))
  bucket = 1 << (args.max_tokens - 1).bit_length()
  for size in (b for b in batcher.sampler.batch_buckets if b <= args.clients):
    batcher.sampler.generate([prompt] * size, SamplingParams(1.0, max_new_tokens=bucket))
  run_clients(url, args.clients, args.clients, args.max_tokens)
  print(f"serve throughput, tiny model (hidden 256, 4 layers), {args.requests} requests, max_tokens {args.max_tokens}")
  for clients in (1, args.clients):
    seconds, tokens = run_clients(url, args.requests, clients, args.max_tokens)
    print(
      f"  {clients:3d} client(s): {args.requests / seconds:7.2f} requests/s  {tokens / seconds:8.1f} tokens/s  "
      f"({seconds:.1f} s)"
    )
  print(f"  batches: {batcher.batches} for {batcher.requests} requests")
  httpd.shutdown()
  batcher.close()


if __name__ == "__main__":
  main()
