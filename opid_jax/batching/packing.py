"""Packing (prompt, response) samples into rows of tokens: first-fit-decreasing, segment ids, restarting positions.

A packed row holds several samples one after another; each sample is a segment (ids 1, 2, ... in the row, 0 for
padding) whose positions restart at 0, and attention never crosses a segment. The response tokens of every
sample are gathered into a compact target axis: `target_pos[r, j]` is the row position whose hidden state
predicts `targets[r, j]`, so the vocabulary projection runs on response tokens only.

Samples listed together in one unit (e.g. a step's prompt without and with its skill) share a row when they fit in
one, so they are scored with the same shapes and kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from opid_jax.errors import UserError

MIN_ROW = 64


@dataclasses.dataclass
class PackedBatch:
  """Host arrays of one micro-batch of packed rows, and where each sample's response tokens sit."""

  tokens: np.ndarray  # [rows, L] int32
  positions: np.ndarray  # [rows, L] int32, restarting at 0 per segment
  segment_ids: np.ndarray  # [rows, L] int32, 0 = padding
  target_pos: np.ndarray  # [rows, T] int32
  targets: np.ndarray  # [rows, T] int32
  target_mask: np.ndarray  # [rows, T] bool
  placement: dict[int, tuple[int, int, int]]  # sample index -> (row, first target column, response length)

  @property
  def processed_tokens(self) -> int:
    return int(self.tokens.size)

  @property
  def real_tokens(self) -> int:
    return int(np.count_nonzero(self.segment_ids))

  def arrays(self) -> dict[str, np.ndarray]:
    """The arrays the model reads; `response_*` name the targets, as in padded micro-batches."""
    return {
      "tokens": self.tokens,
      "positions": self.positions,
      "segment_ids": self.segment_ids,
      "target_pos": self.target_pos,
      "response_ids": self.targets,
      "response_mask": self.target_mask,
    }

  def scatter(self, per_sample: dict[int, np.ndarray]) -> np.ndarray:
    """[rows, T] float32 array holding each sample's per-token values at its target columns (0 elsewhere)."""
    out = np.zeros(self.targets.shape, np.float32)
    for i, (r, c, n) in self.placement.items():
      out[r, c : c + n] = per_sample[i]
    return out


def row_length_for(longest_sample: int) -> int:
  """The default packed row length: the power of two (>= MIN_ROW) that holds the longest possible sample."""
  size = MIN_ROW
  while size < longest_sample:
    size *= 2
  return size


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Bins of item indices whose lengths sum to at most `capacity`; longest items placed first."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  bins: list[list[int]] = []
  room: list[int] = []
  for i in order:
    if lengths[i] > capacity:
      raise UserError(f"a sample of {lengths[i]} tokens does not fit train.pack_length={capacity}; raise it")
    for b, free in enumerate(room):
      if lengths[i] <= free:
        bins[b].append(i)
        room[b] -= lengths[i]
        break
    else:
      bins.append([i])
      room.append(capacity - lengths[i])
  return bins


