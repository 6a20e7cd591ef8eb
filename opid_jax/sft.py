"""Behaviour cloning (SFT) on expert walkthrough steps, through the RL model, batching and checkpoint code.

  python -m opid_jax.sft --config=configs/sft_alfworld_small.py --workdir=runs/sft_small

Restarting the same command resumes exactly from the latest checkpoint; the policy is exported to WORKDIR/policy.
"""

from absl import app, flags
from ml_collections import config_flags

from opid_jax.cli import parse_flags_or_exit, quiet_libraries
from opid_jax.errors import UserError, exit_on_user_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file with get_config().",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory.", required=True)
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise UserError("--config is required (e.g. --config=configs/sft_alfworld_small.py)")
  from opid_jax import sft_trainer, trainer
  sft_trainer.validate(config)
  quiet_libraries()
  trainer.write_config(config, FLAGS.workdir)
  sft_trainer.train_sft(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
