"""The CPU study's durable records: every finished piece of the study (the SFT policy, probe results, tuning runs,
the initial evaluation, each RL run) is copied, without its checkpoints and caches, into a store folder that is
committed with the repository (results/cpu_study/ by default), laid out like the study's root. A machine that
loses its run folders loses nothing finished: the next invocation copies the store back into the root and skips
what is there.

A piece is one path relative to the root: a file (probe_policy.json) or a folder (runs/opid_s0). The store holds
only finished pieces, so it is authoritative: a root copy whose done-marker is missing or differs from the
store's is replaced by the store's."""

from __future__ import annotations

import filecmp
import os
import shutil

# Orbax state (large; a finished piece never resumes), per-iteration trajectory dumps (~3 MB a run) and TensorBoard
# copies of metrics.jsonl: the report reads none of them.
SKIPPED_DIRS = ("checkpoints", "trajectories", "tb")
SKIPPED_FILES = ("expert_steps.jsonl", "curves.png")  # the SFT replay cache; a run's plot of its metrics.jsonl
DONE_MARKERS = ("summary.md", "eval.json", "sft_summary.json")  # the file a finished folder piece always has


def _ignore(directory: str, names: list[str]) -> set[str]:
  return {n for n in names if (n in SKIPPED_DIRS and os.path.isdir(os.path.join(directory, n))) or n in SKIPPED_FILES}


def _copy(src: str, dst: str) -> None:
  """Copies a piece; the destination appears whole or not at all (copied beside it, then renamed over it)."""
  os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
  tmp = dst + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  if os.path.isdir(src):
    shutil.copytree(src, tmp, ignore=_ignore)
  else:
    shutil.copyfile(src, tmp)
  if os.path.isdir(dst):
    shutil.rmtree(dst)
  os.replace(tmp, dst)


def marker(path: str) -> str | None:
  """The file that says the piece at `path` is finished (the piece itself when it is a file), or None."""
  if os.path.isfile(path):
    return path
  found = [os.path.join(path, m) for m in DONE_MARKERS if os.path.isfile(os.path.join(path, m))]
  return found[0] if found else None


def record(root: str, store: str, piece: str) -> None:
  """Copies the finished piece ROOT/piece into STORE/piece."""
  if not store:
    return
  src = os.path.join(root, piece)
  if marker(src) is None:
    raise ValueError(f"{src} is not a finished piece (none of {DONE_MARKERS})")
  _copy(src, os.path.join(store, piece))


def stored_pieces(store: str) -> list[str]:
  """Relative paths of the pieces in the store: its top-level files, and folders with a done-marker (searched
  down from the top, a piece's own subfolders are not pieces)."""
  pieces = []
  if not store or not os.path.isdir(store):
    return pieces
  for dirpath, dirnames, filenames in os.walk(store):
    rel = os.path.relpath(dirpath, store)
    if rel != "." and marker(dirpath):
      pieces.append(rel)
      dirnames[:] = []
      continue
    if rel == ".":
      pieces += [f for f in filenames if not f.endswith(".partial")]
    dirnames[:] = sorted(d for d in dirnames if not d.endswith(".partial"))
  return sorted(pieces)


def restore(store: str, root: str) -> list[str]:
  """Copies into ROOT every stored piece that ROOT lacks or holds unfinished or different; returns those pieces."""
  restored = []
  for piece in stored_pieces(store):
    src, dst = os.path.join(store, piece), os.path.join(root, piece)
    theirs = marker(src)
    ours = os.path.join(dst, os.path.relpath(theirs, src)) if os.path.isdir(src) else dst
    if os.path.isfile(ours) and filecmp.cmp(theirs, ours, shallow=False):
      continue
    _copy(src, dst)
    restored.append(piece)
  return restored
