"""A `GenerationBackend` (generation/backend.py) over the continuous engine: one thread owns the engine, and a
request joins the running slots at the engine's next step instead of waiting for a batch to finish; its tokens
stream out after every device call."""

from __future__ import annotations

import dataclasses
import queue
import threading
from concurrent.futures import Future
from typing import Sequence

import jax

from opid_jax.errors import UserError
from opid_jax.generation.backend import Completion, TokenCallback
from opid_jax.generation.engine import ContinuousEngine, Request
from opid_jax.generation.sampler import SamplingParams


class MaxTokensTooLarge(UserError):
  """max_tokens beyond what the engine's slots hold."""


class EngineBackend:
  def __init__(self, engine: ContinuousEngine, *, seed: int = 0):
    self.engine = engine
    self._key = jax.random.PRNGKey(seed)
    self._count = 0
    self._inbox: queue.Queue = queue.Queue()
    self._futures: dict[Request, Future] = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
    self._thread.start()

  def submit(
    self,
    prompt_ids: Sequence[int],
    sampling: SamplingParams,
    max_tokens: int | None = None,
    on_tokens: TokenCallback | None = None,
  ) -> Future:
    future: Future = Future()
    limit = sampling.max_new_tokens if max_tokens is None else max_tokens
    if limit > self.engine.max_new_tokens:
      future.set_exception(MaxTokensTooLarge(f"max_tokens {limit} exceeds this server's {self.engine.max_new_tokens}"))
      return future
    self._inbox.put((list(prompt_ids), dataclasses.replace(sampling, max_new_tokens=limit), on_tokens, future))
    return future

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)

  def stats(self) -> dict:
    s = self.engine.stats
    return {
      "requests": self._count,
      "in_flight": self.engine.in_flight,
      "slots": self.engine.slots,
      "decode_calls": s.decode_calls,
      "slot_utilisation": s.utilisation(),
      "useful_tokens": s.useful_tokens,
    }

  def _loop(self) -> None:
    while not self._stop.is_set():
      self._take_new(block=not self.engine.busy)
      for request, future in list(self._futures.items()):
        if future.cancelled():  # a streaming client went away
          self.engine.cancel(request)
          del self._futures[request]
      if not self.engine.busy:
        continue
      try:
        ended = self.engine.step()
      except Exception as error:  # the device call failed: every request in flight gets the error
        for request, future in self._futures.items():
          self.engine.cancel(request)
          _resolve(future, error=error)
        self._futures.clear()
        continue
      for request in ended:
        future = self._futures.pop(request, None)
        if future is None:
          continue
        if request.error is not None:
          _resolve(future, error=request.error)
        else:
          reason = "stop" if request.finished else "length"
          _resolve(future, Completion(request.tokens, len(request.prompt_ids), len(request.tokens), reason))

  def _take_new(self, block: bool) -> None:
    try:
      items = [self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()]
    except queue.Empty:
      return
    while True:
      try:
        items.append(self._inbox.get_nowait())
      except queue.Empty:
        break
    for prompt_ids, sampling, on_tokens, future in items:
      if future.cancelled():
        continue
      key = jax.random.fold_in(self._key, self._count)
      self._count += 1
      try:
        request = self.engine.submit(prompt_ids, sampling, key, on_tokens)
      except Exception as error:  # e.g. a prompt over the limit: this request fails, the others go on
        _resolve(future, error=error)
        continue
      self._futures[request] = future


def _resolve(future: Future, result=None, error: BaseException | None = None) -> None:
  """Sets the outcome unless the future was cancelled meanwhile."""
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(result)
  except Exception:  # InvalidStateError: cancelled by the server while we decoded
    pass
