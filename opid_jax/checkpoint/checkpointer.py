"""Checkpoints for the trainer: one Orbax step holds the device state and a JSON dict of host state.

Layout under `directory` (local or gs://), one folder per step:
  <step>/state/   the pytree of jax arrays (params, optimizer state, PRNG key data), sharded as saved
  <step>/host/    a JSON dict: task stream position, RNG states, metric history bits, the config
Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete (on GCS, which has no
atomic rename, it writes `<step>/commit_success.txt` last instead), so an interrupted save is never listed.

`PreemptionGuard` turns SIGTERM/SIGINT into a flag the training loop polls so it can force-save and exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from opid_jax.errors import UserError

logger = logging.getLogger(__name__)

_STATE = "state"
_HOST = "host"


class Checkpointer:
  """Saves every `save_every` steps (or when forced), keeps the newest `keep`, restores onto given shardings."""

  def __init__(self, directory: str, *, keep: int = 3, save_every: int = 100, async_save: bool = True):
    if keep < 1 or save_every < 1:
      raise UserError(f"checkpoint keep ({keep}) and save_every ({save_every}) must be at least 1")
    # Orbax (tensorstore) needs absolute local paths; gs:// and other URLs pass through unchanged.
    self._directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
      # Orbax's preemption policy only fires under jax.distributed's preemption service (TPU pods).
      save_decision_policy=policies.AnySavePolicy(
        [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
      ),
      preservation_policy=policies.LatestN(keep),
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      create=True,
    )
    try:
      self._manager = ocp.CheckpointManager(self._directory, options=options, item_names=(_STATE, _HOST))
    except OSError as e:
      raise UserError(f"cannot create checkpoint directory {directory}: {e.strerror or e}") from e
    self._closed = False

  @property
  def directory(self) -> str:
    return str(self._directory)

  def save(self, step: int, train_state, host_state: dict, *, force: bool = False) -> bool:
    """Starts saving `step` if it is due (or `force`); returns whether it did. Async saves finish later."""
    if step in self._manager.all_steps():
      return False
    # A JSON round trip copies the dict (the caller may mutate it during an async save) and fails early.
    host_copy = json.loads(json.dumps(host_state, default=_json_default))
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(train_state), _HOST: ocp.args.JsonSave(host_copy)})
    saved = self._manager.save(step, args=args, force=force)
    if saved:
      logger.info("checkpoint: saving step %d to %s", step, self._directory)
    return saved

  def all_steps(self) -> list[int]:
    """Complete checkpoints on storage, oldest first (a save still in flight is not listed)."""
    if not self._directory.exists():
      return []
    return sorted(ocp.utils.checkpoint_steps(self._directory))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def restore(self, step: int | None, abstract_train_state) -> tuple[int, Any, dict]:
    """Restores (step, train_state, host_state); arrays land on `abstract_train_state`'s shardings."""
    self._manager.wait_until_finished()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise UserError(f"no complete checkpoint in {self._directory}")
    elif step not in self.all_steps():
      raise UserError(f"no complete checkpoint for step {step} in {self._directory}")
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_train_state), _HOST: ocp.args.JsonRestore()})
    try:
      restored = self._manager.restore(step, args=args)
    except ValueError as e:
      problem = self._describe_mismatch(step, abstract_train_state) or " ".join(str(e).split())[:400]
      raise UserError(f"checkpoint {self._directory / str(step)} does not fit the train state: {problem}") from e
    return step, restored[_STATE], restored[_HOST]

  def restore_params(self, step: int, params):
    """Only the `params` subtree of step's train state, each leaf onto the sharding of the matching leaf of
    `params` (arrays or ShapeDtypeStructs). The saved shardings, and the optimizer state, are never read, so
    this works on any topology."""
    if step not in self.all_steps():
      raise UserError(f"no complete checkpoint for step {step} in {self._directory}")
    target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)}
    args = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    try:
      with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(self._directory / str(step) / _STATE, args=args)
    except (ValueError, KeyError) as e:
      problem = self._describe_mismatch(step, {"params": params}) or " ".join(str(e).split())[:400]
      raise UserError(f"checkpoint {self._directory / str(step)} does not fit the model: {problem}") from e
    return restored["params"]

  def wait(self):
    """Blocks until an async save is finalized (and raises its error, if any)."""
    self._manager.wait_until_finished()

  def close(self):
    if not self._closed:
      self._closed = True
      self._manager.close()

  def _describe_mismatch(self, step: int, abstract_train_state) -> str | None:
    """Names the first few leaves that differ between the checkpoint and the target; None if it can't tell."""
    try:
      stored = _leaves_by_path(self._manager.item_metadata(step)[_STATE])
    except Exception:  # pylint: disable=broad-except
      return None
    wanted = _leaves_by_path(abstract_train_state)
    problems = [f"missing from checkpoint: {p}" for p in wanted if p not in stored]
    problems += [f"not in train state: {p}" for p in stored if p not in wanted]
    for path in wanted.keys() & stored.keys():
      want_shape, have_shape = getattr(wanted[path], "shape", None), getattr(stored[path], "shape", None)
      if want_shape is not None and have_shape is not None and tuple(want_shape) != tuple(have_shape):
        problems.append(f"{path} has shape {tuple(have_shape)} in the checkpoint, {tuple(want_shape)} wanted")
    if not problems:
      return None
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(sorted(problems)[:3]) + more


def _leaves_by_path(tree) -> dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in leaves}


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"host_state value of type {type(value).__name__} is not JSON-serialisable")


class PreemptionGuard:
  """`with PreemptionGuard() as guard:` SIGTERM/SIGINT set `guard.requested` instead of killing the process.

  The loop checks `guard.requested` after each step, force-saves and returns. A SIGINT that arrives after a
  request is already pending raises KeyboardInterrupt at once (a second Ctrl-C means "stop now").
  Handlers can only be installed from the main thread; elsewhere the guard is inert and says so.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._requested = False
    self._previous: dict[int, Any] = {}

  @property
  def requested(self) -> bool:
    return self._requested

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is not threading.main_thread():
      logger.warning("PreemptionGuard outside the main thread: signals keep their default handling")
      return self
    for signum in self._SIGNALS:
      self._previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      # None means a handler installed outside Python; the default is the closest we can put back.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()

  def _on_signal(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self._requested:
      raise KeyboardInterrupt
    self._requested = True
    logger.warning("received %s: will save a checkpoint and stop after this step", signal.Signals(signum).name)
