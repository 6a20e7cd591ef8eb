"""One command for a GPU or TPU machine: generation, scoring and one training iteration of random-weight Qwen2.5
shapes in bfloat16, per attention implementation, as one table (tokens/s, seconds per phase, MFU, peak memory).

  python benchmarks/accelerator.py [--shapes=qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-3b] [--attention=xla,chunked,cudnn]
      [--samples=128] [--gen_rows=32] [--gen_tokens=128] [--out=table.json]
  python benchmarks/accelerator.py --quick      # tiny shape, a few samples: a CPU smoke run

Step samples are synthetic, drawn from ALFWorld's length distribution (prompts of up to 2,048 tokens with five
history entries, responses heavy-tailed up to 512 tokens), so no environment, tokenizer or download is needed.
Every (shape, attention) pair runs each phase twice: the first run compiles (reported as `compile s`), the second is
timed. The training iteration is the trainer's own code: packed scoring (`rl.scoring.Scorer`), then one epoch of
packed, micro-batched AdamW updates (`rl.minibatch_step.optimizer_step`), parameters stored in float32 and computed
in bfloat16 with rematerialisation, as `configs/alfworld.py` runs them. MFU uses `training/flops.py` (model FLOPs
of the real tokens, attention included; absent on an unknown device).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT]

QWEN_VOCAB = 151936
# Qwen2.5-*-Instruct config.json values (hidden, MLP, layers, heads, kv heads, head_dim).
SHAPES = {
  "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 64),
  "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 128),
  "qwen2.5-3b": (2048, 11008, 36, 16, 2, 128),
  "tiny": (64, 128, 2, 4, 2, 16),
}
FUSED = {"gpu": "cudnn", "tpu": "splash"}


def model_config(shape: str, attention: str, quick: bool):
  from opid_jax.model.config import ModelConfig

  hidden, mlp, layers, heads, kv_heads, head_dim = SHAPES[shape]
  return ModelConfig(
    model_type="qwen2",
    vocab_size=512 if quick else QWEN_VOCAB,
    hidden_size=hidden,
    intermediate_size=mlp,
    num_layers=layers,
    num_heads=heads,
    num_kv_heads=kv_heads,
    head_dim=head_dim,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    qkv_bias=True,
    qk_norm=False,
    dtype="bfloat16",
    param_dtype="float32",
    remat=True,
    attention=attention,
  )


def alfworld_lengths(n: int, seed: int, max_prompt: int, max_response: int):
  """(prompt, response) lengths like ALFWorld steps: prompts ~1,300 tokens (a system prompt, the task and five
  history entries), responses heavy-tailed (mean ~150, capped at max_response)."""
  import numpy as np

  rng = np.random.RandomState(seed)
  prompts = np.clip(rng.normal(0.63 * max_prompt, 0.2 * max_prompt, n), 0.15 * max_prompt, max_prompt)
  responses = np.clip(rng.lognormal(np.log(0.22 * max_response), 0.8, n), 8, max_response)
  return [(int(p), int(r)) for p, r in zip(prompts, responses)]


def synthetic_samples(lengths, vocab: int, seed: int):
  import numpy as np

  from opid_jax.rl.batch import StepSample

  rng = np.random.RandomState(seed)
  out = []
  for p, r in lengths:
    old = (-rng.exponential(2.0, r)).astype(np.float32)
    out.append(StepSample(list(rng.randint(1, vocab, p)), list(rng.randint(1, vocab, r)), old, rng.randn(r)))
  return out


@dataclasses.dataclass
class Row:
  shape: str
  attention: str
  phase: str
  compile_s: float
  seconds: float
  tokens: int
  flops: float
  peak_gib: float | None

  def cells(self, peak):
    tflops = self.flops / self.seconds / 1e12
    mfu = f"{100 * self.flops / (self.seconds * peak):.1f}%" if peak else "n/a"
    mem = f"{self.peak_gib:.1f}" if self.peak_gib is not None else "n/a"
    return [
      self.shape,
      self.attention,
      self.phase,
      f"{self.compile_s:.1f}",
      f"{self.seconds:.2f}",
      f"{self.tokens / self.seconds:,.0f}",
      f"{tflops:.1f}",
      mfu,
      mem,
    ]


def peak_gib():
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 1024**3


def timed_twice(fn):
  """(compile-and-run seconds, steady seconds, result of the second run)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  start = time.perf_counter()
  out = fn()
  return first, time.perf_counter() - start, out


