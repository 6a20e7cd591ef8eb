"""Behaviour cloning (SFT) on expert walkthrough steps, through the RL model, batching and checkpoint code.

  python -m opid_jax.sft --config=configs/sft_alfworld_small.py --workdir=runs/sft_small

Restarting the same command resumes exactly from the latest checkpoint; the policy is exported to WORKDIR/policy.
"""

from absl import app, flags

from opid_jax.cli import define_config_flag, parse_flags_or_exit, quiet_libraries, required_config
from opid_jax.errors import exit_on_user_error

_CONFIG = define_config_flag()
flags.DEFINE_string("workdir", None, "Run directory.", required=True)
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  config = required_config(_CONFIG, "configs/sft_alfworld_small.py")
  from opid_jax.checkpoint import run_files
  from opid_jax.sft import trainer as sft_trainer

  sft_trainer.validate(config)
  quiet_libraries()
  run_files.write_config(config, FLAGS.workdir)
  sft_trainer.train_sft(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
