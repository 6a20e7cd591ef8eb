"""Continuous batching: `slots` sequences decode side by side, each with its own KV-cache row and length, and a
request leaves its slot the moment it ends, for the next waiting request to take.

One jitted call advances every active slot by up to `decode_steps` tokens (stop ids and each request's
`max_new_tokens` checked on device) and the host syncs once per call. Waiting requests are prefilled into free
slots several at once (right-padded to a prompt bucket, batch padded to a power of two) and their cache rows
copied into the slots. Each request draws its token t with `fold_in(request key, t)`, so what it generates does
not depend on which slot it ran in or beside which requests. Sampling knobs are per-slot traced arrays;
parameters are arguments, never closed over (`set_params` swaps them without recompiling).

The engine is driven by `step()` from one thread; `generate()` is the batch front end with `Sampler.generate`'s
signature and outputs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opid_jax.batching import padding, prompt_length
from opid_jax.errors import UserError
from opid_jax.generation.sampler import GenerationOutput, SamplingParams, sample_token
from opid_jax.model.decoder import Decoder, LayerCache, init_cache
from opid_jax.parallel.distributed import fetch

TRACE_COUNTS = {"prefill": 0, "decode": 0}  # incremented at trace time only: tests count compilations


class SlotState(NamedTuple):
  """Device state of every slot ([slots] arrays unless noted)."""

  cache: list[LayerCache]  # one per layer, [slots, kv_heads, head_dim, length] / [slots, kv_heads, length, head_dim]
  lengths: jax.Array  # tokens in the slot's cache: the prompt and the sampled tokens fed back so far
  last: jax.Array  # the last sampled token, not yet in the cache
  produced: jax.Array  # tokens sampled so far
  active: jax.Array  # still generating
  max_new: jax.Array
  temperature: jax.Array
  top_p: jax.Array
  top_k: jax.Array
  keys: jax.Array  # [slots, 2] the request's key


def init_state(cfg, slots: int, length: int) -> SlotState:
  def zeros(dtype=jnp.int32):  # a buffer each: the state is donated, and one buffer cannot be donated twice
    return jnp.zeros((slots,), dtype)

  return SlotState(
    init_cache(cfg, slots, length),
    zeros(),
    zeros(),
    zeros(),
    zeros(bool),
    zeros(),
    zeros(jnp.float32),
    jnp.ones((slots,), jnp.float32),
    zeros(),
    jnp.zeros((slots, 2), jnp.uint32),
  )


def _token_keys(keys, index):
  """Each row's key for its token number `index` (a scalar or one per row)."""
  return jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(index, keys.shape[:1]))


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("state",))
def prefill_slots(graphdef, params, state: SlotState, tokens, prompt_lengths, slots, knobs, stop_ids):
  """Prefills `tokens` [n, bucket] (right-padded) into `slots` [n] (out-of-range slot ids mark filler rows) and
  samples each request's first token. knobs: (max_new, temperature, top_p, top_k, keys), [n] each.
  Returns the new state, the first tokens and their log-probs [n]."""
  TRACE_COUNTS["prefill"] += 1
  model: Decoder = nnx.merge(graphdef, params)
  max_new, temperature, top_p, top_k, keys = knobs
  n, bucket = tokens.shape
  mask = jnp.arange(bucket)[None] < prompt_lengths[:, None]
  positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32)[None], (n, bucket))
  hidden, fresh = model(tokens, positions, mask, init_cache(model.cfg, n, bucket), 0)
  last_hidden = hidden[jnp.arange(n), jnp.maximum(prompt_lengths - 1, 0)]
  first, first_lp = sample_token(model.logits(last_hidden), _token_keys(keys, 0), temperature, top_p, top_k)
  active = ~jnp.isin(first, stop_ids) & (max_new > 1)
  cache = [
    LayerCache(
      old.k.at[slots, :, :, :bucket].set(new.k, mode="drop"),
      old.v.at[slots, :, :bucket, :].set(new.v, mode="drop"),
    )
    for old, new in zip(state.cache, fresh)
  ]

  def put(current, value):
    return current.at[slots].set(value.astype(current.dtype), mode="drop")

  state = SlotState(
    cache,
    put(state.lengths, prompt_lengths),
    put(state.last, first),
    put(state.produced, jnp.ones_like(first)),
    put(state.active, active),
    put(state.max_new, max_new),
    put(state.temperature, temperature),
    put(state.top_p, top_p),
    put(state.top_k, top_k),
    put(state.keys, keys),
  )
  return state, first, first_lp


