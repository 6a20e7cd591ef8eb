"""Checkpointer (Orbax round trips, cadence, retention, sharding, interrupted saves) and PreemptionGuard."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from opid_jax.checkpoint.checkpointer import Checkpointer, PreemptionGuard
from opid_jax.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST_STATE = {
  "task_position": 17,
  "py_rng": [3, [1, 2, 3], None],
  "np_rng": {"state": {"key": [5, 6]}},
  "config": {"lr": 1e-6, "routing": "episode_only"},
}


def _train_state(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "params": {
      "w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
      "emb": jnp.asarray(rng.normal(size=(16, 4)), jnp.bfloat16),
    },
    "opt": {"count": jnp.int32(seed), "mu": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)},
    "rng": jax.random.key_data(jax.random.key(seed)),
  }


def _abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _run_python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(script), *args],
    cwd=REPO_ROOT,
    text=True,
    capture_output=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
    timeout=120,
  )


def test_round_trip_of_device_and_host_state(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=1, async_save=True)
  state = _train_state(seed=1)
  assert ckpt.save(5, state, HOST_STATE)
  ckpt.wait()
  assert ckpt.latest_step() == 5
  step, restored, host = ckpt.restore(None, _abstract(_train_state()))
  ckpt.close()
  assert step == 5 and host == HOST_STATE
  _assert_trees_equal(restored, state)
  assert restored["params"]["emb"].dtype == jnp.bfloat16 and restored["rng"].dtype == jnp.uint32


def test_host_state_is_copied_when_saved(tmp_path):
  ckpt = Checkpointer(str(tmp_path), save_every=1)
  host = {"history": [1.0], "np_scalar": np.float32(0.5), "np_list": np.arange(2)}
  ckpt.save(1, _train_state(), host)
  host["history"].append(2.0)  # the trainer moves on while the async save runs
  _, _, restored = ckpt.restore(1, _abstract(_train_state()))
  ckpt.close()
  assert restored == {"history": [1.0], "np_scalar": 0.5, "np_list": [0, 1]}


def test_cadence_force_and_retention(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2, save_every=3, async_save=True)
  state = _train_state()
  assert [ckpt.save(step, state, {"step": step}) for step in range(1, 8)] == [
    False,
    False,
    True,
    False,
    False,
    True,
    False,
  ]
  assert ckpt.save(7, state, {"step": 7}, force=True)  # the preemption save
  assert not ckpt.save(7, state, {"step": 7}, force=True)  # already there: no error, no second save
  ckpt.wait()
  assert ckpt.all_steps() == [6, 7] and ckpt.latest_step() == 7
  assert sorted(p.name for p in tmp_path.iterdir()) == ["6", "7"]
  assert ckpt.restore(6, _abstract(state))[2] == {"step": 6}
  ckpt.close()


def test_empty_directory_has_no_latest_step(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "new"))
  assert ckpt.latest_step() is None
  with pytest.raises(UserError, match="no complete checkpoint in .*new"):
    ckpt.restore(None, _abstract(_train_state()))
  with pytest.raises(UserError, match="step 3"):
    ckpt.restore(3, _abstract(_train_state()))
  ckpt.close()


def test_directory_that_cannot_be_created(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(UserError, match=f"cannot create checkpoint directory {blocker}/ckpt"):
    Checkpointer(str(blocker / "ckpt"))


def test_restore_onto_a_different_structure_names_the_leaves(tmp_path):
  ckpt = Checkpointer(str(tmp_path), save_every=1, async_save=False)
  state = _train_state()
  ckpt.save(2, state, {})
  extra = _abstract(state)
  extra["opt"]["nu"] = extra["opt"]["mu"]
  with pytest.raises(UserError, match=r"checkpoint .*/2 does not fit .*missing from checkpoint: opt/nu") as err:
    ckpt.restore(2, extra)
  assert "\n" not in str(err.value)
  reshaped = _abstract(state)
  reshaped["params"]["w"] = jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=reshaped["params"]["w"].sharding)
  with pytest.raises(UserError, match=r"params/w has shape \(8, 4\) in the checkpoint, \(4, 8\) wanted"):
    ckpt.restore(2, reshaped)
  ckpt.close()


def test_sharded_state_restores_onto_the_same_shardings(tmp_path):
  result = _run_python(
    """
      import sys
      import jax, jax.numpy as jnp, numpy as np
      import orbax.checkpoint as ocp
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from opid_jax.checkpoint.checkpointer import Checkpointer

      assert jax.device_count() == 8, jax.devices()
      mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
      specs = {"w": P("data", "fsdp"), "b": P("fsdp"), "emb": P(None, "fsdp"), "rng": P()}
      values = {"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.arange(8.0),
                "emb": jnp.arange(32).reshape(4, 8).astype(jnp.bfloat16),
                "rng": jax.random.key_data(jax.random.key(3))}
      state = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in values.items()}
      ckpt = Checkpointer(sys.argv[1], save_every=1)
      ckpt.save(1, state, {"ok": True})
      ckpt.wait()
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      step, restored, host = ckpt.restore(None, abstract)
      ckpt.close()
      assert step == 1 and host == {"ok": True}
      for k in state:
        assert restored[k].sharding == state[k].sharding, (k, restored[k].sharding)
        assert restored[k].dtype == state[k].dtype
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(values[k]))
      print("OK")
      """,
    str(tmp_path),
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_save_killed_mid_write_is_ignored(tmp_path):
  result = _run_python(
    """
      import os, signal, sys, time
      import jax.numpy as jnp
      from opid_jax.checkpoint.checkpointer import Checkpointer

      ckpt = Checkpointer(sys.argv[1], save_every=1, async_save=True)
      ckpt.save(1, {"w": jnp.full((4,), 1.0)}, {"step": 1})
      ckpt.wait()
      ckpt.save(2, {"w": jnp.full((8, 1024, 1024), 2.0)}, {"step": 2})  # 32 MB, written in the background
      # Orbax creates the temporary directory asynchronously too: kill once it exists.
      while not os.path.exists(os.path.join(sys.argv[1], "2.orbax-checkpoint-tmp")):
        time.sleep(0.001)
      os.kill(os.getpid(), signal.SIGKILL)
      """,
    str(tmp_path),
  )
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2.orbax-checkpoint-tmp"]

  ckpt = Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.latest_step() == 1
  step, state, host = ckpt.restore(None, {"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
  assert step == 1 and host == {"step": 1}
  np.testing.assert_array_equal(state["w"], np.ones(4))
  assert ckpt.save(2, {"w": jnp.full((4,), 2.0)}, {"step": 2})  # redoing the lost step works
  ckpt.close()
  assert ckpt.latest_step() == 2


def test_unfinalized_step_directory_is_ignored(tmp_path):
  ckpt = Checkpointer(str(tmp_path), save_every=1, async_save=False)
  for step in (1, 3):
    ckpt.save(step, {"w": jnp.full((2,), float(step))}, {"step": step})
  ckpt.close()
  # Undo step 3's final rename: what a crash between writing and finalizing leaves on a local disk.
  (tmp_path / "3").rename(tmp_path / "3.orbax-checkpoint-tmp")
  ckpt = Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
  assert ckpt.restore(None, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})[2] == {"step": 1}
  ckpt.close()


def _wait_for(predicate, timeout_s: float = 5.0) -> bool:
  deadline = time.monotonic() + timeout_s
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.01)
  return predicate()


def test_preemption_guard_turns_sigterm_into_a_flag():
  before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
  with PreemptionGuard() as guard:
    assert not guard.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: guard.requested)
  assert {signum: signal.getsignal(signum) for signum in before} == before


def test_second_sigint_interrupts_at_once():
  before = signal.getsignal(signal.SIGINT)
  with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert _wait_for(lambda: guard.requested)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for(lambda: False, timeout_s=2.0)
  assert signal.getsignal(signal.SIGINT) is before


def test_relative_directory_works(tmp_path, monkeypatch):
  import jax.numpy as jnp

  from opid_jax.checkpoint.checkpointer import Checkpointer

  monkeypatch.chdir(tmp_path)
  ckpt = Checkpointer("runs/x/checkpoints", keep=2, save_every=1, async_save=False)
  state = {"w": jnp.arange(4.0)}
  assert ckpt.save(1, state, {"iteration": 1})
  ckpt.wait()
  step, restored, host = ckpt.restore(None, {"w": jnp.zeros(4)})
  assert step == 1 and host == {"iteration": 1} and restored["w"].tolist() == [0, 1, 2, 3]
  ckpt.close()
