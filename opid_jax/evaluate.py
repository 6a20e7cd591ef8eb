"""Evaluate a policy alone (no analyzer, no skills) on a fixed, de-duplicated task list.

  python -m opid_jax.evaluate --config=configs/alfworld.py --workdir=DIR [--split=valid_unseen]
      [--config.model.path=...] [--num_tasks=N]

Uses the latest checkpoint in WORKDIR when there is one, else the plain model at config.model.path.
Prints a markdown table (success per task type, or exact match per QA dataset; mean episode length;
valid-action ratio) and writes WORKDIR/eval_<split>.json and .md.
"""

import sys

from absl import app, flags

from opid_jax.cli import define_config_flag, parse_flags_or_exit, quiet_libraries, required_config
from opid_jax.errors import exit_on_user_error

_CONFIG = define_config_flag()
flags.DEFINE_string("workdir", None, "Run directory; its latest checkpoint is evaluated if present.", required=True)
flags.DEFINE_string("split", None, "Evaluation split (default: config.env.eval_split).")
flags.DEFINE_integer("num_tasks", 0, "Evaluate only the first N tasks of the split (0: all).")
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  config = required_config(_CONFIG, "configs/alfworld.py")
  quiet_libraries()
  from opid_jax.evaluation import standalone, tables as eval_tables
  from opid_jax.training import config_checks

  config_checks.validate(config)
  if FLAGS.split:
    with config.unlocked():
      config.env.eval_split = FLAGS.split
  table, path = standalone.evaluate_run(config, FLAGS.workdir, num_tasks=FLAGS.num_tasks)
  print(eval_tables.markdown_table(table))
  print(f"wrote {path}.json and {path}.md", file=sys.stderr)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
