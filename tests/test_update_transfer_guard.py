"""The update step moves no data implicitly: under jax.transfer_guard("disallow") (implicit host->device,
device->host and device->device transfers raise), once compiled, the jitted steps run on device-placed inputs, and
the stacked path's whole optimizer_step runs too (its host batch goes to the devices by explicit device_put).

On CPU the guard covers host->device and device->device copies (device->host reads are unguarded there).
Both update paths (stacked micro-batches, and length-bucketed micro-batches of several shapes) run whole, through
`minibatch_step.optimizer_step`: its host batch goes to the devices by explicit device_put, and the bucketed
path's token total and zero accumulator are made on the devices by jitted calls.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_model
from update_check import RULES, fixed_samples

from opid_jax.model.sharding import use_rules
from opid_jax.parallel import mesh as mesh_lib
from opid_jax.rl import batch as batch_lib, minibatch_step, update

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = update.LossConfig(kl_coef=0.01, entropy_coef=0.001, dual_clip=3.0, chunk_size=8)
BUCKETS = dict(pad_id=0, prompt_buckets=(16, 32), response_buckets=(8, 16))


def setup(mesh_sizes: dict, bucketed: bool):
  """(mesh, layout, graphdef, optimizer, sharded train state) for the tiny model."""
  mesh = mesh_lib.make_mesh(mesh_sizes)
  graphdef, params = nnx.split(tiny_model(seed=0))
  params = mesh_lib.shard_params(params, mesh, RULES)
  tx = update.make_optimizer(lr=1e-3, weight_decay=0.01, grad_clip=1.0)
  micro = 4 * mesh_lib.data_parallel_size(mesh, RULES)
  layout = minibatch_step.BatchLayout(mesh, RULES, micro, bucketed=bucketed, **BUCKETS)
  return mesh, layout, graphdef, tx, update.init_train_state(params, tx)


def optimizer_steps_under_guard(mesh_sizes: dict, bucketed: bool) -> int:
  """Two optimizer steps through minibatch_step.optimizer_step, the second under the guard; returns the final step
  count. The bucketed mini-batch spans two prompt buckets (two compiled micro-batch shapes)."""
  mesh, layout, graphdef, tx, state = setup(mesh_sizes, bucketed=bucketed)
  samples = fixed_samples(n=2 * layout.micro_batch_size)
  if bucketed:
    samples[0].prompt_ids = list(range(1, 30))
    micros = batch_lib.length_sorted_micro_batches(
      samples, micro_batch_size=layout.micro_batch_size, with_ref=True, **BUCKETS
    )
    assert len({m["prompt_ids"].shape for m in micros}) == 2
  with use_rules(mesh, RULES):
    step = functools.partial(
      minibatch_step.optimizer_step, part=samples, layout=layout, graphdef=graphdef, tx=tx, cfg=CFG, with_ref=True
    )
    state, _ = step(state)  # compiles
    with jax.transfer_guard("disallow"):
      state, metrics = step(state)
      jax.block_until_ready((state, metrics))
  return int(state.step)


def check_the_guard_bites():
  """The guard raises on an implicit host->device copy and, given two devices, on an implicit reshard. (CPU
  arrays live in host memory: device->host reads are not guarded there, only on accelerators.)"""
  x = jax.block_until_ready(jnp.ones(3))
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    jax.block_until_ready(x + np.ones(3, np.float32))
  if jax.device_count() > 1:
    on_second = jax.jit(lambda a: a * 2, in_shardings=jax.sharding.SingleDeviceSharding(jax.devices()[1]))
    jax.block_until_ready(on_second(jax.device_put(x, jax.devices()[1])))
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="Disallowed device-to-device transfer"):
      jax.block_until_ready(on_second(x))


def test_the_guard_bites():
  check_the_guard_bites()


ONE_DEVICE = dict(data=1, fsdp=1, tensor=1)


@pytest.mark.parametrize("bucketed", [False, True])
def test_optimizer_step_makes_no_implicit_transfer(bucketed):
  assert optimizer_steps_under_guard(ONE_DEVICE, bucketed) == 2


@pytest.mark.slow
def test_sharded_steps_make_no_implicit_transfer():
  """On a data=2 x fsdp=4 mesh of 8 CPU devices: implicit device-to-device copies (a reshard) would raise too."""
  script = textwrap.dedent("""
      import jax
      import test_update_transfer_guard as t
      assert jax.device_count() == 8, jax.devices()
      t.check_the_guard_bites()
      sizes = dict(data=2, fsdp=4, tensor=1)
      assert t.optimizer_steps_under_guard(sizes, False) == 2 and t.optimizer_steps_under_guard(sizes, True) == 2
      print("OK")
      """)
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]),
  )
  res = subprocess.run(
    [sys.executable, "-c", script], cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=600
  )
  assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]
