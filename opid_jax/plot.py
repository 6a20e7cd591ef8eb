"""Overlay the learning curves of runs (e.g. GRPO against OPID) from their metrics.jsonl files.

  python -m opid_jax.plot RUN_DIR [RUN_DIR ...] --out=FILE.png [--smooth=5]

Panels: success rate, episode length, valid-action ratio, skill advantage share, per iteration; evaluation
success is drawn as markers where a run evaluated.
"""

from absl import app, flags

from opid_jax.cli import parse_flags_or_exit
from opid_jax.errors import UserError, exit_on_user_error

flags.DEFINE_string("out", "curves.png", "Output PNG file.")
flags.DEFINE_integer("smooth", 1, "Moving-average window over iterations (1: raw).")
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  run_dirs = argv[1:]
  if not run_dirs:
    raise UserError("give at least one run directory")
  from opid_jax.training import curves

  curves.plot_runs(run_dirs, FLAGS.out, FLAGS.smooth)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
