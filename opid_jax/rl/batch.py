"""Step samples -> padded arrays for the update: shuffled mini-batches split into micro-batches.

Masks come from explicit lengths (never from comparing with a pad id), so a sampled end-of-turn token equal
to the pad id stays in the response with mask 1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from opid_jax.batching import packing, padding


@dataclasses.dataclass
class StepSample:
  prompt_ids: list[int]
  response_ids: list[int]
  old_logp: np.ndarray  # [len(response_ids)]
  advantages: np.ndarray  # [len(response_ids)], per token
  ref_logp: np.ndarray | None = None
  # Where the sample came from and what OPID's two signals said about it (for trajectory dumps; the update
  # reads only the fields above): (traj_id, step index), the step's episode advantage, and the sum over the
  # response of logp_skill - logp_old (None when no skill was routed to the step).
  source: tuple[int, int] | None = None
  episode_advantage: float = 0.0
  skill_logp_delta: float | None = None
  # The response's log-probs after the step's teacher (skill-augmented) prompt, from the scoring pass; read by the
  # update's distillation terms (algo.name sdar, opsd, grpo_opsd, skill_sd). None: no teacher for this step.
  teacher_logp: np.ndarray | None = None


def per_token_fields(with_ref: bool, with_teacher: bool = False) -> list[str]:
  """The per-token float arrays a micro-batch carries besides the tokens."""
  return ["old_logp", "advantages"] + ["ref_logp"] * with_ref + ["teacher_logp", "teacher_mask"] * with_teacher


def token_values(sample: StepSample, name: str) -> np.ndarray:
  if name == "teacher_mask":
    return np.full(len(sample.response_ids), float(sample.teacher_logp is not None), np.float32)
  if name == "teacher_logp" and sample.teacher_logp is None:
    return np.zeros(len(sample.response_ids), np.float32)
  return getattr(sample, name)


def pad_samples(
  samples: Sequence[StepSample],
  rows: int,
  prompt_len: int,
  response_len: int,
  pad_id: int,
  with_ref: bool,
  with_teacher: bool = False,
) -> dict[str, np.ndarray]:
  """[rows, ...] arrays; rows beyond len(samples) are padding with an all-zero response mask."""
  p_ids, p_mask = padding.pad_left([s.prompt_ids for s in samples], prompt_len, rows, pad_id)
  p_mask[len(samples) :, -1] = True  # filler rows hold one real prompt token so every row is well defined
  r_ids, r_mask = padding.pad_right([s.response_ids for s in samples], response_len, rows, pad_id)
  out = {"prompt_ids": p_ids, "prompt_mask": p_mask, "response_ids": r_ids, "response_mask": r_mask}
  for name in per_token_fields(with_ref, with_teacher):
    arr = np.zeros((rows, response_len), np.float32)
    for i, s in enumerate(samples):
      arr[i, : len(s.response_ids)] = token_values(s, name)
    out[name] = arr
  return out


def shuffled_minibatches(samples: Sequence[StepSample], mini_batch_size: int, seed: int) -> list[list[StepSample]]:
  """The samples shuffled (by seed) and cut into mini-batches: one optimizer step each."""
  order = np.random.RandomState(seed).permutation(len(samples))
  return [[samples[i] for i in order[start:stop]] for start, stop in padding.chunks(len(order), mini_batch_size)]


def stacked_micro_batches(
  part: Sequence[StepSample],
  *,
  micro_batch_size: int,
  pad_id: int,
  prompt_buckets: Sequence[int],
  response_buckets: Sequence[int],
  with_ref: bool = False,
  with_teacher: bool = False,
) -> dict[str, np.ndarray]:
  """One mini-batch padded to one (prompt, response) bucket, as [num_micro, micro_batch_size, ...] arrays."""
  num_micro = -(-len(part) // micro_batch_size)
  rows = num_micro * micro_batch_size
  p_len = padding.bucket_for(max(len(s.prompt_ids) for s in part), prompt_buckets, "prompt length")
  r_len = padding.bucket_for(max(len(s.response_ids) for s in part), response_buckets, "response length")
  flat = pad_samples(part, rows, p_len, r_len, pad_id, with_ref, with_teacher)
  return {k: v.reshape(num_micro, micro_batch_size, *v.shape[1:]) for k, v in flat.items()}


def length_sorted_micro_batches(
  part: Sequence[StepSample],
  *,
  micro_batch_size: int,
  pad_id: int,
  prompt_buckets: Sequence[int],
  response_buckets: Sequence[int],
  with_ref: bool = False,
  with_teacher: bool = False,
) -> list[dict[str, np.ndarray]]:
  """One mini-batch as micro-batches of similar prompt length, each padded to its own buckets ([micro_batch_size,
  ...] arrays). Together they hold exactly the mini-batch; only the padding shrinks (long prompts no longer pad
  every row of the mini-batch)."""
  order = sorted(range(len(part)), key=lambda i: (len(part[i].prompt_ids), len(part[i].response_ids)))
  micros = []
  for start, stop in padding.chunks(len(order), micro_batch_size):
    rows = [part[i] for i in order[start:stop]]
    p_len = padding.bucket_for(max(len(s.prompt_ids) for s in rows), prompt_buckets, "prompt length")
    r_len = padding.bucket_for(max(len(s.response_ids) for s in rows), response_buckets, "response length")
    micros.append(pad_samples(rows, micro_batch_size, p_len, r_len, pad_id, with_ref, with_teacher))
  return micros


def minibatches(
  samples: Sequence[StepSample],
  *,
  mini_batch_size: int,
  micro_batch_size: int,
  seed: int,
  pad_id: int,
  prompt_buckets: Sequence[int],
  response_buckets: Sequence[int],
  with_ref: bool = False,
) -> list[dict[str, np.ndarray]]:
  """Shuffles (by seed), cuts into mini-batches (one optimizer step each), pads each mini-batch to one
  (prompt, response) bucket, and shapes arrays as [num_micro, micro_batch_size, ...]."""
  return [
    stacked_micro_batches(
      part,
      micro_batch_size=micro_batch_size,
      pad_id=pad_id,
      prompt_buckets=prompt_buckets,
      response_buckets=response_buckets,
      with_ref=with_ref,
    )
    for part in shuffled_minibatches(samples, mini_batch_size, seed)
  ]


def packed_micro_batches(
  part: Sequence[StepSample],
  *,
  pack_length: int,
  micro_batch_tokens: int,
  pad_id: int,
  with_ref: bool = False,
  with_teacher: bool = False,
  row_multiple: int = 1,
  target_multiple: int = 64,
) -> tuple[list[dict[str, np.ndarray]], float]:
  """One mini-batch packed into rows (batching/packing.py), as micro-batches of [rows, ...] arrays, and the padding
  share of the token slots. The per-token fields sit at each sample's target columns."""
  batches = packing.pack(
    [s.prompt_ids for s in part],
    [s.response_ids for s in part],
    pack_length=pack_length,
    micro_batch_tokens=micro_batch_tokens,
    pad_id=pad_id,
    row_multiple=row_multiple,
    target_multiple=target_multiple,
  )
  micros = []
  for b in batches:
    micro = b.arrays()
    for name in per_token_fields(with_ref, with_teacher):
      micro[name] = b.scatter({i: token_values(part[i], name) for i in b.placement})
    micros.append(micro)
  return micros, packing.pad_share(batches)
