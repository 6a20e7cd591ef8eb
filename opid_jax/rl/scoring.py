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

from opid_jax.batching import padding, prompt_length
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
  chunk = min(chunk_size, resp_len)
  if resp_len % chunk:
    raise ValueError(f"response length {resp_len} is not a multiple of the chunk size {chunk}")
  n = resp_len // chunk
  batch, _, dim = hidden.shape
  h_chunks = hidden.reshape(batch, n, chunk, dim).swapaxes(0, 1)
  t_chunks = response_ids.reshape(batch, n, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one(carry, xs):
    h, t = xs
    return carry, _chunk_logprobs(h, t, model.logits, temperature, with_entropy)

  _, (logp, entropy) = jax.lax.scan(one, None, (h_chunks, t_chunks))
  logp = logp.swapaxes(0, 1).reshape(batch, resp_len)
  entropy = entropy.swapaxes(0, 1).reshape(batch, resp_len)
  valid = response_mask.astype(bool)
  return jnp.where(valid, logp, 0.0), jnp.where(valid, entropy, 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size", "with_entropy"))
def score_arrays(
  graphdef,
  params,
  prompt_ids,
  prompt_mask,
  response_ids,
  response_mask,
  temperature,
  *,
  chunk_size: int,
  with_entropy: bool,
):
  TRACE_COUNTS["score"] += 1
  model = nnx.merge(graphdef, params)
  return token_logprobs(
    model,
    prompt_ids,
    prompt_mask,
    response_ids,
    response_mask,
    temperature=temperature,
    chunk_size=chunk_size,
    with_entropy=with_entropy,
  )


@dataclasses.dataclass
class ScoreOutput:
  logprobs: list[np.ndarray]  # one float32 array per response, its length
  entropy: list[np.ndarray] | None


class Scorer:
  """Host-side front end: buckets, micro-batches, truncation, arrays back to per-row numpy."""

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
  ):
    self.graphdef, self.params = nnx.split(model)
    self.pad_id = int(pad_id)
    self.micro_batch = micro_batch
    self.chunk_size = chunk_size
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.response_buckets = tuple(sorted(response_buckets))
    self.truncate_left = truncate_left

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
  ) -> ScoreOutput:
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
      raise UserError("cannot score after an empty prompt")
    prompts = prompt_length.fit_all(prompts, max(self.prompt_buckets), "left" if self.truncate_left else "error")
    params = self.params if params is None else params
    order = np.argsort([len(p) + len(r) for p, r in zip(prompts, responses)], kind="stable")
    logprobs: list = [None] * len(prompts)
    entropy: list = [None] * len(prompts)
    for start, stop in padding.chunks(len(order), self.micro_batch):
      rows = order[start:stop]
      part_p = [prompts[i] for i in rows]
      part_r = [responses[i] for i in rows]
      p_len = padding.bucket_for(max(len(p) for p in part_p), self.prompt_buckets, "prompt length")
      r_len = padding.bucket_for(max(max(len(r) for r in part_r), 1), self.response_buckets, "response length")
      p_ids, p_mask = padding.pad_left(part_p, p_len, self.micro_batch, self.pad_id)
      p_mask[len(rows) :, -1] = True  # filler rows get one real token so every row is well defined
      r_ids, r_mask = padding.pad_right(part_r, r_len, self.micro_batch, self.pad_id)
      lp, ent = score_arrays(
        self.graphdef,
        params,
        p_ids,
        p_mask,
        r_ids,
        r_mask,
        jnp.float32(temperature),
        chunk_size=min(self.chunk_size, r_len),
        with_entropy=with_entropy,
      )
      lp, ent = fetch((lp, ent))
      for j, i in enumerate(rows):
        n = len(responses[i])
        logprobs[i] = np.asarray(lp[j, :n])
        entropy[i] = np.asarray(ent[j, :n])
    return ScoreOutput(logprobs, entropy if with_entropy else None)
