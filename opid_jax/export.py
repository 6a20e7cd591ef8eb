"""Export the latest checkpoint of a run as a Hugging Face folder (config, safetensors, tokenizer).

  python -m opid_jax.export --workdir=DIR --out=HF_DIR [--dtype=bfloat16]

The run's saved config (WORKDIR/config.json) names the base model, whose tokenizer is copied along.
"""

from absl import app, flags

from opid_jax.cli import parse_flags_or_exit, quiet_libraries
from opid_jax.errors import exit_on_user_error
from opid_jax.exporting import export

flags.DEFINE_string("workdir", None, "Run directory with config.json and checkpoints/.", required=True)
flags.DEFINE_string("out", None, "Output folder for the Hugging Face checkpoint.", required=True)
flags.DEFINE_string("dtype", None, "Weight dtype to write (default: the run's param_dtype).")
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  quiet_libraries()
  step = export(FLAGS.workdir, FLAGS.out, FLAGS.dtype)
  print(f"exported iteration {step} of {FLAGS.workdir} to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
