"""Per-token log-probs (and entropy) of given response tokens after given prompts.

One function serves every log-prob OPID needs (old policy, skill-augmented prompt, reference model, the
PPO objective itself). The vocabulary projection and log-softmax run over chunks of response positions
under `jax.checkpoint`, so [batch, length, vocab] logits never exist, in the forward or the backward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opid_jax.batching import packing, padding, prompt_length
from opid_jax.errors import UserError
from opid_jax.model.decoder import Decoder, positions_from_mask
from opid_jax.parallel.distributed import fetch  # gathers outputs that span several hosts

TRACE_COUNTS = {"score": 0}
DEFAULT_RESPONSE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


def _chunk_logprobs(hidden, targets, project, temperature, with_entropy):
  """hidden [B, c, D], targets [B, c] -> log-probs [B, c] (and entropy [B, c]) in float32."""
  logits = project(hidden) / temperature
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  logp = picked - log_z
  if not with_entropy:
    return logp, jnp.zeros_like(logp)
  probs = jnp.exp(logits - log_z[..., None])
  return logp, log_z - jnp.sum(probs * logits, axis=-1)


def _hidden_logprobs(model: Decoder, hidden, targets, target_mask, temperature, chunk_size, with_entropy):
  """hidden [B, T, D] (each predicting targets [B, T]) -> (logp, entropy) [B, T] float32, zero off the mask.

  The vocabulary projection runs in float32, over chunks of target positions under `jax.checkpoint`."""
  batch, length, dim = hidden.shape
  chunk = min(chunk_size, length)
  if length % chunk:
    raise ValueError(f"target length {length} is not a multiple of the chunk size {chunk}")
  n = length // chunk
  h_chunks = hidden.reshape(batch, n, chunk, dim).swapaxes(0, 1)
  t_chunks = targets.reshape(batch, n, chunk).swapaxes(0, 1)
  project = functools.partial(model.logits, dtype=jnp.float32)

  @jax.checkpoint
  def one(carry, xs):
    h, t = xs
    return carry, _chunk_logprobs(h, t, project, temperature, with_entropy)

  _, (logp, entropy) = jax.lax.scan(one, None, (h_chunks, t_chunks))
  logp = logp.swapaxes(0, 1).reshape(batch, length)
  entropy = entropy.swapaxes(0, 1).reshape(batch, length)
  valid = target_mask.astype(bool)
  return jnp.where(valid, logp, 0.0), jnp.where(valid, entropy, 0.0)


def token_logprobs(
  model: Decoder,
  prompt_ids,
  prompt_mask,
  response_ids,
  response_mask,
  *,
  temperature: float | jax.Array = 1.0,
  chunk_size: int = 64,
  with_entropy: bool = False,
):
  """Pure and differentiable. prompt_*: [B, P] left-padded; response_*: [B, R] right-padded.

  Returns (logp, entropy), each [B, R] float32, zero where response_mask is 0 (entropy zero without
  `with_entropy`).
  """
  prompt_len, resp_len = prompt_ids.shape[1], response_ids.shape[1]
  tokens = jnp.concatenate([prompt_ids, response_ids], axis=1)
  mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(bool)
  hidden, _ = model(tokens, positions_from_mask(mask), mask)
  hidden = hidden[:, prompt_len - 1 : prompt_len + resp_len - 1]  # position t predicts token t + 1
  return _hidden_logprobs(model, hidden, response_ids, response_mask, temperature, chunk_size, with_entropy)


def packed_logprobs(
  model: Decoder,
  tokens,
  positions,
  segment_ids,
  target_pos,
  targets,
  target_mask,
  *,
  temperature: float | jax.Array = 1.0,
  chunk_size: int = 64,
  with_entropy: bool = False,
):
  """Pure and differentiable, on packed rows (batching/packing.py): tokens, positions, segment_ids [B, L];
  target_pos, targets, target_mask [B, T]. Returns (logp, entropy) [B, T] float32, zero off the mask."""
  hidden, _ = model(tokens, positions, segment_ids > 0, segment_ids=segment_ids)
  hidden = jnp.take_along_axis(hidden, target_pos[..., None], axis=1)
  return _hidden_logprobs(model, hidden, targets, target_mask, temperature, chunk_size, with_entropy)


def micro_batch_logprobs(model: Decoder, micro: dict, *, temperature, chunk_size: int, with_entropy: bool):
  """(logp, entropy) [rows, T] of a micro-batch dict, packed (`segment_ids`, `target_pos`) or padded."""
  kwargs = dict(temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy)
  if "segment_ids" in micro:
    return packed_logprobs(
      model,
      micro["tokens"],
      micro["positions"],
      micro["segment_ids"],
      micro["target_pos"],
      micro["response_ids"],
      micro["response_mask"],
      **kwargs,
    )
  return token_logprobs(
    model, micro["prompt_ids"], micro["prompt_mask"], micro["response_ids"], micro["response_mask"], **kwargs
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size", "with_entropy"))
def score_micro_batch(graphdef, params, micro: dict, temperature, *, chunk_size: int, with_entropy: bool):
  TRACE_COUNTS["score"] += 1
  model = nnx.merge(graphdef, params)
  return micro_batch_logprobs(model, micro, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy)


@dataclasses.dataclass(frozen=True)
class Packing:
  """Packed scoring: rows of `pack_length` tokens, `micro_batch_tokens` per forward pass, rows per micro-batch a
  multiple of `row_multiple` (the data-parallel size)."""

  pack_length: int
  micro_batch_tokens: int
  row_multiple: int = 1


@dataclasses.dataclass
class ScoreOutput:
  logprobs: list[np.ndarray]  # one float32 array per response, its length
  entropy: list[np.ndarray] | None
  processed_tokens: int = 0  # token slots run through the model, padding included
  real_tokens: int = 0  # prompt + response tokens of the samples
  split_units: int = 0  # units of several samples too long for one packed row (scored in several rows)

  @property
  def pad_share(self) -> float:
    return 0.0 if self.processed_tokens == 0 else 1.0 - self.real_tokens / self.processed_tokens


class Scorer:
  """Host-side front end: packing (or length buckets), micro-batches, truncation, arrays back to per-row numpy."""

  def __init__(
    self,
    model: Decoder,
    pad_id: int,
    *,
    micro_batch: int = 8,
    chunk_size: int = 64,
    prompt_buckets: Sequence[int] = padding.DEFAULT_PROMPT_BUCKETS,
    response_buckets: Sequence[int] = DEFAULT_RESPONSE_BUCKETS,
    truncate_left: bool = False,
    packing: Packing | None = None,
    graphdef=None,
  ):
    self.graphdef, self.params = nnx.split(model)
    self.graphdef = graphdef or self.graphdef  # e.g. the same parameters run in another compute dtype
    self.pad_id = int(pad_id)
    self.micro_batch = micro_batch
    self.chunk_size = chunk_size
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.response_buckets = tuple(sorted(response_buckets))
    self.truncate_left = truncate_left
    self.packing = packing

  def set_params(self, params) -> None:
    self.params = params

  def score(
    self,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    params=None,
    units: Sequence[Sequence[int]] | None = None,
  ) -> ScoreOutput:
    """Per-token log-probs of each response after its prompt. `units`: groups of sample indices scored in the same
    packed row (same shapes, same kernels; ignored without packing)."""
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
      raise UserError("cannot score after an empty prompt")
    prompts = prompt_length.fit_all(prompts, max(self.prompt_buckets), "left" if self.truncate_left else "error")
    params = self.params if params is None else params
    out = ScoreOutput([None] * len(prompts), [None] * len(prompts) if with_entropy else None)
    out.real_tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    if not prompts:
      return out
    batches = self._packed(prompts, responses, units) if self.packing else self._padded(prompts, responses)
    if self.packing and units is not None:
      lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
      out.split_units = packing.split_units(lengths, units, self.packing.pack_length)
    for micro, placement in batches:
      chunk = min(self.chunk_size, micro["response_ids"].shape[1])
      lp, ent = score_micro_batch(
        self.graphdef, params, micro, jnp.float32(temperature), chunk_size=chunk, with_entropy=with_entropy
      )
      lp, ent = fetch((lp, ent))
      out.processed_tokens += sum(micro[k].size for k in ("tokens", "prompt_ids") if k in micro)
      out.processed_tokens += 0 if "tokens" in micro else micro["response_ids"].size
      for i, (r, c, n) in placement.items():
        out.logprobs[i] = np.asarray(lp[r, c : c + n])
        if with_entropy:
          out.entropy[i] = np.asarray(ent[r, c : c + n])
    return out

  def _packed(self, prompts, responses, units):
    batches = packing.pack(
      prompts,
      responses,
      pack_length=self.packing.pack_length,
      micro_batch_tokens=self.packing.micro_batch_tokens,
      pad_id=self.pad_id,
      units=units,
      row_multiple=self.packing.row_multiple,
      target_multiple=self.chunk_size,
    )
    return [(b.arrays(), b.placement) for b in batches]

  def _padded(self, prompts, responses):
    """Micro-batches of similar total length, each padded to its (prompt, response) buckets."""
    order = np.argsort([len(p) + len(r) for p, r in zip(prompts, responses)], kind="stable")
    for start, stop in padding.chunks(len(order), self.micro_batch):
      rows = order[start:stop]
      part_p = [prompts[i] for i in rows]
      part_r = [responses[i] for i in rows]
      p_len = padding.bucket_for(max(len(p) for p in part_p), self.prompt_buckets, "prompt length")
      r_len = padding.bucket_for(max(max(len(r) for r in part_r), 1), self.response_buckets, "response length")
      p_ids, p_mask = padding.pad_left(part_p, p_len, self.micro_batch, self.pad_id)
      p_mask[len(rows) :, -1] = True  # filler rows get one real token so every row is well defined
      r_ids, r_mask = padding.pad_right(part_r, r_len, self.micro_batch, self.pad_id)
      micro = {"prompt_ids": p_ids, "prompt_mask": p_mask, "response_ids": r_ids, "response_mask": r_mask}
      yield micro, {int(i): (j, 0, len(responses[i])) for j, i in enumerate(rows)}
