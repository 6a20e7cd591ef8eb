"""Train a policy with OPID (or GRPO and the paper's ablations, as config overrides).

  python -m opid_jax.train --config=configs/alfworld.py --workdir=DIR \
      [--config.model.path=Qwen/Qwen2.5-3B-Instruct] [--config.opid.routing=episode_only]

Restarting the same command resumes from the latest complete checkpoint in the workdir.

Several processes (hosts): run the same command on each, with --coordinator_address/--num_processes/
--process_id or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID; TPU pod slices and Slurm jobs are
detected by JAX itself (see launch/).
"""

from absl import app, flags

from opid_jax.cli import define_config_flag, parse_flags_or_exit, quiet_libraries, required_config
from opid_jax.errors import exit_on_user_error

_CONFIG = define_config_flag()
flags.DEFINE_string("workdir", None, "Run directory (local path or gs://bucket/path).", required=True)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  config = required_config(_CONFIG, "configs/alfworld.py")
  from opid_jax.parallel import distributed  # before anything starts a JAX backend

  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from opid_jax.checkpoint import run_files
  from opid_jax.training import config_checks, rl_trainer

  config_checks.validate(config)
  quiet_libraries()
  if distributed.is_lead():
    run_files.write_config(config, FLAGS.workdir)
  rl_trainer.train(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
