"""Multi-process start-up and the few host-side collectives the trainer needs.

JAX's own multi-controller runtime is the engine: every process runs the same program, owns its local
devices, and joins one mesh over all devices. `initialize` must run before anything touches a JAX backend.
With one process every helper here is a plain local operation, so single-process runs are unchanged.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Sequence

import jax
import numpy as np

from opid_jax.errors import UserError

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _int_or_none(value) -> int | None:
  return None if value in (None, "") else int(value)


def _managed_cluster() -> bool:
  """A multi-host environment that jax.distributed detects by itself (TPU pod slice, Slurm job step)."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES") or ""
  if len([h for h in hosts.split(",") if h]) > 1:
    return True
  return int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1) > 1


def initialize(
  coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
  """Starts jax.distributed when this is one process of several; returns whether it did.

  Explicit arguments win, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, then JAX's
  own cluster detection (Cloud TPU pod slices, Slurm, Open MPI).
  """
  address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  count = num_processes if num_processes is not None else _int_or_none(os.environ.get(ENV_NUM_PROCESSES))
  index = process_id if process_id is not None else _int_or_none(os.environ.get(ENV_PROCESS_ID))
  if address is None and count is None and index is None:
    if not _managed_cluster():
      return False
    jax.distributed.initialize()
  else:
    if count == 1:
      return False
    if address is None or count is None or index is None:
      raise UserError(
        f"multi-process start needs all of coordinator address ({address}), number of processes "
        f"({count}) and process id ({index})"
      )
    if not 0 <= index < count:
      raise UserError(f"process id {index} is outside [0, {count})")
    jax.distributed.initialize(address, num_processes=count, process_id=index)
  log.warning(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def is_lead() -> bool:
  return jax.process_index() == 0


def process_share(total: int, what: str) -> slice:
  """This process's contiguous share of `total` items; the split must be even."""
  count = jax.process_count()
  if total % count:
    raise UserError(f"{what}={total} is not divisible by the number of processes {count}")
  size = total // count
  return slice(jax.process_index() * size, (jax.process_index() + 1) * size)


def process_range(total: int) -> slice:
  """A near-even contiguous share (for evaluation task lists that need not divide)."""
  bounds = np.linspace(0, total, jax.process_count() + 1).round().astype(int)
  return slice(int(bounds[jax.process_index()]), int(bounds[jax.process_index() + 1]))


def allgather_objects(value: Any) -> list[Any]:
  """Every process's `value` (any picklable object), in process order, on every process."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  payload = np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([payload.size], np.int64))
  # Power-of-two lengths: the gather compiles once per size, and payload sizes change every call.
  padded = np.zeros(1 << max(10, int(sizes.max() - 1).bit_length()), np.uint8)
  padded[: payload.size] = payload
  gathered = multihost_utils.process_allgather(padded)
  return [pickle.loads(row[: int(n)].tobytes()) for row, n in zip(gathered, sizes.reshape(-1))]


def concat_across_processes(items: Sequence[Any]) -> list[Any]:
  """The lists of all processes joined in process order (the single-process order when shares are contiguous)."""
  return [item for part in allgather_objects(list(items)) for item in part]


def fetch(tree):
  """jax.device_get that also works for arrays spanning other processes' devices (gathered everywhere)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)

  return jax.tree.map(one, tree)


def global_array(value: np.ndarray, sharding: jax.sharding.NamedSharding, batch_dim: int = 0) -> jax.Array:
  """A global array from a host array every process holds in full: each process hands over only the rows its
  devices own (jax.make_array_from_process_local_data). One process: a plain device_put."""
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  size = value.shape[batch_dim]
  spans = sorted(
    {
      (idx[batch_dim].start or 0, size if idx[batch_dim].stop is None else idx[batch_dim].stop)
      for idx in sharding.addressable_devices_indices_map(value.shape).values()
    }
  )
  lo, hi = spans[0][0], max(stop for _, stop in spans)
  reach = lo
  for start, stop in spans:
    if start > reach:
      raise ValueError(f"this process's rows of dimension {batch_dim} are not contiguous: {spans}")
    reach = max(reach, stop)
  local = np.take(value, np.arange(lo, hi), axis=batch_dim)
  return jax.make_array_from_process_local_data(sharding, local, value.shape)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. a preemption signal that reached one host)."""
  return any(allgather_objects(bool(flag)))


def sum_across_processes(values: dict[str, float], take_max: Sequence[str] = ()) -> dict[str, float]:
  """Per-key sums over processes (maxima for the keys in `take_max`, e.g. wall times)."""
  parts = allgather_objects(dict(values))
  return {k: (max if k in take_max else sum)(p[k] for p in parts) for k in values}


class Lockstep:
  """Wraps `fn(items) -> results` (one result per item) so that all processes call it together.

  Each round gathers every process's items in process order, runs `fn` once on all of them (the same call,
  with the same arguments, on every process: what a jitted computation over a multi-host mesh needs), and
  hands each process back the results of its own items. A process with nothing left to ask calls `finish()`,
  which keeps joining rounds with no items until every process has finished.
  With one process it is a plain call.
  """

  def __init__(self, fn):
    self._fn = fn

  def __call__(self, items):
    items = list(items)
    if jax.process_count() == 1:
      return self._fn(items)
    return self._round(items, active=True)

  def finish(self) -> None:
    if jax.process_count() == 1:
      return
    while self._round([], active=False) is not None:
      pass

  def _round(self, items, active: bool):
    parts = allgather_objects((active, items))
    if not any(is_active for is_active, _ in parts):
      return None
    everything = [item for _, part in parts for item in part]
    results = self._fn(everything)
    start = sum(len(part) for _, part in parts[: jax.process_index()])
    return results[start : start + len(items)]
