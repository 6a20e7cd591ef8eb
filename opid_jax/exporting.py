"""Exporting a run's latest checkpoint as a Hugging Face folder (used by `python -m opid_jax.export`)."""

from __future__ import annotations

import json
import os

from opid_jax.errors import UserError


def load_run_config(workdir: str):
  import ml_collections
  from etils import epath
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{path} not found: is {workdir} a training run directory?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def export(workdir: str, out: str, dtype: str | None = None) -> int:
  """Writes the HF folder; returns the exported checkpoint's iteration."""
  from flax import nnx
  from opid_jax import trainer
  from opid_jax.model import hf_io, loading
  config = load_run_config(workdir)
  loaded = loading.load(config.model.path, dtype="float32", param_dtype=config.model.param_dtype)
  _, params = nnx.split(loaded.model)
  restored, step = trainer.restore_latest_params(config, workdir, params, config.checkpoint.dir or None)
  if restored is None:
    raise UserError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}")
  nnx.update(loaded.model, restored)
  hf_io.export_hf(loaded.model, out, tokenizer=loaded.tokenizer, dtype=dtype)
  return step
