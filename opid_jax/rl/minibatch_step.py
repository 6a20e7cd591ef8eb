"""One optimizer step from one mini-batch of step samples: pad, shard over the mesh's batch axes, update.

With `bucketed` each micro-batch (samples sorted by length) is padded to its own length bucket: less padding, one
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
  )
  if layout.bucketed:
    micros = [_shard(m, layout, 0) for m in batch_lib.length_sorted_micro_batches(part, **kwargs)]
    return update.train_step_micro_batches(state, micros, graphdef=graphdef, tx=tx, cfg=cfg)
  stacked = _shard(batch_lib.stacked_micro_batches(part, **kwargs), layout, 1)
  return update.train_step(state, stacked, graphdef=graphdef, tx=tx, cfg=cfg)
