"""Launch scripts: syntax and shellcheck, the commands they hand to gcloud / srun (with stand-ins on PATH),
and launch/local.sh training the tiny config for real."""

import glob
import json
import os
import shutil
import subprocess

import pytest
from hf_fixtures import make_hf_model, save_tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh")) + [os.path.join(ROOT, "launch", "slurm.sbatch")])


def test_all_launch_scripts_exist():
  names = {os.path.basename(s) for s in SCRIPTS}
  assert {"tpu_pod.sh", "gpu.sh", "local.sh", "slurm.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  res = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  # Deliberately not skipped: CI must have shellcheck (apt-get install -y shellcheck).
  assert shutil.which("shellcheck"), "shellcheck is not installed: apt-get install -y shellcheck"
  res = subprocess.run(["shellcheck", "-x", script], capture_output=True, text=True)
  assert res.returncode == 0, res.stdout + res.stderr


def stand_in(bin_dir, name, log):
  """A fake command that appends its arguments (one JSON list per call) to `log`."""
  path = os.path.join(bin_dir, name)
  with open(path, "w") as f:
    f.write(
      f"#!/usr/bin/env python3\nimport json, os, sys\n"
      f"open({log!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'env': {{k: v for k, v in os.environ.items()"
      f" if k.startswith('JAX_')}}}}) + '\\n')\n"
      f"if sys.argv[1:3] == ['show', 'hostnames']: print('node-a\\nnode-b')\n"
    )
  os.chmod(path, 0o755)


def calls(log):
  with open(log) as f:
    return [json.loads(line) for line in f]


def test_tpu_pod_runs_the_same_command_on_every_worker(tmp_path):
  log = str(tmp_path / "calls.jsonl")
  stand_in(str(tmp_path), "gcloud", log)
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", TPU_NAME="pod", ZONE="us-west4-a")
  res = subprocess.run(
    ["bash", "launch/tpu_pod.sh", "train", "--config=configs/alfworld.py", "--workdir=gs://b/run 1"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  assert res.returncode == 0, res.stderr
  (call,) = calls(log)
  assert call["argv"][:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in call["argv"] and "--zone=us-west4-a" in call["argv"]
  command = next(a for a in call["argv"] if a.startswith("--command="))
  assert "-m opid_jax.train --config=configs/alfworld.py --workdir=gs://b/run\\ 1" in command
  missing = subprocess.run(
    ["bash", "launch/tpu_pod.sh", "train"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={k: v for k, v in env.items() if k != "TPU_NAME"},
  )
  assert missing.returncode != 0 and "TPU_NAME" in missing.stderr


def test_slurm_uses_the_first_node_as_coordinator(tmp_path):
  log = str(tmp_path / "calls.jsonl")
  for name in ("srun", "scontrol"):
    stand_in(str(tmp_path), name, log)
  env = dict(
    os.environ,
    PATH=f"{tmp_path}:{os.environ['PATH']}",
    SLURM_JOB_NODELIST="node-[a-b]",
    SLURM_NNODES="2",
    SLURM_SUBMIT_DIR=ROOT,
  )
  res = subprocess.run(
    ["bash", "launch/slurm.sbatch", "--config=configs/alfworld.py", "--workdir=/tmp/x"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  assert res.returncode == 0, res.stderr
  srun = calls(log)[-1]
  assert srun["env"]["JAX_COORDINATOR_ADDRESS"] == "node-a:29500" and srun["env"]["JAX_NUM_PROCESSES"] == "2"
  assert "--ntasks=2" in srun["argv"] and srun["argv"][-2:] == ["--config=configs/alfworld.py", "--workdir=/tmp/x"]


@pytest.mark.slow
def test_local_sh_trains_the_tiny_config(tmp_path):
  model = str(tmp_path / "model")
  save_tiny_tokenizer(model)
  make_hf_model("qwen3", model, seed=0)
  workdir = str(tmp_path / "run")
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  res = subprocess.run(
    [
      "bash",
      "launch/local.sh",
      "--config=configs/smoke.py",
      f"--workdir={workdir}",
      f"--config.model.path={model}",
      "--config.train.steps=1",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert "step 1 |" in res.stdout
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))
