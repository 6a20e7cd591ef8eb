"""Gathers concurrent chat requests into batched sampler calls (one worker thread owns the sampler)."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import Future
from typing import Sequence

import jax

from opid_jax.generation.sampler import Sampler, SamplingParams


@dataclasses.dataclass
class Completion:
  text: str
  prompt_tokens: int
  completion_tokens: int
  finish_reason: str  # "stop" or "length"


@dataclasses.dataclass
class _Request:
  prompt_ids: list[int]
  sampling: SamplingParams
  max_tokens: int  # <= sampling.max_new_tokens, which is rounded up so that requests share compilations
  future: Future


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

  def submit(self, prompt_ids: Sequence[int], sampling: SamplingParams, max_tokens: int | None = None) -> Future:
    future: Future = Future()
    limit = sampling.max_new_tokens if max_tokens is None else min(max_tokens, sampling.max_new_tokens)
    self._queue.put(_Request(list(prompt_ids), sampling, limit, future))
    return future

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
      pending = self._gather()
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
      for r, tokens, finished in zip(requests, out.tokens, out.finished):
        if len(tokens) > r.max_tokens:
          tokens, finished = tokens[: r.max_tokens], False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        r.future.set_result(Completion(text, len(r.prompt_ids), len(tokens), "stop" if finished else "length"))
    except Exception as e:  # the server answers each request with the error instead of hanging
      for r in requests:
        if not r.future.done():
          r.future.set_exception(e)
