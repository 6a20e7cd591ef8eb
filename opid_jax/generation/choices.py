"""Running a request's n choices on a backend: all at once, or as a stream of text deltas as tokens arrive."""

from __future__ import annotations

import queue
from typing import Iterator, Sequence

from opid_jax.generation.backend import Completion, GenerationBackend
from opid_jax.generation.detokenize import IncrementalDecoder
from opid_jax.generation.sampler import SamplingParams


def decode(tokenizer, completion: Completion) -> str:
  return tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def complete(backend: GenerationBackend, prompt: Sequence[int], sampling: SamplingParams, n: int) -> list[Completion]:
  futures = [backend.submit(prompt, sampling, sampling.max_new_tokens) for _ in range(n)]
  return [f.result() for f in futures]


class ChoiceStream:
  """Iterates (choice index, new text, Completion or None) for n choices as their tokens arrive; a choice's last
  item carries its Completion. Raises the backend's exception. `cancel()` gives up the unfinished choices."""

  def __init__(self, backend: GenerationBackend, tokenizer, prompt: Sequence[int], sampling: SamplingParams, n: int):
    self._events: queue.Queue = queue.Queue()
    self._decoders = [IncrementalDecoder(tokenizer) for _ in range(n)]
    self._futures = []
    for i in range(n):
      future = backend.submit(prompt, sampling, sampling.max_new_tokens, self._callback(i))
      # Runs after the backend's last on_tokens call (it resolves the future only then), so it is queued last.
      future.add_done_callback(lambda _, i=i: self._events.put((i, None)))
      self._futures.append(future)

  def _callback(self, i: int):
    return lambda ids: self._events.put((i, list(ids)))

  def __iter__(self) -> Iterator[tuple[int, str, Completion | None]]:
    open_choices = len(self._futures)
    while open_choices:
      i, ids = self._events.get()
      if ids is not None:
        text = self._decoders[i].push(ids)
        if text:
          yield i, text, None
        continue
      completion = self._futures[i].result()
      open_choices -= 1
      yield i, self._decoders[i].finish(), completion

  def cancel(self) -> None:
    for future in self._futures:
      future.cancel()