def _bucket(n: int, limit: int, multiple: int = MIN_ROW) -> int:
  """n rounded up to one of eight steps per octave (multiples of `multiple`), capped at `limit`: at most 1/8 of a
  row is bucket slack, and few distinct shapes compile."""
  size = multiple
  while size < n:
    size *= 2
  step = max(multiple, size // 8)
  return max(min(-(-n // step) * step, limit), n)


def micro_batch_rows(num_rows: int, rows_per_micro: int, row_multiple: int = 1) -> list[int]:
  """Row counts of consecutive micro-batches covering `num_rows` rows: full micro-batches, then the rest split into
  power-of-two multiples of `row_multiple` (so at most row_multiple - 1 filler rows are ever added)."""
  rows_per_micro = max(row_multiple, rows_per_micro // row_multiple * row_multiple)
  sizes = [rows_per_micro] * (num_rows // rows_per_micro)
  rest = num_rows - sum(sizes)
  rest = -(-rest // row_multiple) * row_multiple
  while rest:
    piece = row_multiple
    while piece * 2 <= rest:
      piece *= 2
    sizes.append(piece)
    rest -= piece
  return sizes


def fit_units(lengths: Sequence[int], units: Sequence[Sequence[int]], pack_length: int) -> list[list[int]]:
  """The units as packed: one longer than a row is split into its samples (they then share a micro-batch only by
  chance)."""
  return [
    list(part) for u in units for part in ([u] if sum(lengths[i] for i in u) <= pack_length else [[i] for i in u])
  ]


def split_units(lengths: Sequence[int], units: Sequence[Sequence[int]], pack_length: int) -> int:
  """How many units of several samples do not fit one row (and are scored in several rows)."""
  return sum(1 for u in units if len(u) > 1 and sum(lengths[i] for i in u) > pack_length)


def _capacities(unit_lengths: Sequence[int], pack_length: int) -> list[int]:
  """Row lengths worth trying: the bucket steps from the longest unit up to pack_length (few distinct shapes)."""
  out = [_bucket(max(unit_lengths), pack_length)]
  while out[-1] < pack_length:
    out.append(_bucket(out[-1] + 1, pack_length))
  return out


def _layouts(unit_lengths: Sequence[int], capacity: int, micro_batch_tokens: int, row_multiple: int):
  """Ways to lay out rows of at most `capacity` tokens: lists of micro-batches (bins of unit indices, row length,
  rows incl. filler). First-fit-decreasing leaves at most one bin half full or less; it may get a micro-batch of
  its own with shorter rows."""
  bins = first_fit_decreasing(unit_lengths, capacity)
  fill = [sum(unit_lengths[u] for u in b) for b in bins]
  order = sorted(range(len(bins)), key=lambda b: -fill[b])
  if len(order) > 1 and fill[order[-1]] * 2 <= capacity:
    yield _micro_batches([order[:-1], order[-1:]], bins, fill, capacity, micro_batch_tokens, row_multiple)
  yield _micro_batches([order], bins, fill, capacity, micro_batch_tokens, row_multiple)


def _micro_batches(groups, bins, fill, capacity, micro_batch_tokens, row_multiple):
  layout = []
  for group in groups:
    row_len = _bucket(max(fill[b] for b in group), capacity)
    start = 0
    for size in micro_batch_rows(len(group), max(1, micro_batch_tokens // row_len), row_multiple):
      layout.append(([bins[b] for b in group[start : start + size]], row_len, size))
      start += size
  return layout


def pack(
  prompts: Sequence[Sequence[int]],
  responses: Sequence[Sequence[int]],
  *,
  pack_length: int,
  micro_batch_tokens: int,
  pad_id: int,
  units: Sequence[Sequence[int]] | None = None,
  row_multiple: int = 1,
  target_multiple: int = 64,
) -> list[PackedBatch]:
  """Packs samples (prompt i + response i) into micro-batches of rows.

  units: groups of sample indices that must share a row (default: each sample alone). Row length: of the bucketed
  lengths up to pack_length, the one that processes the fewest token slots (a last, mostly empty row may get
  shorter rows of its own). Rows per micro-batch: micro_batch_tokens // row length (a multiple of row_multiple, e.g.
  the data-parallel size).
  """
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
  units = [list(u) for u in units] if units is not None else [[i] for i in range(len(prompts))]
  if sorted(i for u in units for i in u) != list(range(len(prompts))):
    raise ValueError("units must list every sample index exactly once")
  units = fit_units(lengths, units, pack_length)
  unit_lengths = [sum(lengths[i] for i in u) for u in units]
  # The row length that processes the fewest token slots, padding and filler rows included: samples of ~650 tokens
  # fill rows of 2,048 to 95 % at best (three fit), rows of 1,280 to 100 % (two fit).
  layouts = [
    layout
    for capacity in _capacities(unit_lengths, pack_length)
    for layout in _layouts(unit_lengths, capacity, micro_batch_tokens, row_multiple)
  ]
  best = min(layouts, key=lambda m: (sum(size * row_len for _, row_len, size in m), len(m)))
  return [
    _fill([[i for u in b for i in units[u]] for b in part], size, row_len, prompts, responses, pad_id, target_multiple)
    for part, row_len, size in best
  ]


def _fill(rows, num_rows, row_len, prompts, responses, pad_id, target_multiple) -> PackedBatch:
  targets_per_row = [sum(len(responses[i]) for i in r) for r in rows]
  t_len = _bucket(max(max(targets_per_row, default=1), 1), 1 << 30, target_multiple)
  tokens = np.full((num_rows, row_len), pad_id, np.int32)
  positions = np.zeros((num_rows, row_len), np.int32)
  segments = np.zeros((num_rows, row_len), np.int32)
  target_pos = np.zeros((num_rows, t_len), np.int32)
  targets = np.full((num_rows, t_len), pad_id, np.int32)
  target_mask = np.zeros((num_rows, t_len), bool)
  placement = {}
  for r, samples in enumerate(rows):
    col, tcol = 0, 0
    for seg, i in enumerate(samples, start=1):
      p, resp = prompts[i], responses[i]
      n = len(p) + len(resp)
      tokens[r, col : col + n] = list(p) + list(resp)
      positions[r, col : col + n] = np.arange(n)
      segments[r, col : col + n] = seg
      k = len(resp)
      target_pos[r, tcol : tcol + k] = col + len(p) - 1 + np.arange(k)  # position t predicts token t + 1
      targets[r, tcol : tcol + k] = resp
      target_mask[r, tcol : tcol + k] = True
      placement[i] = (r, tcol, k)
      col += n
      tcol += k
  return PackedBatch(tokens, positions, segments, target_pos, targets, target_mask, placement)


def pad_share(batches: Sequence[PackedBatch]) -> float:
  processed = sum(b.processed_tokens for b in batches)
  return 0.0 if processed == 0 else 1.0 - sum(b.real_tokens for b in batches) / processed
