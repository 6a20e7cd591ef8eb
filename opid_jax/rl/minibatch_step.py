"""One optimizer step from one mini-batch of step samples: pack (or pad), shard over the mesh's batch axes, update.

With `pack_length` the samples are packed into rows (batching/packing.py), `micro_batch_tokens` per micro-batch,
one jitted gradient call per micro-batch shape. Otherwise, with `bucketed` each micro-batch (samples sorted by length) is padded to its own length bucket: less padding, one
compilation per bucket pair. Otherwise the mini-batch is one [num_micro, micro, ...] array run by a single jitted
scan (one shape per step; the fewest dispatches). Both give the same step (see tests/test_loss_update.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from opid_jax.parallel import distributed, mesh as mesh_lib
from opid_jax.rl import batch as batch_lib, update


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  mesh: Any
  rules: tuple
  micro_batch_size: int
  pad_id: int
  prompt_buckets: Sequence[int]
  response_buckets: Sequence[int]
  bucketed: bool = True
  pack_length: int = 0  # > 0: packed rows of this many tokens
  micro_batch_tokens: int = 0


def _shard(arrays: dict, layout: BatchLayout, batch_dim: int) -> dict:
  return {
    k: distributed.global_array(
      v, mesh_lib.batch_sharding(layout.mesh, layout.rules, v.ndim, batch_dim=batch_dim), batch_dim=batch_dim
    )
    for k, v in arrays.items()
  }


def optimizer_step(
  state: update.TrainState,
  part: Sequence[batch_lib.StepSample],
  layout: BatchLayout,
  *,
  graphdef,
  tx,
  cfg: update.LossConfig,
  with_ref: bool = False,
):
  kwargs = dict(
    micro_batch_size=layout.micro_batch_size,
    pad_id=layout.pad_id,
    prompt_buckets=layout.prompt_buckets,
    response_buckets=layout.response_buckets,
    with_ref=with_ref,
    with_teacher=bool(cfg.distill),
  )
  if layout.pack_length:
    micros, pad_share = batch_lib.packed_micro_batches(
      part,
      pack_length=layout.pack_length,
      micro_batch_tokens=layout.micro_batch_tokens,
      pad_id=layout.pad_id,
      with_ref=with_ref,
      with_teacher=bool(cfg.distill),
      row_multiple=mesh_lib.data_parallel_size(layout.mesh, layout.rules),
      target_multiple=cfg.chunk_size,
    )
    state, metrics = update.train_step_micro_batches(
      state, [_shard(m, layout, 0) for m in micros], graphdef=graphdef, tx=tx, cfg=cfg
    )
    metrics["perf/pad_share_update"] = pad_share
    return state, metrics
  real = sum(len(s.prompt_ids) + len(s.response_ids) for s in part)
  if layout.bucketed:
    micros = batch_lib.length_sorted_micro_batches(part, **kwargs)
    processed = sum(m["prompt_ids"].size + m["response_ids"].size for m in micros)
    micros = [_shard(m, layout, 0) for m in micros]
    state, metrics = update.train_step_micro_batches(state, micros, graphdef=graphdef, tx=tx, cfg=cfg)
  else:
    stacked = batch_lib.stacked_micro_batches(part, **kwargs)
    processed = stacked["prompt_ids"].size + stacked["response_ids"].size
    state, metrics = update.train_step(state, _shard(stacked, layout, 1), graphdef=graphdef, tx=tx, cfg=cfg)
  metrics["perf/pad_share_update"] = 1.0 - real / processed
  return state, metrics
