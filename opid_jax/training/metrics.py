"""Training metrics: one JSON line per step in `workdir/metrics.jsonl`, TensorBoard scalars, a console line.

`metrics.jsonl` is the record of truth (big_vision style): `{"step": N, "loss": 0.12, ...}`, NaN/inf as null.
TensorBoard events go to `workdir/tb/` for local workdirs only. A resumed run calls `truncate_from(step)`
first so steps it is about to redo are not logged twice.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import sys
import time
from typing import Callable, Iterator

import numpy as np
import tqdm
from etils import epath

logger = logging.getLogger(__name__)

HEADLINE_KEYS = (
  "success",
  "valid_action_ratio",
  "loss",
  "reward",
  "adv/skill_share",
  "eval/success",
  "eval/valid_action_ratio",
  "time/eval",
  "time/step",
)


class MetricsWriter:
  """Writes scalar metrics; a disabled writer (non-zero processes) does nothing."""

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True, console_every: int = 1):
    self._enabled = enabled
    self._remote = "://" in str(workdir)
    self._workdir = epath.Path(workdir)
    self._path = self._workdir / "metrics.jsonl"
    self._console_every = max(1, console_every)
    self._tensorboard = tensorboard and enabled
    if self._tensorboard and self._remote:
      logger.warning("TensorBoard events are only written for local workdirs; %s gets metrics.jsonl only", workdir)
      self._tensorboard = False
    self._file = None  # local: an append handle
    self._remote_lines: list[str] | None = None  # remote: the whole file, rewritten on each write
    self._tb_writer = None
    self._tb_purge_step: int | None = None
    if enabled:
      self._workdir.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    record.update({key: _to_json_scalar(key, value) for key, value in metrics.items()})
    self._append_line(json.dumps(record, allow_nan=False))
    self._write_tensorboard(step, record)
    if step % self._console_every == 0:
      tqdm.tqdm.write(console_line(step, record))  # above any progress bar, not through it
      sys.stdout.flush()

  def truncate_from(self, step: int) -> int:
    """Drops lines with step >= `step` (and any torn last line); returns how many were dropped."""
    if not self._enabled:
      return 0
    self._close_file()
    lines = self._path.read_text().splitlines() if self._path.exists() else []
    kept = [
      line for line, line_step in zip(lines, map(_line_step, lines)) if line_step is not None and line_step < step
    ]
    text = "".join(line + "\n" for line in kept)
    if self._remote:  # an object write is atomic
      self._path.write_text(text)
      self._remote_lines = kept
    else:  # a crash mid-rewrite must not lose the history
      staging = self._path.with_name(self._path.name + ".tmp")
      staging.write_text(text)
      staging.replace(self._path)
    # TensorBoard hides older events at steps >= purge_step when a new writer starts with it.
    self._close_tensorboard()
    self._tb_purge_step = step
    return len(lines) - len(kept)

  def close(self) -> None:
    self._close_file()
    self._close_tensorboard()

  def _append_line(self, line: str) -> None:
    if self._remote:  # object stores have no append: rewrite the (small) file
      if self._remote_lines is None:
        self._remote_lines = self._path.read_text().splitlines() if self._path.exists() else []
      self._remote_lines.append(line)
      self._path.write_text("".join(each + "\n" for each in self._remote_lines))
      return
    if self._file is None:
      self._file = self._path.open("a")
    self._file.write(line + "\n")
    self._file.flush()

  def _write_tensorboard(self, step: int, record: dict) -> None:
    if not self._tensorboard:
      return
    if self._tb_writer is None:
      import tensorboardX  # pylint: disable=import-outside-toplevel

      self._tb_writer = tensorboardX.SummaryWriter(
        str(self._workdir / "tb"), purge_step=self._tb_purge_step, flush_secs=30
      )
      self._tb_purge_step = None
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb_writer.add_scalar(key, value, step)

  def _close_file(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def _close_tensorboard(self) -> None:
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None


def console_line(step: int, record: dict) -> str:
  """`step 12 | success 0.625 | loss 0.0123 | time/step 3.41s`: the headline keys present, in fixed order."""
  parts = [f"step {step}"]
  for key in HEADLINE_KEYS:
    if key in record:
      parts.append(f"{key} {_format_value(key, record[key])}")
  return " | ".join(parts)


def _format_value(key: str, value) -> str:
  if value is None:
    return "nan"
  if key.startswith("time/"):
    return f"{value:.2f}s"
  if isinstance(value, (bool, int)):
    return str(value)
  return f"{value:.4g}"


def _to_json_scalar(key: str, value):
  """Python/numpy/jax scalars -> int, bool or float; NaN and inf -> None (JSON null)."""
  array = np.asarray(value)
  if array.ndim != 0:
    raise TypeError(f"metric {key!r} is not a scalar (shape {array.shape})")
  if array.dtype.kind == "b":
    return bool(array)
  if array.dtype.kind in "iu":
    return int(array)
  if array.dtype.kind in "USOc":
    raise TypeError(f"metric {key!r} is not a real number ({array.dtype})")
  number = float(array)  # float16/32/64 and ml_dtypes such as bfloat16
  return number if math.isfinite(number) else None


def _line_step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


# Metric keys measured in wall-clock time, or shaped by it (they differ between two runs of the same computation):
# the continuous engine's slot use depends on when env answers arrive.
WALL_CLOCK_PREFIXES = (
  "time/",
  "analyzer/seconds",
  "perf/tflops_",
  "perf/mfu_",
  "perf/decode_tokens_per_s",
  "rollout/slot_utilisation",
)


class PhaseTimer:
  """Wall seconds per named phase, summed until `as_metrics()` reads and resets them.

  JAX dispatches asynchronously: block on a phase's outputs inside its `with` to time the work, not the dispatch.
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter, on_phase: Callable[[str], None] | None = None):
    self._clock = clock
    self._on_phase = on_phase  # e.g. shows the running phase on a progress bar
    self._seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    if self._on_phase is not None:
      self._on_phase(name)
    start = self._clock()
    try:
      yield
    finally:
      self._seconds[name] += self._clock() - start

  def seconds(self, name: str) -> float:
    """The seconds summed so far for `name` (0 if it has not run)."""
    return self._seconds.get(name, 0.0)

  def as_metrics(self) -> dict[str, float]:
    metrics = {f"time/{name}": seconds for name, seconds in self._seconds.items()}
    self._seconds.clear()
    return metrics
