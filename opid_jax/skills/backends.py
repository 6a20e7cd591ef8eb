"""Analyzer backends by name: `make_backend("openai" | "local" | "expert" | "none", **kwargs)`.

Every backend takes the analysis settings (the `AnalysisSpec` fields: gamma, max_step_skills,
max_parse_attempts, max_observation_chars, max_completion_tokens) plus its own keyword arguments;
unknown keywords are an error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable, Sequence

from opid_jax.agent.trajectory import Trajectory
from opid_jax.skills.analyzer import AnalysisSpec, Message, analyze_batch
from opid_jax.skills.backend_base import AnalysisHandle, AnalyzerBackend, Future, completed_future
from opid_jax.skills.expert_backend import ExpertBackend
from opid_jax.skills.openai_backend import AnalyzerAPIError, OpenAIBackend
from opid_jax.skills.records import AnalysisResult, AnalyzerStats

__all__ = [
  "AnalysisHandle",
  "AnalyzerAPIError",
  "AnalyzerBackend",
  "BACKENDS",
  "ExpertBackend",
  "LocalBackend",
  "NoneBackend",
  "OpenAIBackend",
  "make_backend",
]

logger = logging.getLogger(__name__)

# Takes many conversations, returns one reply text per conversation.
ChatFn = Callable[[list[list[Message]]], list[str]]


class NoneBackend(AnalyzerBackend):
  """No analyzer: every trajectory gets no skill, nothing is called (plain GRPO)."""

  name = "none"

  def _start(self, trajectories: Sequence[Trajectory], stats: AnalyzerStats) -> list[Future]:
    stats.add("trajectories", len(trajectories))
    stats.add("skipped", len(trajectories))
    return [completed_future(AnalysisResult(t.traj_id, None, "analyzer disabled")) for t in trajectories]


class LocalBackend(AnalyzerBackend):
  """An LLM analyzer with no server: `chat_fn` answers a batch of conversations at once.

  Each round (first requests, then repairs) is one `chat_fn` call, run on one background thread.
  `spec.max_completion_tokens` does not reach `chat_fn`: its own sampler settings cap the reply length
  (`opid_jax.generation.chat.make_chat_fn(max_new_tokens=...)`).
  """

  name = "local"

  def __init__(self, spec: AnalysisSpec, *, chat_fn: ChatFn):
    super().__init__(spec)
    self.chat_fn = chat_fn
    self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="opid-local-analyzer")

  def _chat_many(self, conversations: list[list[Message]], stats: AnalyzerStats) -> list[str | BaseException]:
    stats.add("calls", len(conversations))
    try:
      replies = list(self.chat_fn(conversations))
    except Exception as err:  # a failed batch costs these skills, not the run
      logger.error("local analyzer chat_fn failed: %s: %s", type(err).__name__, err)
      return [AnalyzerAPIError(f"chat_fn failed: {type(err).__name__}")] * len(conversations)
    if len(replies) != len(conversations):
      failure = AnalyzerAPIError(f"chat_fn returned {len(replies)} replies for {len(conversations)} conversations")
      return [failure] * len(conversations)
    return [reply if isinstance(reply, str) else "" for reply in replies]

  def _start(self, trajectories: Sequence[Trajectory], stats: AnalyzerStats) -> list[Future]:
    per_trajectory: list[Future] = [Future() for _ in trajectories]

    def run() -> None:
      try:
        results = analyze_batch(trajectories, lambda c: self._chat_many(c, stats), self.spec, stats)
      except BaseException as err:
        for future in per_trajectory:
          future.set_exception(err)
        raise
      for future, result in zip(per_trajectory, results):
        future.set_result(result)

    self._worker.submit(run)
    return per_trajectory

  def close(self) -> None:
    self._worker.shutdown(wait=True)


BACKENDS: dict[str, type[AnalyzerBackend]] = {
  "openai": OpenAIBackend,
  "local": LocalBackend,
  "expert": ExpertBackend,
  "none": NoneBackend,
}

_SPEC_FIELDS = tuple(field.name for field in dataclasses.fields(AnalysisSpec))


def make_backend(name: str, **kwargs) -> AnalyzerBackend:
  """The analyzer backend called `name`, built from keyword arguments (e.g. a config block)."""
  if name not in BACKENDS:
    raise ValueError(f"unknown analyzer backend {name!r}; choose one of {sorted(BACKENDS)}")
  spec = AnalysisSpec(**{k: kwargs.pop(k) for k in _SPEC_FIELDS if k in kwargs})
  return BACKENDS[name](spec, **kwargs)
