"""Device meshes, logical-axis shardings for parameters and batches, and multi-process start-up."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from opid_jax.errors import UserError
from opid_jax.model.sharding import fit_spec, logical_to_spec

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry to fill the devices; errors name the numbers."""
  shape = [int(sizes[a]) for a in MESH_AXES]
  fills = [i for i, s in enumerate(shape) if s == -1]
  if len(fills) > 1:
    raise UserError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  fixed = int(np.prod([s for s in shape if s != -1]))
  if fills:
    if num_devices % fixed:
      raise UserError(f"mesh: {num_devices} devices are not divisible by the fixed axes' product {fixed}")
    shape[fills[0]] = num_devices // fixed
  if int(np.prod(shape)) != num_devices:
    raise UserError(
      f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, but {num_devices} are available"
    )
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(sizes, len(devices))
  return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def variable_sharding(var: nnx.Variable, mesh: Mesh, rules) -> NamedSharding:
  """The NamedSharding of one parameter, from its `logical_axes` metadata and the rules."""
  axes = var.get_metadata().get("logical_axes")
  spec = logical_to_spec(axes, rules) if axes else PartitionSpec()
  return NamedSharding(mesh, fit_spec(spec, var.shape, mesh))


def param_shardings(state, mesh: Mesh, rules) -> object:
  return jax.tree.map(lambda v: variable_sharding(v, mesh, rules), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_params(state, mesh: Mesh, rules):
  shardings = param_shardings(state, mesh, rules)
  return jax.tree.map(
    lambda v, s: v.replace(jax.device_put(v[...], s)), state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )


def batch_axes(rules) -> tuple[str, ...]:
  target = dict(rules).get("batch")
  return (target,) if isinstance(target, str) else tuple(target or ())


def batch_sharding(mesh: Mesh, rules, ndim: int, batch_dim: int = 0) -> NamedSharding:
  spec = [None] * ndim
  spec[batch_dim] = batch_axes(rules) or None
  return NamedSharding(mesh, PartitionSpec(*spec))


def data_parallel_size(mesh: Mesh, rules) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(rules)]))
