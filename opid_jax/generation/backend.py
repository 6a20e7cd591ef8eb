"""What the HTTP server (generation/server.py) needs from a generation backend: the contract a backend implements.

A backend takes one prompt at a time and answers it asynchronously; how it batches is its own business
(`RequestBatcher` gathers concurrent requests into static sampler calls; a continuous-batching engine would fit
the same contract). The server decodes text itself, so a backend deals in token ids only.

  submit(prompt_ids, sampling, max_tokens, on_tokens=None) -> Future[Completion]
    prompt_ids: the prompt as the model reads it (already fitted to the length limit, never empty).
    sampling: temperature / top_p / top_k; `sampling.max_new_tokens` equals `max_tokens` (a backend may round it
      up internally, e.g. to share compilations, but never returns more than `max_tokens` tokens).
    on_tokens(new_ids): called from the backend's own thread with each chunk of newly produced ids, in order,
      all before the future resolves; the chunks concatenated are `Completion.token_ids`. It must return
      quickly (the server only queues the ids). A static backend calls it once with every token.
    The future resolves to a Completion, or to the exception that made generation fail. The server cancels it
    when a streaming client goes away: a backend should then drop the request (take it up with
    `future.set_running_or_notify_cancel()`, which returns False for a cancelled one) and must not fail on it.
  close(): stops the backend's threads; pending futures may never resolve after it.
  stats() -> dict: JSON-serialisable counters, served as-is by GET /v1/stats.

Several requests may be submitted concurrently from different threads.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

if TYPE_CHECKING:
  from opid_jax.generation.sampler import SamplingParams

TokenCallback = Callable[[list[int]], None]


@dataclasses.dataclass
class Completion:
  token_ids: list[int]  # the response as sampled: ends with the stop id when finish_reason is "stop"
  prompt_tokens: int
  completion_tokens: int  # len(token_ids)
  finish_reason: str  # "stop" (a stop id was sampled) or "length" (max_tokens reached)


class GenerationBackend(Protocol):
  def submit(
    self,
    prompt_ids: Sequence[int],
    sampling: SamplingParams,
    max_tokens: int,
    on_tokens: TokenCallback | None = None,
  ) -> Future: ...

  def close(self) -> None: ...

  def stats(self) -> dict: ...
