"""A run directory's files beside its checkpoints: the resolved config, and the policy parameters of the latest
checkpoint read onto this machine's shardings (whatever mesh the run was trained on)."""

from __future__ import annotations

import json
import os

from opid_jax.errors import UserError


def write_config(config, workdir: str) -> None:
  from etils import epath

  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))


def load_run_config(workdir: str):
  import ml_collections
  from etils import epath

  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{path} not found: is {workdir} a training run directory?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_latest_params(workdir: str, params, checkpoint_dir: str | None = None):
  """(parameters, iteration) of the latest checkpoint, or (None, None) when there is none.

  Only the parameters are read, each onto the sharding of the matching leaf of `params` (this machine's mesh);
  the optimizer state is skipped, so a run trained on a pod evaluates and exports on one host.
  """
  from opid_jax.checkpoint.checkpointer import Checkpointer

  checkpointer = Checkpointer(checkpoint_dir or os.path.join(workdir, "checkpoints"))
  try:
    latest = checkpointer.latest_step()
    if latest is None:
      return None, None
    return checkpointer.restore_params(latest, params), latest
  finally:
    checkpointer.close()
