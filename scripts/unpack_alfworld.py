"""Unpacks the ALFWorld text games (json_2.1.1.tar.gz) into a data folder, for `make data`.

  python scripts/unpack_alfworld.py --archive=/work/shared/data/alfworld/json_2.1.1.tar.gz \
      --dest=data/alfworld [--splits=valid_seen,valid_unseen]

The result is DEST/json_2.1.1/<split>/.../game.tw-pddl, the layout `alfworld-download` produces, so
`AlfworldEnv(data_dir=DEST)` works either way. Splits already present are left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile

SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train")
ARCHIVE_SHA256 = "3d312fabf52b6c83723e6a4d4ded9e9d130115ce37d96215efe421ff9e2928c0"
DATASET_FOLDER = "json_2.1.1"


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def split_of(member_name: str) -> str:
  parts = member_name.split("/")
  return parts[1] if len(parts) > 1 and parts[0] == DATASET_FOLDER else ""


def unpack(archive: str, dest: str, splits: tuple[str, ...]) -> int:
  """Extracts the game files of `splits` that are missing; returns how many files it wrote."""
  wanted = [s for s in splits if not os.path.isdir(os.path.join(dest, DATASET_FOLDER, s))]
  if not wanted:
    return 0
  written = 0
  os.makedirs(dest, exist_ok=True)
  with tarfile.open(archive, "r:gz") as tar:
    for member in tar:
      if member.isfile() and split_of(member.name) in wanted:
        tar.extract(member, dest, filter="data")
        written += 1
  return written


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--archive", required=True, help="path of json_2.1.1.tar.gz")
  parser.add_argument("--dest", default="data/alfworld")
  parser.add_argument("--splits", default=",".join(SPLITS))
  parser.add_argument("--skip_checksum", action="store_true")
  args = parser.parse_args()
  splits = tuple(s for s in args.splits.split(",") if s)
  unknown = set(splits) - set(SPLITS)
  if unknown:
    sys.exit(f"unknown splits {sorted(unknown)}; choose from {SPLITS}")
  if not args.skip_checksum and sha256_of(args.archive) != ARCHIVE_SHA256:
    sys.exit(f"{args.archive}: sha256 differs from the published archive; pass --skip_checksum to unpack it anyway")
  written = unpack(args.archive, args.dest, splits)
  print(f"{written} files written under {os.path.join(args.dest, DATASET_FOLDER)}")


if __name__ == "__main__":
  main()
