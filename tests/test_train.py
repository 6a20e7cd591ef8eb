"""The training loop end to end on the counting env with a tiny model: CLI, config errors, exact resume,
and the GRPO special case (lambda_skill = 0)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from opid_jax.training.metrics import WALL_CLOCK_PREFIXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")


@pytest.fixture
def run_train(train_cmd):
  def run(workdir, *overrides, timeout=600):
    return subprocess.run(
      train_cmd(workdir, *overrides), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )

  return run


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK_PREFIXES)} for r in rows]


def final_params(workdir, step):
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.opid.routng=step_only", "routng"),
    ("--config.opid.routing=sometimes", "opid.routing='sometimes' is not one of"),
    ("--config.ppo.micro_batch_size=3", "not a multiple of ppo.micro_batch_size=3"),
    ("--config.env.name=minecraft", "env.name='minecraft'"),
  ],
)
def test_config_errors_are_one_line_with_exit_code_2(run_train, tmp_path, override, needle):
  res = run_train(tmp_path / "w", override)
  assert res.returncode == 2, res.stderr[-2000:]
  lines = [l for l in res.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("error: ") and needle in lines[-1], res.stderr[-2000:]
  assert "Traceback" not in res.stderr


def test_missing_model_is_one_line(run_train, tmp_path):
  res = run_train(tmp_path / "w", f"--config.model.path={tmp_path / 'no_model'}")
  assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: model path")


@pytest.mark.slow
def test_resume_after_a_kill_continues_exactly(run_train, train_cmd, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  flags = ("--config.train.steps=4", "--config.train.eval_every=2", "--config.train.eval_tasks=64")
  res = run_train(straight, *flags)
  assert res.returncode == 0, res.stderr[-3000:]
  assert (tmp_path / "straight" / "config.json").exists()

  # An earlier attempt that died before its first checkpoint left rows behind: a fresh start drops them.
  os.makedirs(resumed)
  with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
    f.write('{"step": 1, "success": 0.5}\n{"step": 2, "success": 0.5}\n')
  # Same command, killed with SIGKILL as soon as iteration 2's checkpoint is complete (if iteration 2's row, with
  # its evaluation, were written only after the checkpoint, the kill would land before it), then started again.
  proc = subprocess.Popen(
    train_cmd(resumed, *flags), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 600
  while not os.path.isdir(os.path.join(resumed, "checkpoints", "2")):
    assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(read_metrics(resumed)) < 4
  res = run_train(resumed, *flags)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resumed from iteration 2" in res.stderr or "resumed from iteration 3" in res.stderr, res.stderr[-3000:]

  a, b = read_metrics(straight), read_metrics(resumed)
  assert [r["step"] for r in b] == [1, 2, 3, 4]
  assert [r["step"] for r in b if "eval/success" in r] == [2, 4]
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)
  pa, pb = final_params(straight, 4), final_params(resumed, 4)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(train_cmd, tmp_path):
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(
    train_cmd(workdir, "--config.train.steps=50", "--config.checkpoint.save_every=1000"),
    cwd=ROOT,
    env=ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 600
  while not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "stop requested" in err
  done = len(read_metrics(workdir))
  assert 1 <= done < 50
  # save_every=1000 would never save on schedule: the checkpoint is the preemption save.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(done)]


def test_evaluate_a_checkpoint_and_a_plain_model(run_train, model_dir, tmp_path):
  workdir = str(tmp_path / "run")
  res = run_train(workdir, "--config.train.steps=1")
  assert res.returncode == 0, res.stderr[-3000:]
  for wd, iteration in ((workdir, 1), (str(tmp_path / "plain"), None)):
    res = subprocess.run(
      [
        sys.executable,
        "-m",
        "opid_jax.evaluate",
        "--config=configs/smoke.py",
        f"--workdir={wd}",
        f"--config.model.path={model_dir}",
        "--num_tasks=6",
      ],
      cwd=ROOT,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("| task type | episodes | success")
    with open(os.path.join(wd, "eval_valid_unseen.json")) as f:
      report = json.load(f)
    assert report["checkpoint_iteration"] == iteration and report["table"]["all"]["episodes"] == 6
    assert 0.0 <= report["table"]["all"]["valid_action_ratio"] <= 1.0


def test_the_continuous_engine_trains_and_evaluates_as_the_static_one(run_train, tmp_path):
  """Greedy evaluation of the initial policy gives the same numbers through either engine; a training iteration
  through the continuous engine logs its slot use."""
  rows = {}
  for engine in ("static", "continuous"):
    workdir = str(tmp_path / engine)
    res = run_train(
      workdir,
      f"--config.rollout.engine={engine}",
      "--config.rollout.slots=3",
      "--config.rollout.decode_steps=2",
      "--config.rollout.eval_temperature=0",
      "--config.train.eval_at_start=True",
      "--config.train.steps=1",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows[engine] = [json.loads(line) for line in f]
  evals = {e: {k: v for k, v in r[0].items() if k.startswith("eval/")} for e, r in rows.items()}
  assert evals["static"] and evals["static"] == evals["continuous"]
  trained = rows["continuous"][-1]
  assert 0 < trained["rollout/slot_utilisation"] <= 1 and trained["time/rollout_env_hidden"] >= 0
  assert 0 < rows["static"][-1]["rollout/slot_utilisation"] <= 1
