"""Plain records the analyzer backends return (host-side, no JAX)."""

from __future__ import annotations

import dataclasses
import threading


@dataclasses.dataclass(frozen=True)
class SkillSet:
  """Hindsight skills extracted from one finished trajectory."""

  episode_summary: str
  episode_skill: str
  step_skills: dict[int, str]  # 0-based step index -> one imperative sentence


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
  """The analyzer's verdict on one trajectory: skills, or the reason there are none."""

  traj_id: int
  skills: SkillSet | None = None
  failure: str = ""  # empty when `skills` is set
  reply: str = ""  # the last raw analyzer reply, for logs

  @property
  def has_skill(self) -> bool:
    return self.skills is not None


_COUNTERS = (
  "trajectories",
  "skipped",
  "calls",
  "retries",
  "repairs",
  "parse_failures",
  "final_failures",
  "empty_skills",
  "with_skill",
)


@dataclasses.dataclass
class AnalyzerStats:
  """Counts for one batch of trajectories (one training iteration). Thread-safe increments.

  calls: requests sent to the model, API retries included; retries: API re-sends after 429/5xx/timeouts;
  repairs: repair requests after an unusable reply; parse_failures: unusable replies (unreadable, or an
  empty episode skill); empty_skills: the replies among those whose episode skill was empty;
  final_failures: trajectories left without skill by a failure (API, or every attempt unusable);
  skipped: never sent (no steps, or ended by a fault); seconds: wall time of the batch.
  trajectories = skipped + with_skill + final_failures.
  """

  trajectories: int = 0
  skipped: int = 0
  calls: int = 0
  retries: int = 0
  repairs: int = 0
  parse_failures: int = 0
  final_failures: int = 0
  empty_skills: int = 0
  with_skill: int = 0
  seconds: float = 0.0
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

  def add(self, counter: str, amount: int = 1) -> None:
    if counter not in _COUNTERS:
      raise KeyError(f"unknown analyzer counter {counter!r}")
    with self._lock:
      setattr(self, counter, getattr(self, counter) + amount)

  def as_dict(self, prefix: str = "") -> dict[str, float]:
    values = {name: getattr(self, name) for name in _COUNTERS}
    values["seconds"] = self.seconds
    return {prefix + name: value for name, value in values.items()}
