"""Where the shared data lives: ../shared/data beside the checkout (as in CI), or OPID_SHARED_DATA.

Missing data is an error, not a skip: a test suite that silently skips its real-data tests proves nothing.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("OPID_SHARED_DATA") or os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))


def shared_path(*parts: str) -> str:
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"shared test data missing: {path} (put shared/ beside the checkout or set OPID_SHARED_DATA)"
    )
  return path


ALFWORLD_ARCHIVE_DEFAULT = os.path.join(SHARED_DATA, "alfworld", "json_2.1.1.tar.gz")
