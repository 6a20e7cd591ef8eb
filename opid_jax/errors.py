"""One exception type for problems a user can fix; entry points print it as one line and exit 2."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
  """Bad input (a path, a config value, a model type): the message names the problem."""


def exit_on_user_error(fn):
  """Decorates an entry point so a UserError prints `error: ...` on stderr and exits with code 2."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapper
