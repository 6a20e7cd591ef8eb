"""One PPO update of a tiny model on a fixed batch, under a given mesh; prints the parameters' checksum data.

Run as a script (the device count flag must be set before JAX starts):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/update_check.py OUT.npz data=2,fsdp=2,tensor=2
"""

import sys

import jax
import numpy as np
import optax
from flax import nnx
from tiny_models import tiny_model

from opid_jax.model.sharding import use_rules
from opid_jax.parallel import mesh as mesh_lib
from opid_jax.rl import batch as batch_lib, update

RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("mlp", "tensor"),
  ("q_heads", "tensor"),
  ("kv_heads", "tensor"),
)


def fixed_samples(n=16, seed=0):
  rng = np.random.RandomState(seed)
  samples = []
  for i in range(n):
    p = rng.randint(1, 128, size=rng.randint(3, 20)).tolist()
    r = rng.randint(1, 128, size=rng.randint(1, 12)).tolist()
    samples.append(
      batch_lib.StepSample(
        p,
        r,
        old_logp=rng.uniform(-6, -4, len(r)).astype(np.float32),
        advantages=rng.normal(size=len(r)).astype(np.float32),
        ref_logp=rng.uniform(-6, -4, len(r)).astype(np.float32),
      )
    )
  return samples


def run_update(micro_batch_size=8, mesh_sizes=None, sgd=False, lr=1e-2):
  model = tiny_model(seed=0)
  graphdef, params = nnx.split(model)
  # SGD with lr 1 makes the parameter change equal to the gradient (Adam's first step is ~lr * sign(g),
  # which amplifies rounding in near-zero gradients).
  tx = optax.sgd(1.0) if sgd else update.make_optimizer(lr=lr, weight_decay=0.01, grad_clip=1.0)
  cfg = update.LossConfig(kl_coef=0.01, entropy_coef=0.001, dual_clip=3.0, chunk_size=8)
  batch = batch_lib.minibatches(
    fixed_samples(),
    mini_batch_size=16,
    micro_batch_size=micro_batch_size,
    seed=0,
    pad_id=0,
    prompt_buckets=(32,),
    response_buckets=(16,),
    with_ref=True,
  )[0]
  if mesh_sizes:
    mesh = mesh_lib.make_mesh(mesh_sizes)
    params = mesh_lib.shard_params(params, mesh, RULES)
    batch = {k: jax.device_put(v, mesh_lib.batch_sharding(mesh, RULES, v.ndim, batch_dim=1)) for k, v in batch.items()}
    with use_rules(mesh, RULES):
      state = update.init_train_state(params, tx)
      state, metrics = update.train_step(state, batch, graphdef=graphdef, tx=tx, cfg=cfg)
  else:
    state = update.init_train_state(params, tx)
    state, metrics = update.train_step(state, batch, graphdef=graphdef, tx=tx, cfg=cfg)
  flat = {".".join(map(str, p)): np.asarray(jax.device_get(v[...])) for p, v in nnx.to_flat_state(state.params)}
  return flat, {k: float(v) for k, v in metrics.items()}


if __name__ == "__main__":
  out = sys.argv[1]
  sizes = dict(kv.split("=") for kv in sys.argv[2].split(",")) if len(sys.argv) > 2 else None
  sizes = {k: int(v) for k, v in sizes.items()} if sizes else None
  if sizes:
    sizes = {"data": 1, "fsdp": 1, "tensor": 1, **sizes}
  grads, metrics = run_update(mesh_sizes=sizes, sgd=True)
  adamw, _ = run_update(mesh_sizes=sizes, lr=1e-3)
  np.savez(
    out,
    **{"sgd:" + k: v for k, v in grads.items()},
    **{"adamw:" + k: v for k, v in adamw.items()},
    **{"metric:" + k: v for k, v in metrics.items()},
  )
