"""Logical axis names for parameters and activations.

The model only names axes ("batch", "embed", "heads", ...). `parallel.mesh` installs a mesh and a list of
(logical, mesh axis) rules with `use_rules`; without one, every constraint here is a no-op, so the model runs
unchanged on a single CPU device.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("opid_sharding_rules", default=None)

LogicalAxes = tuple[str | None, ...]


@contextlib.contextmanager
def use_rules(mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, str | tuple[str, ...] | None]]):
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_mesh_and_rules():
  return _ACTIVE.get()


def logical_to_spec(axes: LogicalAxes, rules) -> PartitionSpec:
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in axes:
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used)  # a mesh axis may shard only one dimension
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else (targets or None))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
  """with_sharding_constraint by logical names when rules are active; identity otherwise."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules)))


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh) -> PartitionSpec:
  """Drops mesh axes from the dimensions they do not divide (e.g. 2 kv heads on a tensor axis of 4)."""
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    size = math.prod(mesh.shape[a] for a in axes)
    fitted.append(entry if axes and dim % size == 0 else None)
  return PartitionSpec(*fitted)
