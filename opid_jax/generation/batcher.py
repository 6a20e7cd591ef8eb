"""Gathers concurrent requests into batched sampler calls (one worker thread owns the sampler).

A `GenerationBackend` (see generation/backend.py) with static batches: a request's tokens all arrive at once.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import Future
from typing import Sequence

import jax

from opid_jax.generation.backend import Completion, TokenCallback
from opid_jax.generation.sampler import Sampler, SamplingParams

__all__ = ["Completion", "RequestBatcher"]


@dataclasses.dataclass
class _Request:
  prompt_ids: list[int]
  sampling: SamplingParams
  max_tokens: int  # <= sampling.max_new_tokens, which is rounded up so that requests share compilations
  future: Future
  on_tokens: TokenCallback | None


class RequestBatcher:
  """Requests with equal sampling settings that arrive within `window_s` of each other share one call."""

  def __init__(self, sampler: Sampler, tokenizer, *, max_batch: int = 32, window_s: float = 0.01, seed: int = 0):
    self.sampler, self.tokenizer = sampler, tokenizer
    self.max_batch, self.window_s = max_batch, window_s
    self.batches = 0
    self.requests = 0
    self._key = jax.random.PRNGKey(seed)
    self._queue: queue.Queue = queue.Queue()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
    self._thread.start()

  def submit(
    self,
    prompt_ids: Sequence[int],
    sampling: SamplingParams,
    max_tokens: int | None = None,
    on_tokens: TokenCallback | None = None,
  ) -> Future:
    """A Future of a Completion with at most `max_tokens` tokens (None: `sampling.max_new_tokens`)."""
    future: Future = Future()
    limit = sampling.max_new_tokens if max_tokens is None else max_tokens
    # A power-of-two decode length lets requests share compiled decode loops; the answer is cut to `limit`.
    bucketed = dataclasses.replace(sampling, max_new_tokens=1 << (max(limit, 1) - 1).bit_length())
    self._queue.put(_Request(list(prompt_ids), bucketed, limit, future, on_tokens))
    return future

  def stats(self) -> dict:
    return {"batches": self.batches, "requests": self.requests}

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)

  def _gather(self) -> list[_Request]:
    try:
      first = self._queue.get(timeout=0.1)
    except queue.Empty:
      return []
    batch, deadline = [first], time.monotonic() + self.window_s
    while len(batch) < self.max_batch:
      left = deadline - time.monotonic()
      if left <= 0:
        break
      try:
        batch.append(self._queue.get(timeout=left))
      except queue.Empty:
        break
    return batch

  def _loop(self) -> None:
    while not self._stop.is_set():
      # Requests whose caller gave up (a cancelled future) are dropped; the others can no longer be cancelled.
      pending = [r for r in self._gather() if r.future.set_running_or_notify_cancel()]
      groups: dict[SamplingParams, list[_Request]] = {}
      for request in pending:
        groups.setdefault(request.sampling, []).append(request)
      for sampling, requests in groups.items():
        self._run(sampling, requests)

  def _run(self, sampling: SamplingParams, requests: list[_Request]) -> None:
    try:
      self._key, key = jax.random.split(self._key)
      out = self.sampler.generate([r.prompt_ids for r in requests], sampling, key=key)
      self.batches += 1
      self.requests += len(requests)
    except Exception as e:  # the server answers each request with the error instead of hanging
      for r in requests:
        r.future.set_exception(e)
      return
    for r, tokens, finished in zip(requests, out.tokens, out.finished):
      if len(tokens) > r.max_tokens:
        tokens, finished = tokens[: r.max_tokens], False
      try:
        if r.on_tokens is not None:
          r.on_tokens(list(tokens))
        r.future.set_result(Completion(list(tokens), len(r.prompt_ids), len(tokens), "stop" if finished else "length"))
      except Exception as e:  # a failing callback fails its own request only
        r.future.set_exception(e)