def bench_pair(shape: str, attention: str, args) -> list[Row]:
  import jax
  import numpy as np
  from flax import nnx

  from opid_jax.generation.sampler import Sampler, SamplingParams
  from opid_jax.model.decoder import create_model
  from opid_jax.parallel import mesh as mesh_lib
  from opid_jax.rl import minibatch_step, update
  from opid_jax.rl.scoring import Packing, Scorer
  from opid_jax.training import flops as flops_lib

  cfg = model_config(shape, attention, args.quick)
  model = create_model(cfg, seed=0)
  lengths = alfworld_lengths(args.samples, 0, args.max_prompt, args.max_response)
  samples = synthetic_samples(lengths, cfg.vocab_size, 1)
  prompts, responses = [s.prompt_ids for s in samples], [s.response_ids for s in samples]
  rows = []

  def row(phase, first, seconds, tokens, flops):
    rows.append(Row(shape, attention, phase, first, seconds, tokens, flops, peak_gib()))
    print("  " + " | ".join(rows[-1].cells(args.peak)), flush=True)

  # Generation: prefill through the chosen attention, then the decode loop over the KV cache (no stop token).
  sampler = Sampler(model, stop_ids=[cfg.vocab_size], pad_id=0, prompt_buckets=(args.max_prompt,))
  gen_prompts = prompts[: args.gen_rows]
  sampling = SamplingParams(temperature=1.0, max_new_tokens=args.gen_tokens)
  first, seconds, out = timed_twice(lambda: sampler.generate(gen_prompts, sampling, key=0))
  new = sum(len(t) for t in out.tokens)
  gen_pairs = [(len(p), len(t)) for p, t in zip(gen_prompts, out.tokens)]
  row("generate", first, seconds, new, flops_lib.phase_flops(cfg, gen_pairs, "rollout"))

  # Scoring: packed rows, the no-skill and skill passes of an iteration as one call.
  pack = Packing(pack_length=args.pack_length, micro_batch_tokens=args.score_tokens)
  scorer = Scorer(model, pad_id=0, packing=pack, prompt_buckets=(args.max_prompt,))
  first, seconds, _ = timed_twice(lambda: scorer.score(prompts, responses).logprobs[-1].sum())
  real = sum(p + r for p, r in lengths)
  row("score", first, seconds, real, flops_lib.phase_flops(cfg, lengths, "score"))

  # The update: one epoch of mini-batches, packed micro-batches, AdamW on float32 parameters.
  mesh = mesh_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  rules = (("batch", ("data", "fsdp")),)
  layout = minibatch_step.BatchLayout(
    mesh, rules, 8, 0, (args.max_prompt,), (args.max_response,), pack_length=args.pack_length
  )
  layout = dataclasses.replace(layout, micro_batch_tokens=args.update_tokens)
  graphdef, params = nnx.split(model)
  tx = update.make_optimizer(lr=1e-6)
  cfg_loss = update.LossConfig(temperature=1.0)
  state = [update.init_train_state(params, tx)]

  def one_epoch():
    for start in range(0, len(samples), args.mini_batch):
      state[0], metrics = minibatch_step.optimizer_step(
        state[0], samples[start : start + args.mini_batch], layout, graphdef=graphdef, tx=tx, cfg=cfg_loss
      )
    return float(jax.device_get(metrics["ppo/loss"]))

  first, seconds, loss = timed_twice(one_epoch)
  if not np.isfinite(loss):
    raise SystemExit(f"error: non-finite loss {loss} for {shape} / {attention}")
  row("update", first, seconds, real, flops_lib.phase_flops(cfg, lengths, "update"))
  it_seconds = sum(r.seconds for r in rows)
  rows.append(Row(shape, attention, "iteration", 0.0, it_seconds, real, sum(r.flops for r in rows), peak_gib()))
  print("  " + " | ".join(rows[-1].cells(args.peak)), flush=True)
  return rows


HEADER = ["shape", "attention", "phase", "compile s", "seconds", "tokens/s", "TFLOP/s", "MFU", "peak GiB"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-3b")
  parser.add_argument("--attention", default="", help="comma list; default: xla, chunked and the backend's kernel")
  parser.add_argument("--samples", type=int, default=128, help="step samples scored and trained on")
  parser.add_argument("--gen_rows", type=int, default=32)
  parser.add_argument("--gen_tokens", type=int, default=128)
  parser.add_argument("--max_prompt", type=int, default=2048)
  parser.add_argument("--max_response", type=int, default=512)
  parser.add_argument("--pack_length", type=int, default=4096)
  parser.add_argument("--score_tokens", type=int, default=32768, help="token slots per scoring micro-batch")
  parser.add_argument("--update_tokens", type=int, default=16384, help="token slots per update micro-batch")
  parser.add_argument("--mini_batch", type=int, default=64)
  parser.add_argument("--quick", action="store_true", help="tiny shape and sizes (a CPU smoke run)")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  import jax

  from opid_jax.training import flops as flops_lib

  if args.quick:
    args.shapes, args.samples, args.gen_rows, args.gen_tokens = "tiny", 12, 4, 8
    args.max_prompt, args.max_response, args.pack_length, args.mini_batch = 256, 64, 512, 6
    args.score_tokens, args.update_tokens = 1024, 1024
  backend = jax.default_backend()
  impls = args.attention.split(",") if args.attention else ["xla", "chunked"] + [FUSED[backend]] * (backend in FUSED)
  device = jax.devices()[0]
  args.peak = flops_lib.peak_flops(device.device_kind)
  print(f"# {device.device_kind} ({backend}), jax {jax.__version__}, {time.strftime('%Y-%m-%d')}", flush=True)
  print("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER), flush=True)
  rows = []
  for shape in args.shapes.split(","):
    for impl in impls:
      rows.extend(bench_pair(shape, impl, args))
      jax.clear_caches()
  print("\n| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER))
  for r in rows:
    print("| " + " | ".join(r.cells(args.peak)) + " |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(
        {"device": device.device_kind, "jax": jax.__version__, "rows": [dataclasses.asdict(r) for r in rows]}, f
      )


if __name__ == "__main__":
  main()
