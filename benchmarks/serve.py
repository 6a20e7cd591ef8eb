"""`serve` throughput, static against continuous engine: 32 concurrent clients (and one client at a time), each
request with its own heavy-tailed max_tokens, on a tiny random model.

python benchmarks/serve.py [--requests=128] [--clients=32] [--max_tokens=128] [--engines=static,continuous]
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


def request_lengths(requests: int, max_tokens: int, seed: int = 0) -> list[int]:
  """Heavy-tailed max_tokens per request (like ALFWorld responses: most short, a few up to the cap)."""
  import numpy as np

  rng = np.random.RandomState(seed)
  return [int(x) for x in np.clip(rng.lognormal(np.log(0.22 * max_tokens), 0.8, requests), 4, max_tokens)]


def run_clients(url: str, lengths: list[int], clients: int) -> tuple[float, int]:
  import httpx

  tokens = [0] * len(lengths)
  next_index = [0]
  lock = threading.Lock()

  def client():
    with httpx.Client(timeout=600) as http:
      while True:
        with lock:
          i = next_index[0]
          next_index[0] += 1
        if i >= len(lengths):
          return
        body = {
          "messages": [{"role": "user", "content": f"You are in room {i}. Your task is to: put a mug in the sink."}],
          "max_tokens": lengths[i],
          "temperature": 1.0,
        }
        answer = http.post(f"{url}/chat/completions", json=body).json()
        tokens[i] = answer["usage"]["completion_tokens"]

  start = time.perf_counter()
  threads = [threading.Thread(target=client) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return time.perf_counter() - start, sum(tokens)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--requests", type=int, default=128)
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--max_tokens", type=int, default=128)
  parser.add_argument("--engines", default="static,continuous")
  args = parser.parse_args()
  from hf_fixtures import make_hf_model, save_tiny_tokenizer

  from opid_jax.generation.server import build_server

  model_dir = tempfile.mkdtemp()
  save_tiny_tokenizer(model_dir)
  make_hf_model("qwen3", model_dir, hidden_size=256, num_hidden_layers=4, intermediate_size=768)
  lengths = request_lengths(args.requests, args.max_tokens)
  print(
    f"serve throughput, tiny model (hidden 256, 4 layers), {args.requests} requests, max_tokens heavy-tailed "
    f"(mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)})"
  )
  print("| engine | clients | requests/s | tokens/s | seconds |")
  print("|---|---|---|---|---|")
  for engine in args.engines.split(","):
    httpd, backend = build_server(
      model_dir,
      "127.0.0.1",
      0,
      max_batch=args.clients,
      max_prompt_tokens=512,
      engine=engine,
      slots=args.clients,
      max_new_tokens=args.max_tokens,
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    run_clients(url, lengths, args.clients)  # warm-up: compiles the shapes the measurement meets
    for clients in (1, args.clients):
      seconds, tokens = run_clients(url, lengths if clients > 1 else lengths[: max(8, len(lengths) // 8)], clients)
      n = len(lengths) if clients > 1 else max(8, len(lengths) // 8)
      print(f"| {engine} | {clients} | {n / seconds:.2f} | {tokens / seconds:.1f} | {seconds:.1f} |")
    print(f"<!-- {engine} backend counters: {backend.stats()} -->")
    httpd.shutdown()
    httpd.server_close()
    backend.close()


if __name__ == "__main__":
  main()