@functools.partial(jax.jit, static_argnames=("graphdef", "steps"), donate_argnames=("state",))
def decode_slots(graphdef, params, state: SlotState, stop_ids, pad_id, *, steps: int):
  """Up to `steps` tokens for every active slot (fewer when all slots finish sooner). Returns the new state,
  the tokens and log-probs sampled [slots, steps] (pad / 0 where a slot was idle) and the loop's step count."""
  TRACE_COUNTS["decode"] += 1
  model: Decoder = nnx.merge(graphdef, params)
  slots = state.lengths.shape[0]
  cache_length = state.cache[0].v.shape[2]
  out_ids = jnp.full((slots, steps), pad_id, jnp.int32)
  out_lp = jnp.zeros((slots, steps), jnp.float32)

  def keep_going(carry):
    j, state, *_ = carry
    return (j < steps) & jnp.any(state.active)

  def decode_one(carry):
    j, state, out_ids, out_lp = carry
    fed = state.active
    kv_valid = jnp.arange(cache_length)[None] <= state.lengths[:, None]
    hidden, cache = model(state.last[:, None], state.lengths[:, None], kv_valid, state.cache, state.lengths)
    logits = model.logits(hidden[:, 0])
    token, lp = sample_token(
      logits, _token_keys(state.keys, state.produced), state.temperature, state.top_p, state.top_k
    )
    token = jnp.where(fed, token, pad_id)
    out_ids = out_ids.at[:, j].set(token)
    out_lp = out_lp.at[:, j].set(jnp.where(fed, lp, 0.0))
    step = fed.astype(jnp.int32)
    produced = state.produced + step
    state = state._replace(
      cache=cache,
      lengths=state.lengths + step,
      last=jnp.where(fed, token, state.last),
      produced=produced,
      active=fed & ~jnp.isin(token, stop_ids) & (produced < state.max_new),
    )
    return j + 1, state, out_ids, out_lp

  steps_run, state, out_ids, out_lp = jax.lax.while_loop(keep_going, decode_one, (jnp.int32(0), state, out_ids, out_lp))
  return state, out_ids, out_lp, steps_run


@functools.partial(jax.jit, donate_argnames=("active",))
def _deactivate(active, slot):
  return active.at[slot].set(False)


@dataclasses.dataclass(eq=False)
class Request:
  """One generation request; `tokens` / `logprobs` grow as the engine produces them."""

  prompt_ids: list[int]
  sampling: SamplingParams
  key: np.ndarray  # raw uint32 [2]
  on_tokens: Callable[[list[int]], None] | None = None  # called with each chunk of new ids, on the engine's thread
  tokens: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  finished: bool = False  # stopped on a stop id (False at the end: ran out of max_new_tokens)
  done: bool = False
  error: BaseException | None = None  # raised by on_tokens: the request ended early, the others went on
  slot: int = -1


@dataclasses.dataclass
class EngineStats:
  decode_calls: int = 0
  decode_steps: int = 0  # device loop iterations
  slot_steps: int = 0  # decode_steps x slots
  useful_tokens: int = 0  # tokens sampled for requests (first tokens included)
  prefill_calls: int = 0
  prefill_tokens: int = 0  # real prompt tokens prefilled
  prefill_padded_tokens: int = 0
  decode_tokens: int = 0  # tokens sampled by decode steps (useful_tokens less the first tokens)
  seconds: float = 0.0  # wall time inside step()

  def utilisation(self) -> float:
    """Useful decode tokens per slot-step (first tokens come from prefill, not from decode steps)."""
    return self.decode_tokens / self.slot_steps if self.slot_steps else 0.0


