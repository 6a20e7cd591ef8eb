"""Step samples -> padded arrays for the update: shuffled mini-batches split into micro-batches.

Masks come from explicit lengths (never from comparing with a pad id), so a sampled end-of-turn token equal
to the pad id stays in the response with mask 1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from opid_jax.model import padding


@dataclasses.dataclass
class StepSample:
  prompt_ids: list[int]
  response_ids: list[int]
  old_logp: np.ndarray  # [len(response_ids)]
  advantages: np.ndarray  # [len(response_ids)], per token
  ref_logp: np.ndarray | None = None


def pad_samples(samples: Sequence[StepSample], rows: int, prompt_len: int, response_len: int, pad_id: int,
                with_ref: bool) -> dict[str, np.ndarray]:
  """[rows, ...] arrays; rows beyond len(samples) are padding with an all-zero response mask."""
  p_ids, p_mask = padding.pad_left([s.prompt_ids for s in samples], prompt_len, rows, pad_id)
  p_mask[len(samples):, -1] = True  # filler rows hold one real prompt token so every row is well defined
  r_ids, r_mask = padding.pad_right([s.response_ids for s in samples], response_len, rows, pad_id)
  out = {"prompt_ids": p_ids, "prompt_mask": p_mask, "response_ids": r_ids, "response_mask": r_mask}
  fields = ["old_logp", "advantages"] + (["ref_logp"] if with_ref else [])
  for name in fields:
    arr = np.zeros((rows, response_len), np.float32)
    for i, s in enumerate(samples):
      arr[i, :len(s.response_ids)] = getattr(s, name)
    out[name] = arr
  return out


def minibatches(samples: Sequence[StepSample], *, mini_batch_size: int, micro_batch_size: int, seed: int,
                pad_id: int, prompt_buckets: Sequence[int], response_buckets: Sequence[int],
                with_ref: bool = False) -> list[dict[str, np.ndarray]]:
  """Shuffles (by seed), cuts into mini-batches (one optimizer step each), pads each mini-batch to one
  (prompt, response) bucket, and shapes arrays as [num_micro, micro_batch_size, ...]."""
  order = np.random.RandomState(seed).permutation(len(samples))
  batches = []
  for start, stop in padding.chunks(len(order), mini_batch_size):
    part = [samples[i] for i in order[start:stop]]
    num_micro = -(-len(part) // micro_batch_size)
    rows = num_micro * micro_batch_size
    p_len = padding.bucket_for(max(len(s.prompt_ids) for s in part), prompt_buckets, "prompt length")
    r_len = padding.bucket_for(max(len(s.response_ids) for s in part), response_buckets, "response length")
    flat = pad_samples(part, rows, p_len, r_len, pad_id, with_ref)
    batches.append({k: v.reshape(num_micro, micro_batch_size, *v.shape[1:]) for k, v in flat.items()})
  return batches
