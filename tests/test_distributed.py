"""Multi-host pieces: start-up arguments, per-process shares, two real jax.distributed processes (CPU, gloo)
training one iteration exactly like one process, and sharded sampling/scoring equal to one device."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from opid_jax.errors import UserError
from opid_jax.parallel import distributed
from opid_jax.training.metrics import WALL_CLOCK_PREFIXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"):
  ENV.pop(name, None)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_single_process_needs_no_initialize(monkeypatch):
  for name in (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
  ):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize() is False
  assert distributed.initialize(num_processes=1) is False
  with pytest.raises(UserError, match="process id"):
    distributed.initialize(coordinator_address="127.0.0.1:1234", num_processes=2)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  with pytest.raises(UserError, match=r"process id 2 is outside \[0, 2\)"):
    distributed.initialize(coordinator_address="127.0.0.1:1234")


def test_shares_and_the_uneven_split_error(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert distributed.process_share(16, "rollout.tasks_per_batch") == slice(8, 16)
  with pytest.raises(UserError, match="rollout.tasks_per_batch=3 is not divisible by the number of processes 2"):
    distributed.process_share(3, "rollout.tasks_per_batch")
  assert distributed.process_range(5) == slice(2, 5)  # uneven shares are fine where order is all that matters


def test_one_process_helpers_are_plain_calls():
  assert distributed.allgather_objects({"a": 1}) == [{"a": 1}]
  assert distributed.concat_across_processes([1, 2]) == [1, 2]
  assert distributed.Lockstep(lambda xs: [x * 2 for x in xs])([1, 2]) == [2, 4]
  assert distributed.any_process(False) is False


def one_iteration(train_cmd, workdir, *extra):
  return train_cmd(workdir, "--config.train.steps=1", *extra)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(WALL_CLOCK_PREFIXES)} for line in f]


def final_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  # As numpy: the saved shardings name devices of two processes that this test process does not have.
  as_numpy = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointer.metadata(path).item_metadata.tree
  )
  tree = checkpointer.restore(path, restore_args=as_numpy)
  return {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_two_processes_train_like_one(train_cmd, tmp_path):
  """Each process plays one of the two task groups on its own CPU device; the mesh spans both processes."""
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
  address = f"127.0.0.1:{free_port()}"
  procs = [
    subprocess.Popen(
      one_iteration(train_cmd, multi, f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT,
      env=ENV,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  # The reference: one process holding both devices, so the mesh (data=2) and every XLA program are the same;
  # the only difference left is who runs which envs and how data crosses process boundaries.
  procs.append(
    subprocess.Popen(
      one_iteration(train_cmd, single),
      cwd=ROOT,
      env=dict(ENV, JAX_NUM_CPU_DEVICES="2"),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
  )
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in outputs[1][1]
  assert outputs[0][0].count("step 1 |") == 1 and "step 1 |" not in outputs[1][0]  # only process 0 logs

  a, b = read_metrics(single), read_metrics(multi)
  assert len(a) == len(b) == 1 and a[0].keys() == b[0].keys()
  assert b[0]["samples"] > 0 and b[0]["optimizer_steps"] >= 1
  for k in a[0]:
    assert b[0][k] == pytest.approx(a[0][k], rel=1e-6, abs=1e-9), k
  pa, pb = final_params(single, 1), final_params(multi, 1)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_allclose(pb[k], pa[k], rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.mark.slow
def test_sharded_generation_and_scoring_equal_one_device(tmp_path):
  out = str(tmp_path / "sharded.npz")
  env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=HERE)
  env.pop("JAX_NUM_CPU_DEVICES")
  res = subprocess.run(
    [sys.executable, os.path.join(HERE, "sharded_inference_check.py"), out],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  got = dict(np.load(out))
  assert len(set(got["single:tokens"].ravel().tolist())) > 20  # varied text, not one repeated token
  np.testing.assert_array_equal(got["single:engine_tokens"], got["single:tokens"])
  for mesh in ("data8", "fsdp8", "mixed"):
    np.testing.assert_array_equal(got[f"{mesh}:tokens"], got["single:tokens"], err_msg=mesh)
    np.testing.assert_array_equal(got[f"{mesh}:engine_tokens"], got["single:tokens"], err_msg=mesh)
    np.testing.assert_allclose(got[f"{mesh}:logprobs"], got["single:logprobs"], atol=3e-4, err_msg=mesh)