class ContinuousEngine:
  def __init__(
    self,
    model: Decoder,
    stop_ids: Sequence[int],
    pad_id: int,
    *,
    slots: int = 32,
    max_new_tokens: int = 512,
    decode_steps: int = 8,
    prompt_buckets: Sequence[int] = padding.DEFAULT_PROMPT_BUCKETS,
    truncate_left: bool = False,
  ):
    if not stop_ids:
      raise UserError("the engine needs at least one stop (end-of-turn / EOS) token id")
    if slots < 1 or decode_steps < 1 or max_new_tokens < 1:
      raise UserError("rollout.slots, rollout.decode_steps and max_new_tokens must be at least 1")
    self.graphdef, self.params = nnx.split(model)
    self.stop_ids = np.asarray(sorted(set(int(i) for i in stop_ids)), np.int32)
    self.pad_id = int(pad_id)
    self.slots = slots
    self.max_new_tokens = max_new_tokens
    self.decode_steps = decode_steps
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.batch_buckets = tuple(b for b in padding.DEFAULT_BATCH_BUCKETS if b < slots) + (slots,)
    self.truncate_left = truncate_left
    self.cache_length = max(self.prompt_buckets) + max_new_tokens
    self.state = init_state(model.cfg, slots, self.cache_length)
    self.stats = EngineStats()
    self._waiting: collections.deque[Request] = collections.deque()
    self._running: dict[int, Request] = {}  # slot -> request

  def set_params(self, params) -> None:
    """Swaps in new parameters (same structure): no recompilation. Call between requests' lifetimes."""
    self.params = params

  @property
  def busy(self) -> bool:
    return bool(self._waiting or self._running)

  @property
  def in_flight(self) -> int:
    """Requests waiting or decoding."""
    return len(self._waiting) + len(self._running)

  @property
  def free_slots(self) -> int:
    return self.slots - len(self._running)

  def submit(
    self,
    prompt_ids: Sequence[int],
    sampling: SamplingParams,
    key: jax.Array | int = 0,
    on_tokens: Callable[[list[int]], None] | None = None,
  ) -> Request:
    """Queues a request (cut on the left or refused when over the largest prompt bucket)."""
    if len(prompt_ids) == 0:
      raise UserError("cannot generate from an empty prompt")
    if not 1 <= sampling.max_new_tokens <= self.max_new_tokens:
      raise UserError(f"max_new_tokens {sampling.max_new_tokens} outside [1, {self.max_new_tokens}] of this engine")
    if isinstance(key, int):
      key = jax.random.PRNGKey(key)
    prompt = prompt_length.fit(prompt_ids, max(self.prompt_buckets), "left" if self.truncate_left else "error")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    request = Request(prompt, sampling, np.asarray(key, np.uint32), on_tokens)
    self._waiting.append(request)
    return request

  def step(self) -> list[Request]:
    """Admits waiting requests into free slots, decodes up to `decode_steps` tokens per slot; the requests that
    ended in this step."""
    start = time.perf_counter()
    admitted, firsts = self._admit()
    if not self._running:
      return []
    self.state, out_ids, out_lp, steps_run = decode_slots(
      self.graphdef, self.params, self.state, self.stop_ids, jnp.int32(self.pad_id), steps=self.decode_steps
    )
    out_ids, out_lp, steps_run, produced, active, firsts = fetch(
      (out_ids, out_lp, steps_run, self.state.produced, self.state.active, firsts)
    )
    ended = self._collect(admitted, firsts, out_ids, out_lp, produced, active)
    steps_run = int(steps_run)
    self.stats.decode_calls += 1
    self.stats.decode_steps += steps_run
    self.stats.slot_steps += steps_run * self.slots
    self.stats.seconds += time.perf_counter() - start
    return ended

  def generate(
    self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, key: jax.Array | int = 0
  ) -> GenerationOutput:
    """`Sampler.generate` through the slots: request i draws with `fold_in(key, i)`."""
    if isinstance(key, int):
      key = jax.random.PRNGKey(key)
    requests = [self.submit(p, sampling, jax.random.fold_in(key, i)) for i, p in enumerate(prompts)]
    while not all(r.done for r in requests):
      self.step()
    return GenerationOutput(
      [r.tokens for r in requests], [r.logprobs for r in requests], [r.finished for r in requests]
    )

  def cancel(self, request: Request) -> None:
    """Ends a request early (its slot is freed for the next one)."""
    if request in self._waiting:
      self._waiting.remove(request)
    elif request.slot in self._running:
      del self._running[request.slot]
      self.state = self.state._replace(active=_deactivate(self.state.active, jnp.int32(request.slot)))
    request.done = True

  # --- internals --------------------------------------------------------------------------------

  def _admit(self) -> tuple[list[Request], tuple]:
    """Prefills as many waiting requests as there are free slots: (the requests, (first ids, first log-probs)),
    the arrays left on device until the next sync."""
    free = [s for s in range(self.slots) if s not in self._running]
    taken = [self._waiting.popleft() for _ in range(min(len(free), len(self._waiting)))]
    if not taken:
      return [], ()
    for request, slot in zip(taken, free):
      request.slot = slot
      self._running[slot] = request
    rows = padding.bucket_for(len(taken), self.batch_buckets, "batch size")
    bucket = padding.bucket_for(max(len(r.prompt_ids) for r in taken), self.prompt_buckets, "prompt length")
    tokens, _ = padding.pad_right([r.prompt_ids for r in taken], bucket, rows, self.pad_id)
    filler = rows - len(taken)
    lengths = np.asarray([len(r.prompt_ids) for r in taken] + [0] * filler, np.int32)
    slots = np.asarray([r.slot for r in taken] + [self.slots] * filler, np.int32)
    s = [r.sampling for r in taken] + [taken[0].sampling] * filler
    knobs = (
      np.asarray([x.max_new_tokens for x in s], np.int32),
      np.asarray([x.temperature for x in s], np.float32),
      np.asarray([x.top_p for x in s], np.float32),
      np.asarray([x.top_k for x in s], np.int32),
      np.stack([r.key for r in taken] + [taken[0].key] * filler),
    )
    self.state, first, first_lp = prefill_slots(
      self.graphdef, self.params, self.state, tokens, lengths, slots, knobs, self.stop_ids
    )
    self.stats.prefill_calls += 1
    self.stats.prefill_tokens += int(lengths.sum())
    self.stats.prefill_padded_tokens += rows * bucket
    return taken, (first, first_lp)

  def _collect(self, admitted, firsts, out_ids, out_lp, produced, active) -> list[Request]:
    for i, request in enumerate(admitted):
      self._emit(request, [int(firsts[0][i])], [float(firsts[1][i])])
    ended = []
    for slot, request in list(self._running.items()):
      count = int(produced[slot]) - len(request.tokens)
      if count > 0 and not request.done:
        self._emit(request, out_ids[slot, :count].tolist(), out_lp[slot, :count].tolist())
        self.stats.decode_tokens += count
      if request.done or not active[slot]:
        if request.done:  # on_tokens raised: the slot may still be running on device
          self.state = self.state._replace(active=_deactivate(self.state.active, jnp.int32(slot)))
        del self._running[slot]
        request.done = True
        request.finished = request.error is None and bool(request.tokens) and request.tokens[-1] in self.stop_ids
        ended.append(request)
    return ended

  def _emit(self, request: Request, ids: list[int], logprobs: list[float]) -> None:
    if request.done:
      return
    request.tokens.extend(ids)
    request.logprobs.extend(logprobs)
    self.stats.useful_tokens += len(ids)
    if request.on_tokens is not None:
      try:
        request.on_tokens(ids)
      except Exception as error:  # one request's callback failing ends that request only
        request.error = error
        request.done = True
