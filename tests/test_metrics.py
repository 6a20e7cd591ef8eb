"""MetricsWriter (jsonl, TensorBoard, console) and PhaseTimer."""

from __future__ import annotations

import itertools
import json

import jax.numpy as jnp
import numpy as np

from opid_jax.training.metrics import MetricsWriter, PhaseTimer, console_line


def _read_lines(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_writes_one_json_line_per_step_with_nan_as_null(tmp_path):
  writer = MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write(
    1,
    {
      "loss": np.float32(0.5),
      "success": jnp.array(1.0),
      "reward": float("nan"),
      "episodes": np.int64(3),
      "grad_norm": jnp.bfloat16(2.0),
      "clipped": np.bool_(True),
      "kl": float("inf"),
    },
  )
  writer.write(2, {"loss": 0.25})
  # Each line is flushed as written: readable before close.
  assert _read_lines(tmp_path) == [
    {
      "step": 1,
      "loss": 0.5,
      "success": 1.0,
      "reward": None,
      "episodes": 3,
      "grad_norm": 2.0,
      "clipped": True,
      "kl": None,
    },
    {"step": 2, "loss": 0.25},
  ]
  writer.close()


def test_truncate_from_drops_redone_steps_and_torn_lines(tmp_path):
  writer = MetricsWriter(str(tmp_path), tensorboard=False, console_every=100)
  for step in range(1, 6):
    writer.write(step, {"loss": float(step)})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')  # a line cut off by a crash

  resumed = MetricsWriter(str(tmp_path), tensorboard=False, console_every=100)
  assert resumed.truncate_from(3) == 4
  resumed.write(3, {"loss": 30.0})
  resumed.close()
  assert [(line["step"], line["loss"]) for line in _read_lines(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_tensorboard_events_are_written(tmp_path):
  writer = MetricsWriter(str(tmp_path), console_every=100)
  writer.write(1, {"loss": 1.0, "reward": float("nan")})
  writer.close()
  events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0


def test_console_line_every_n_steps(tmp_path, capsys):
  writer = MetricsWriter(str(tmp_path), tensorboard=False, console_every=2)
  writer.write(1, {"loss": 1.0})
  writer.write(2, {"time/step": 1.5, "loss": 0.012345, "other": 7.0, "success": 0.5, "reward": float("nan")})
  writer.close()
  assert capsys.readouterr().out == "step 2 | success 0.5 | loss 0.01235 | reward nan | time/step 1.50s\n"


def test_console_line_formats_ints_and_skill_share():
  assert console_line(7, {"success": 3, "adv/skill_share": 0.333333}) == "step 7 | success 3 | adv/skill_share 0.3333"


def test_disabled_writer_writes_nothing(tmp_path, capsys):
  workdir = tmp_path / "run"
  writer = MetricsWriter(str(workdir), enabled=False)
  writer.write(1, {"loss": 1.0})
  assert writer.truncate_from(0) == 0
  writer.close()
  assert not workdir.exists() and capsys.readouterr().out == ""


def test_phase_timer_accumulates_and_resets():
  ticks = itertools.count()
  timer = PhaseTimer(clock=lambda: float(next(ticks)))
  with timer.phase("rollout"):  # 0 -> 1
    pass
  with timer.phase("update"):  # 2 -> 3
    pass
  with timer.phase("rollout"):  # 4 -> 5
    pass
  assert timer.as_metrics() == {"time/rollout": 2.0, "time/update": 1.0}
  assert timer.as_metrics() == {}


def test_phase_timer_counts_a_phase_that_raises():
  timer = PhaseTimer()
  try:
    with timer.phase("score"):
      raise RuntimeError("boom")
  except RuntimeError:
    pass
  assert set(timer.as_metrics()) == {"time/score"}
