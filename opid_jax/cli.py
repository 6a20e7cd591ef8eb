"""Shared pieces of the absl entry points."""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from opid_jax.errors import UserError


def define_config_flag():
  """The --config flag every training entry point takes (a Python file with get_config(); overrides with
  --config.a.b=value)."""
  return config_flags.DEFINE_config_file("config", None, "Python config file with get_config().", lock_config=True)


def define_attention_flag():
  """--attention for the entry points that run a model without a training config (generate, score, serve)."""
  return flags.DEFINE_string(
    "attention", "auto", "Self-attention implementation: xla, chunked, cudnn (GPU), splash (TPU) or auto."
  )


def required_config(config_flag, example: str):
  """The parsed config, or a one-line error naming an example when --config was not given."""
  if config_flag.value is None:
    raise UserError(f"--config is required (e.g. --config={example})")
  return config_flag.value


def parse_flags_or_exit(argv):
  """absl's parser, but a bad flag (e.g. a misspelt --config key) is one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def quiet_libraries() -> None:
  """Orbax and JAX log a lot at INFO through absl; keep warnings and errors."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
