"""Greedy generations and scorer log-probs of a tiny model under several meshes of 8 CPU devices, and on one.

Run as a script (the device count must be set before JAX starts):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_inference_check.py OUT.npz
Writes `<mesh>:tokens`, `<mesh>:logprobs` and `<mesh>:engine_tokens` (the continuous engine's greedy tokens) for
"single", "data8", "fsdp8" and "mixed".
"""

import sys

import jax
import numpy as np
from flax import nnx
from tiny_models import tiny_model
from update_check import RULES

from opid_jax.generation.engine import ContinuousEngine
from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model.sharding import use_rules
from opid_jax.parallel import mesh as mesh_lib
from opid_jax.rl.scoring import Scorer

MESHES = {"single": None, "data8": dict(data=8), "fsdp8": dict(fsdp=8), "mixed": dict(data=2, fsdp=2, tensor=2)}
STOP_ID, PAD_ID = 127, 0


def fixed_prompts(n=8, seed=1):
  rng = np.random.RandomState(seed)
  return [rng.randint(1, 120, size=rng.randint(3, 30)).tolist() for _ in range(n)]


def varied_model():
  """The tiny model with weights scaled up: initial weights give near-uniform logits and greedy decoding
  would only repeat the last prompt token."""
  graphdef, params = nnx.split(tiny_model(seed=0))
  return nnx.merge(graphdef, jax.tree.map(lambda x: x * 6.0, params))


def run(sizes):
  model = varied_model()
  if sizes:
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, **sizes})
    graphdef, params = nnx.split(model)
    model = nnx.merge(graphdef, mesh_lib.shard_params(params, mesh, RULES))
  else:  # one device, no rules: the reference
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  prompts = fixed_prompts()
  with use_rules(mesh, RULES if sizes else ()):
    sampler = Sampler(model, [STOP_ID], PAD_ID, prompt_buckets=(32,), batch_buckets=(8,))
    out = sampler.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=12))
    # The continuous engine: 4 slots for 8 prompts, so requests also queue for slots freed on the mesh.
    engine = ContinuousEngine(
      model, [STOP_ID], PAD_ID, slots=4, max_new_tokens=12, decode_steps=4, prompt_buckets=(32,)
    )
    engine_out = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=12))
    scorer = Scorer(model, PAD_ID, micro_batch=8, chunk_size=8, prompt_buckets=(32,), response_buckets=(16,))
    scored = scorer.score(prompts, out.tokens, temperature=0.7)
  tokens = np.full((len(prompts), 12), -1, np.int32)
  engine_tokens = np.full((len(prompts), 12), -1, np.int32)
  for i, ids in enumerate(engine_out.tokens):
    engine_tokens[i, : len(ids)] = ids
  logprobs = np.zeros((len(prompts), 12), np.float32)
  for i, (ids, lp) in enumerate(zip(out.tokens, scored.logprobs)):
    tokens[i, : len(ids)] = ids
    logprobs[i, : len(lp)] = lp
  return tokens, logprobs, engine_tokens


if __name__ == "__main__":
  results = {}
  for name, sizes in MESHES.items():
    tokens, logprobs, engine_tokens = run(sizes)
    results[f"{name}:tokens"], results[f"{name}:logprobs"] = tokens, logprobs
    results[f"{name}:engine_tokens"] = engine_tokens
  np.savez(sys.argv[1], **results)
