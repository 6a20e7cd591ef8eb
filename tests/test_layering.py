"""Layering: the host-side layers (envs, agent, skills) never use JAX, and envs never depend on the agent.

Two checks per rule. Statically, no import statement in these files (function-local ones included) names a JAX
package, and no envs file imports opid_jax.agent. Transitively, importing each module in a fresh interpreter loads
no JAX package (env workers import these modules; JAX there costs seconds and may claim an accelerator) and, for
envs, no opid_jax.agent module. A function-local import of another layer (the scorer in skills/probe.py) is fine:
it runs only when called.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_LAYERS = ("envs", "agent", "skills")
JAX_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax")
AGENT = "opid_jax.agent"


def modules_of(layer: str) -> list[str]:
  names = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, "opid_jax", layer)):
    package = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
    for f in sorted(files):
      if f.endswith(".py"):
        names.append(package if f == "__init__.py" else f"{package}.{f[:-3]}")
  return sorted(names)


def source_of(module: str) -> tuple[str, bool]:
  """(source, is_package)."""
  base = os.path.join(ROOT, *module.split("."))
  path = os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"
  with open(path) as f:
    return f.read(), os.path.isdir(base)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
  """Every module an import statement anywhere in `source` may load; `from a import b` gives both a and a.b
  (b may be a submodule). Relative imports are resolved against `module`."""
  package = module if is_package else module.rpartition(".")[0]
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{parent}.{base}" if base else parent
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def within(name: str, packages) -> bool:
  return any(name == p or name.startswith(p + ".") for p in packages)


def loaded_by_import(module: str) -> list[str]:
  """The JAX and opid_jax.agent modules that importing `module` loads, in a fresh interpreter."""
  script = textwrap.dedent("""
      import importlib, json, sys
      importlib.import_module(sys.argv[1])
      roots = set(sys.argv[2:])
      print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in roots or m.startswith("opid_jax.agent"))))
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run(
    [sys.executable, "-c", script, module, *JAX_PACKAGES],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


ALL_MODULES = [m for layer in HOST_LAYERS for m in modules_of(layer)]
ENV_MODULES = modules_of("envs")


def test_the_layers_have_modules():
  assert len(ENV_MODULES) > 5 and "opid_jax.skills.probe" in ALL_MODULES and "opid_jax.agent.rollout" in ALL_MODULES


def test_detector_sees_every_form_of_import():
  source = textwrap.dedent("""
      import os, jax.numpy as jnp
      from flax import nnx
      from . import base
      from ..agent import rollout
      from opid_jax import agent
      import jaxtyping

      def lazy():
        import optax
      """)
  names = imported_names(source, "opid_jax.envs.x")
  assert {
    "os",
    "jax.numpy",
    "flax",
    "flax.nnx",
    "optax",
    "opid_jax.envs.base",
    "opid_jax.agent.rollout",
    "opid_jax.agent",
  } <= names
  assert sorted(n for n in names if within(n, JAX_PACKAGES)) == ["flax", "flax.nnx", "jax.numpy", "optax"]
  assert "opid_jax.envs.webshop.data" in imported_names("from .data import Goal", "opid_jax.envs.webshop.world")
  assert "opid_jax.envs.base" in imported_names("from ..base import Env", "opid_jax.envs.webshop", is_package=True)
  assert not within("opid_jax.agents_old", [AGENT]) and within("opid_jax.agent.rollout", [AGENT])


def imports_of(module: str, packages) -> list[str]:
  source, is_package = source_of(module)
  return sorted(n for n in imported_names(source, module, is_package) if within(n, packages))


def test_no_host_layer_module_imports_jax():
  offenders = {m: imports_of(m, JAX_PACKAGES) for m in ALL_MODULES}
  assert not {m: names for m, names in offenders.items() if names}


def test_envs_do_not_import_the_agent():
  offenders = {m: imports_of(m, [AGENT]) for m in ENV_MODULES}
  assert not {m: names for m, names in offenders.items() if names}


def test_transitive_check_sees_jax():
  assert "jax" in loaded_by_import("opid_jax.rl.loss")
  assert AGENT in loaded_by_import("opid_jax.skills.routing")


@pytest.mark.parametrize("module", ALL_MODULES)
def test_importing_loads_no_jax(module):
  loaded = loaded_by_import(module)
  assert not [m for m in loaded if within(m, JAX_PACKAGES)][:5]
  if module in ENV_MODULES:
    assert not [m for m in loaded if within(m, [AGENT])]
