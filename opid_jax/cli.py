"""Shared pieces of the absl entry points."""

from __future__ import annotations

import sys

from absl import flags


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
