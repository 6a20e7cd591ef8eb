"""The training scaffold that RL and SFT share: the mesh and its logical-axis rules, a sharded model with its
train state, restore from the latest checkpoint, and the checkpointed loop (each step's metrics row is written
before its save; SIGTERM/SIGINT force a save and stop)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from opid_jax.checkpoint.checkpointer import Checkpointer, PreemptionGuard
from opid_jax.model import decoder, loading
from opid_jax.model.sharding import use_rules
from opid_jax.parallel import distributed, mesh as mesh_lib
from opid_jax.rl import update
from opid_jax.training.metrics import MetricsWriter, PhaseTimer

log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Trainable:
  """A sharded model and its optimizer state: what a training loop updates and checkpoints."""

  mesh: Any
  rules: tuple
  loaded: loading.LoadedModel
  graphdef: Any
  tx: Any
  state: update.TrainState


def build_trainable(config, model_path: str) -> Trainable:
  """Mesh from `config.mesh`, the model at `model_path` loaded straight onto its shardings, AdamW state."""
  mesh = mesh_lib.make_mesh(dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor))
  rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in config.mesh.rules)
  loaded = loading.load(
    model_path,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    remat=config.model.remat,
    attention=config.model.attention,
    shardings=lambda var: mesh_lib.variable_sharding(var, mesh, rules),
  )
  graphdef, params = nnx.split(loaded.model)
  tx = update.optimizer_from_config(config.optim, config.train.steps)
  return Trainable(
    mesh=mesh, rules=rules, loaded=loaded, graphdef=graphdef, tx=tx, state=update.init_train_state(params, tx)
  )


def graphdef_in_dtype(model, dtype: str):
  """The model's graph with another compute dtype (same parameters), e.g. float32 scoring of a bf16 model; None
  when `dtype` is empty or already the model's."""
  if not dtype or dtype == model.cfg.dtype:
    return None
  abstract = decoder.abstract_model(dataclasses.replace(model.cfg, dtype=dtype))
  return nnx.split(abstract)[0]


def make_checkpointer(config, workdir: str) -> Checkpointer:
  c = config.checkpoint
  return Checkpointer(
    c.get("dir") or os.path.join(workdir, "checkpoints"), keep=c.keep, save_every=c.save_every, async_save=c.async_save
  )


def restore_or_start(
  checkpointer: Checkpointer, writer: MetricsWriter, state: update.TrainState, unit: str = "step"
) -> tuple[int, update.TrainState, dict | None]:
  """(first step to run, train state, host state or None): the latest checkpoint restored onto `state`'s
  shardings (the current mesh), or step 0. Metric rows of steps about to be redone are dropped."""
  latest = checkpointer.latest_step()
  if latest is None:
    writer.truncate_from(0)  # rows of an earlier attempt that died before its first checkpoint
    return 0, state, None
  step, state, host = checkpointer.restore(latest, _restore_target(state))
  writer.truncate_from(step + 1)
  log.warning("resumed from %s %d", unit, step)
  return step, state, host


def _restore_target(state):
  """`state` as ShapeDtypeStructs on its shardings, except that leaves off the mesh (the optimizer's step counters
  and the step, created uncommitted on one device) are replicated on it: restored arrays are committed, and a
  committed one-device array next to mesh-sharded ones is rejected by the jitted update."""
  meshes = [x.sharding.mesh for x in jax.tree.leaves(state) if isinstance(x.sharding, NamedSharding)]

  def target(x):
    sharding = x.sharding
    if meshes and not isinstance(sharding, NamedSharding):
      sharding = NamedSharding(meshes[0], PartitionSpec())
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(target, state)


StepFn = Callable[[int, PhaseTimer], dict[str, float]]


def checkpointed_loop(
  trainable: Trainable,
  *,
  start: int,
  steps: int,
  step_fn: StepFn,
  checkpointer: Checkpointer,
  writer: MetricsWriter,
  host_state: Callable[[int], dict],
  desc: str,
  unit: str = "step",
  on_start: Callable[[], None] | None = None,
) -> tuple[dict[str, float], bool]:
  """Runs steps start..steps-1: `step_fn(step, timer)` does the work and returns its metrics (it updates
  `trainable.state`); then the row (with time/<phase> and time/step) is logged and the step saved when due.
  Returns (last metrics, finished); finished is False when a stop signal ended the loop after a forced save.
  `on_start` runs inside the mesh context before the first step (e.g. an initial evaluation)."""
  last: dict[str, float] = {}
  try:
    with use_rules(trainable.mesh, trainable.rules), PreemptionGuard() as guard:
      if on_start is not None:
        on_start()
      bar = tqdm.tqdm(
        range(start, steps),
        desc=desc,
        initial=start,
        total=steps,
        dynamic_ncols=True,
        disable=not distributed.is_lead(),
      )
      timer = PhaseTimer(on_phase=bar.set_postfix_str)
      for step in bar:
        metrics = step_fn(step, timer)
        done = step + 1
        # Logged before the checkpoint: a kill before the save is durable redoes this step exactly on restart and
        # drops this row, so no row is ever lost or doubled. A row's time/checkpoint is the previous step's save.
        phase_seconds = timer.as_metrics()
        metrics.update(phase_seconds)
        metrics["time/step"] = sum(phase_seconds.values())
        writer.write(done, metrics)
        last = metrics
        with timer.phase("checkpoint"):
          checkpointer.save(done, trainable.state, host_state(done), force=done == steps)
        if distributed.any_process(guard.requested):  # checked last: a signal during logging counts too
          checkpointer.save(done, trainable.state, host_state(done), force=True)
          log.warning("stop requested: saved %s %d, exiting", unit, done)
          return last, False
    return last, True
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
