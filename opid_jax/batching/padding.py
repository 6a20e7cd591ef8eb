"""Padding token-id lists into a few bucket shapes (host-side numpy): fewer shapes, fewer compilations."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from opid_jax.errors import UserError

DEFAULT_PROMPT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def bucket_for(n: int, buckets: Sequence[int], what: str) -> int:
  for b in sorted(buckets):
    if n <= b:
      return b
  raise UserError(
    f"{what} of {n} exceeds the largest bucket ({max(buckets)}); raise the buckets or enable left truncation"
  )


def pad_left(seqs: Sequence[Sequence[int]], length: int, rows: int, pad_id: int):
  """[rows, length] ids and mask, each sequence right-aligned; extra rows are all padding."""
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for i, s in enumerate(seqs):
    if len(s):
      ids[i, length - len(s) :] = s
      mask[i, length - len(s) :] = True
  return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], length: int, rows: int, pad_id: int):
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for i, s in enumerate(seqs):
    ids[i, : len(s)] = s
    mask[i, : len(s)] = True
  return ids, mask


def chunks(n: int, size: int):
  """(start, stop) ranges of at most `size` covering range(n)."""
  return [(i, min(i + size, n)) for i in range(0, n, size)]


def buckets_up_to(limit: int, buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS) -> tuple[int, ...]:
  """The default buckets below `limit`, with `limit` itself as the largest."""
  return tuple(b for b in buckets if b < limit) + (limit,)
