"""What every analyzer backend shares: the background handle and the base class."""

from __future__ import annotations

import abc
import concurrent.futures
import threading
import time
from collections.abc import Sequence

from opid_jax.agent.trajectory import Trajectory
from opid_jax.skills.analyzer import AnalysisSpec
from opid_jax.skills.records import AnalysisResult, AnalyzerStats

Future = concurrent.futures.Future


def completed_future(value) -> Future:
  future: Future = Future()
  future.set_result(value)
  return future


class AnalysisHandle:
  """A batch of analyses running in the background; `result()` waits for all of them.

  `stats` fills in while the batch runs; `stats.seconds` is set when the last analysis ends.
  """

  def __init__(self, futures: Sequence[Future], stats: AnalyzerStats, started_at: float):
    self.stats = stats
    self._futures = list(futures)
    self._started_at = started_at
    self._remaining = len(self._futures)
    self._lock = threading.Lock()
    if not self._futures:
      stats.seconds = time.perf_counter() - started_at
    for future in self._futures:
      future.add_done_callback(self._one_done)

  def _one_done(self, _future: Future) -> None:
    with self._lock:
      self._remaining -= 1
      if self._remaining == 0:
        self.stats.seconds = time.perf_counter() - self._started_at

  def done(self) -> bool:
    return all(future.done() for future in self._futures)

  def result(self, timeout: float | None = None) -> list[AnalysisResult]:
    deadline = None if timeout is None else time.monotonic() + timeout
    results = []
    for future in self._futures:
      left = None if deadline is None else max(0.0, deadline - time.monotonic())
      results.append(future.result(timeout=left))
    return results


class AnalyzerBackend(abc.ABC):
  """Turns finished trajectories into AnalysisResults, one per trajectory, in input order."""

  name: str = ""

  def __init__(self, spec: AnalysisSpec):
    self.spec = spec
    self.last_stats = AnalyzerStats()

  @abc.abstractmethod
  def _start(self, trajectories: Sequence[Trajectory], stats: AnalyzerStats) -> list[Future]:
    """Starts the work; returns one future per trajectory."""

  def analyze_many_async(self, trajectories: Sequence[Trajectory]) -> AnalysisHandle:
    """Starts analyzing in the background (the trainer scores meanwhile); returns a handle."""
    stats = AnalyzerStats()
    self.last_stats = stats
    started_at = time.perf_counter()
    return AnalysisHandle(self._start(list(trajectories), stats), stats, started_at)

  def analyze_many(self, trajectories: Sequence[Trajectory]) -> list[AnalysisResult]:
    return self.analyze_many_async(trajectories).result()

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def __repr__(self) -> str:
    return f"{type(self).__name__}(spec={self.spec!r})"
