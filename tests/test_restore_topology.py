"""Checkpoints move between topologies: a run trained on 8 (CPU) devices evaluates, exports and resumes on one
device or another mesh; a checkpoint written on one device restores onto an 8-device sharded model."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hf_fixtures import make_hf_model, save_tiny_tokenizer

from opid_jax.model import loading

pytestmark = pytest.mark.slow  # every test trains a run first

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
for _name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):
  ONE_DEVICE.pop(_name, None)
EIGHT_DEVICES = dict(ONE_DEVICE, XLA_FLAGS="--xla_force_host_platform_device_count=8")
# The smoke config's batches must divide the data-parallel size (data x fsdp = 8).
EIGHT_WAY = ("--config.ppo.micro_batch_size=8", "--config.train.score_micro_batch=8")
FSDP8 = ("--config.mesh.data=1", "--config.mesh.fsdp=8", *EIGHT_WAY)


def run(args, env, timeout=600) -> subprocess.CompletedProcess:
  res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  assert res.returncode == 0, res.stderr[-3000:]
  assert_no_saved_sharding_restore(res.stderr)
  return res


def train(model_dir, workdir, env, *overrides) -> subprocess.CompletedProcess:
  return run(
    [
      "-m",
      "opid_jax.train",
      "--config=configs/smoke.py",
      f"--workdir={workdir}",
      f"--config.model.path={model_dir}",
      *overrides,
    ],
    env,
  )


def assert_no_saved_sharding_restore(stderr: str):
  """Orbax warns when it falls back to the shardings stored in the checkpoint (unsafe on another topology)."""
  assert "Sharding info not provided" not in stderr and "unsafe" not in stderr, stderr[-3000:]


def saved_tree(workdir, step):
  return ocp.PyTreeCheckpointer().metadata(state_dir(workdir, step)).item_metadata.tree


def state_dir(workdir, step) -> str:
  return os.path.join(workdir, "checkpoints", str(step), "state")


def saved_mesh(workdir, step) -> tuple[int, ...]:
  """The mesh shape (data, fsdp, tensor) the embedding was saved from."""
  return tuple(int(n) for n in saved_tree(workdir, step)["params"]["embed"]["value"].sharding.shape)


def checkpoint_params(workdir, step) -> dict[str, np.ndarray]:
  """The saved parameters as numpy (no shardings involved), keyed like `flat_params`."""
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved_tree(workdir, step))
  tree = ocp.PyTreeCheckpointer().restore(state_dir(workdir, step), restore_args=as_numpy)["params"]
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  return {k.removesuffix("/value"): v for k, v in flat.items()}


def flat_params(state) -> dict[str, np.ndarray]:
  return {"/".join(map(str, path)): np.asarray(var[...]) for path, var in nnx.to_flat_state(state)}


def metric_steps(workdir) -> list[int]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tiny_policy"))
  save_tiny_tokenizer(out)
  make_hf_model("qwen3", out, seed=0)
  return out


@pytest.fixture(scope="module")
def run_on_8(model_dir, tmp_path_factory):
  """Two iterations on an fsdp=8 mesh: checkpoints 1 and 2, sharded 8 ways."""
  workdir = str(tmp_path_factory.mktemp("run8") / "run")
  train(model_dir, workdir, EIGHT_DEVICES, *FSDP8)
  assert metric_steps(workdir) == [1, 2] and saved_mesh(workdir, 2) == (1, 8, 1)
  return workdir


def resume(run_on_8, workdir, model_dir, env, *mesh_flags) -> subprocess.CompletedProcess:
  """A copy of the 8-device run continued to iteration 3 under another topology."""
  shutil.copytree(run_on_8, workdir)
  res = train(model_dir, workdir, env, "--config.train.steps=3", *mesh_flags)
  assert "resumed from iteration 2" in res.stderr, res.stderr[-3000:]
  assert metric_steps(workdir) == [1, 2, 3]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2", "3"]
  return res


@pytest.fixture(scope="module")
def resumed_on_one_device(run_on_8, model_dir, tmp_path_factory):
  """The 8-device run resumed on one device: its checkpoint 3 is written by a one-device process."""
  workdir = str(tmp_path_factory.mktemp("resumed1") / "run")
  resume(run_on_8, workdir, model_dir, ONE_DEVICE)
  assert saved_mesh(workdir, 3) == (1, 1, 1)
  return workdir


def test_run_trained_on_8_devices_evaluates_and_exports_on_one(run_on_8, model_dir, tmp_path):
  res = run(
    [
      "-m",
      "opid_jax.evaluate",
      "--config=configs/smoke.py",
      f"--workdir={run_on_8}",
      f"--config.model.path={model_dir}",
      "--num_tasks=2",
    ],
    ONE_DEVICE,
  )
  assert "| all | 2 |" in res.stdout, res.stdout
  with open(os.path.join(run_on_8, "eval_valid_unseen.json")) as f:
    assert json.load(f)["checkpoint_iteration"] == 2

  out = str(tmp_path / "hf")
  res = run(["-m", "opid_jax.export", f"--workdir={run_on_8}", f"--out={out}"], ONE_DEVICE)
  assert "exported iteration 2" in res.stdout
  exported = flat_params(nnx.split(loading.load(out, dtype="float32").model)[1])
  saved = checkpoint_params(run_on_8, 2)
  assert exported.keys() == saved.keys()
  for name, value in saved.items():
    assert exported[name].dtype == value.dtype, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  base = flat_params(nnx.split(loading.load(model_dir, dtype="float32").model)[1])
  assert any(not np.array_equal(base[k], saved[k]) for k in saved)  # training changed the weights


def test_restored_params_are_the_models_state(run_on_8, model_dir):
  """In-process (one device): restore_latest_params gives an nnx.State of the model's structure (variable types
  and metadata included) that nnx.update accepts, holding the checkpoint's values."""
  from opid_jax.checkpoint import run_files

  model = loading.load(model_dir, dtype="float32").model
  _, params = nnx.split(model)
  restored, step = run_files.restore_latest_params(run_on_8, params)
  assert step == 2 and isinstance(restored, nnx.State)
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  nnx.update(model, restored)
  got, saved = flat_params(nnx.split(model)[1]), checkpoint_params(run_on_8, 2)
  assert got.keys() == saved.keys()
  for name, value in saved.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_one_device_checkpoint_restores_onto_an_8_device_mesh(resumed_on_one_device, model_dir):
  script = textwrap.dedent("""
      import sys
      import jax
      import numpy as np
      from flax import nnx
      from configs import smoke
      from opid_jax.checkpoint import run_files
      from opid_jax.model import loading
      from opid_jax.parallel import mesh as mesh_lib

      model_dir, workdir, out = sys.argv[1:4]
      assert jax.device_count() == 8, jax.devices()
      rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in smoke.get_config().mesh.rules)
      mesh = mesh_lib.make_mesh(dict(data=2, fsdp=4, tensor=1))
      loaded = loading.load(model_dir, dtype="float32",
                            shardings=lambda var: mesh_lib.variable_sharding(var, mesh, rules))
      _, params = nnx.split(loaded.model)
      restored, step = run_files.restore_latest_params(workdir, params)
      assert step == 3 and isinstance(restored, nnx.State)
      assert jax.tree.structure(restored) == jax.tree.structure(params)
      sharded = 0
      for (path, got), (_, want) in zip(nnx.to_flat_state(restored), nnx.to_flat_state(params)):
        sharding = got[...].sharding
        assert sharding == want[...].sharding, (path, sharding, want[...].sharding)
        sharded += len(sharding.device_set) == 8 and not sharding.is_fully_replicated
      assert sharded > 0
      nnx.update(loaded.model, restored)
      np.savez(out, **{"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(restored)})
      """)
  out = os.path.join(resumed_on_one_device, "restored_on_8.npz")
  run(["-c", script, model_dir, resumed_on_one_device, out], EIGHT_DEVICES)
  got, saved = dict(np.load(out)), checkpoint_params(resumed_on_one_device, 3)
  assert got.keys() == saved.keys()
  for name, value in saved.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_resume_on_one_device(resumed_on_one_device):
  assert metric_steps(resumed_on_one_device) == [1, 2, 3]  # the fixture's checks: resumed, finished


def test_resume_on_another_mesh_shape(run_on_8, model_dir, tmp_path):
  workdir = str(tmp_path / "run")
  resume(run_on_8, workdir, model_dir, EIGHT_DEVICES, "--config.mesh.data=2", "--config.mesh.fsdp=4", *EIGHT_WAY)
  assert saved_mesh(workdir, 3) == (2, 4, 1)
