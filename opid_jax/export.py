"""Export the latest checkpoint of a run as a Hugging Face folder (config, safetensors, tokenizer).

  python -m opid_jax.export --workdir=DIR --out=HF_DIR [--dtype=bfloat16]

The run's saved config (WORKDIR/config.json) names the base model, whose tokenizer is copied along. Only the
parameters are read from the checkpoint, onto this machine's devices: a run trained on a pod exports on one host.
"""

from __future__ import annotations

import os

from absl import app, flags

from opid_jax.cli import parse_flags_or_exit, quiet_libraries
from opid_jax.errors import UserError, exit_on_user_error

flags.DEFINE_string("workdir", None, "Run directory with config.json and checkpoints/.", required=True)
flags.DEFINE_string("out", None, "Output folder for the Hugging Face checkpoint.", required=True)
flags.DEFINE_string("dtype", None, "Weight dtype to write (default: the run's param_dtype).")
FLAGS = flags.FLAGS


def export(workdir: str, out: str, dtype: str | None = None) -> int:
  """Writes the HF folder; returns the exported checkpoint's iteration."""
  from flax import nnx

  from opid_jax.checkpoint import run_files
  from opid_jax.model import hf_io, loading

  config = run_files.load_run_config(workdir)
  loaded = loading.load(config.model.path, dtype="float32", param_dtype=config.model.param_dtype)
  _, params = nnx.split(loaded.model)
  restored, step = run_files.restore_latest_params(workdir, params, config.checkpoint.dir or None)
  if restored is None:
    raise UserError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}")
  nnx.update(loaded.model, restored)
  hf_io.export_hf(loaded.model, out, tokenizer=loaded.tokenizer, dtype=dtype)
  return step


@exit_on_user_error
def main(argv):
  del argv
  quiet_libraries()
  step = export(FLAGS.workdir, FLAGS.out, FLAGS.dtype)
  print(f"exported iteration {step} of {FLAGS.workdir} to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
