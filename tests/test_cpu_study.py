"""The CPU study script end to end in its short form: SFT, the shared initial evaluation, two variants (GRPO and
OPID) for one seed on real games, and the report with its tables and curves."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_short_study_writes_a_report(alfworld_games, tmp_path):
  root = tmp_path / "study"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  store = tmp_path / "store"
  cmd = [
    sys.executable,
    "benchmarks/cpu_study.py",
    "--short",
    f"--root={root}",
    f"--data_dir={alfworld_games}",
    "--sft_split=valid_seen",
    "--train_split=valid_unseen",
    "--variants=grpo,opid",
    "--seeds=0",
    f"--store={store}",
  ]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = (root / "cpu_study.md").read_text()
  assert "SHORT mode" in report
  for variant in ("grpo", "opid"):
    assert (root / "runs" / f"{variant}_s0" / "summary.md").exists()
    assert any(line.startswith(f"| {variant} | 1 |") for line in report.splitlines()), report
  assert "## Success per task type" in report and "## Iterations to reach GRPO's final success" in report
  assert "Missing (not finished yet): none." in report
  assert (root / "cpu_study_eval.png").stat().st_size > 0 and (root / "cpu_study_train.png").stat().st_size > 0
  # Everything is finished, so a second invocation only rewrites the report (now naming the runs' commit).
  (root / "code_commit.txt").write_text("abc1234\nPinned for the study.\n")
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "run grpo seed 0" not in again.stdout and "sft to step" not in again.stdout
  assert "Code: the runs ran from commit `abc1234`. Pinned for the study." in (root / "cpu_study.md").read_text()
  # Every finished piece is in the store, without checkpoints or the SFT replay cache.
  stored = {str(p.relative_to(store)) for p in store.rglob("*")}
  assert {
    "sft/policy/model.safetensors",
    "sft/sft_summary.json",
    "initial/eval.json",
    "probe_policy.json",
    "runs/grpo_s0/summary.md",
    "runs/opid_s0/metrics.jsonl",
  } <= stored, sorted(stored)
  assert not any(p.endswith(("checkpoints", "expert_steps.jsonl", ".partial", "trajectories", "tb")) for p in stored)
  # The machine loses ROOT: the next invocation restores the store and runs nothing again; same tables.
  table = [line for line in report.splitlines() if line.startswith(("| grpo |", "| opid |"))]
  (store / "notes.md").write_text("An earlier attempt was lost.\n")
  shutil.rmtree(root)
  third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
  assert "restored runs/grpo_s0" in third.stdout and "restored sft" in third.stdout
  assert "run grpo seed 0" not in third.stdout and "sft to step" not in third.stdout
  assert not (root / "runs" / "grpo_s0" / "checkpoints").exists()
  rewritten = (root / "cpu_study.md").read_text()
  assert table == [line for line in rewritten.splitlines() if line.startswith(("| grpo |", "| opid |"))]
  assert "An earlier attempt was lost." in rewritten


@pytest.mark.slow
def test_sigterm_stops_the_study_after_the_running_piece_saves(tmp_path):
  from hf_fixtures import make_hf_model, save_tiny_tokenizer

  model, workdir = str(tmp_path / "model"), str(tmp_path / "run")
  save_tiny_tokenizer(model)
  make_hf_model("qwen3", model, seed=0)
  script = (
    "import signal, sys; sys.path.insert(0, 'benchmarks'); import cpu_study\n"
    "signal.signal(signal.SIGTERM, cpu_study._stop_gracefully)\n"
    f"cpu_study.run_module('opid_jax.train', 'configs/smoke.py', {workdir!r}, "
    f"{{'model.path': {model!r}, 'train.steps': 50, 'checkpoint.save_every': 1000}})\n"
    "print('started the next piece')\n"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  study = subprocess.Popen(
    [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 600
  while not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    assert study.poll() is None and time.time() < deadline, study.communicate()[1][-3000:]
    time.sleep(0.05)
  study.send_signal(signal.SIGTERM)  # to the study only: it hands the signal to the trainer
  out, err = study.communicate(timeout=300)
  assert study.returncode == 1 and "stopped on request" in err and "started the next piece" not in out, err[-3000:]
  log = open(os.path.join(workdir, "log.txt")).read()
  assert "stop requested: saved iteration" in log, log[-3000:]
  saved = os.listdir(os.path.join(workdir, "checkpoints"))
  assert len(saved) == 1 and not os.path.exists(os.path.join(workdir, "summary.md"))


def test_a_stop_between_pieces_starts_nothing_and_an_unfinished_run_is_not_taken_as_done(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import cpu_study

  cpu_study._CHILD["stop_requested"] = True
  try:
    with pytest.raises(SystemExit, match="stopped on request before"):
      cpu_study.run_module("opid_jax.train", "configs/smoke.py", str(tmp_path / "next"), {})
  finally:
    cpu_study._CHILD["stop_requested"] = False
  assert not (tmp_path / "next").exists()
  # a trainer that was stopped by a signal sent to it (not to the study) exits 0 without its summary
  (tmp_path / "stopped").mkdir()
  with pytest.raises(SystemExit, match="ended before its last iteration"):
    cpu_study.require_finished(str(tmp_path / "stopped"))
  (tmp_path / "stopped" / "summary.md").write_text("| metric |\n")
  cpu_study.require_finished(str(tmp_path / "stopped"))


def test_a_piece_that_would_not_finish_by_until_is_not_started(tmp_path, capsys):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import cpu_study

  soon = datetime.datetime.now() + datetime.timedelta(minutes=10)
  with pytest.raises(SystemExit, match=r"\(~35 min\) would not finish by --until="):
    cpu_study.run_module("opid_jax.train", "configs/smoke.py", str(tmp_path / "late"), {}, until=soon, minutes=35)
  assert not (tmp_path / "late").exists()
  with pytest.raises(SystemExit):
    cpu_study.parse_args(["--until=tonight", f"--data_dir={tmp_path}"])
  assert "--until='tonight' is not an ISO time" in capsys.readouterr().err
  assert cpu_study.parse_args([f"--until={soon.isoformat()}", f"--data_dir={tmp_path}"]).until == soon
