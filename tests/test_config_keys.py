"""Every key of every shipped config is read by the package: a key nothing reads is a knob that does nothing.

A key counts as read when its name appears in `opid_jax/**/*.py` as `x.name` (not assigned to), `x["name"]`,
`x.get("name")` or `getattr(x, "name")`. Checking a value is not using it: config_checks.py and functions named
validate* do not count, nor do benchmarks.
"""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
CHECKERS = ("config_checks.py",)


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
  keys = []
  for name, value in tree.items():
    keys += leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]
  return keys


def _string(node) -> str | None:
  return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _read_name(node) -> str | None:
  if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
    return node.attr
  if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
    return _string(node.slice)
  if isinstance(node, ast.Call) and node.args:
    if isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop"):
      return _string(node.args[0])
    if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) > 1:
      return _string(node.args[1])
  return None


def read_names(source: str) -> set[str]:
  """The attribute and item names `source` reads, outside functions named validate*."""
  tree = ast.parse(source)
  skipped = {
    id(n)
    for f in ast.walk(tree)
    if isinstance(f, ast.FunctionDef) and f.name.startswith("validate")
    for n in ast.walk(f)
  }
  return {name for node in ast.walk(tree) if id(node) not in skipped and (name := _read_name(node))}


def unread_keys(config: dict, names: set[str]) -> list[str]:
  return [key for key in leaf_keys(config) if key.rsplit(".", 1)[-1] not in names]


@pytest.fixture(scope="module")
def package_reads() -> set[str]:
  files = [p for p in (ROOT / "opid_jax").rglob("*.py") if p.name not in CHECKERS]
  return set().union(*(read_names(p.read_text()) for p in files))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_key_is_read(name, package_reads):
  config = importlib.import_module(f"configs.{name}").get_config().to_dict()
  assert unread_keys(config, package_reads) == [], f"configs/{name}.py has keys nothing in opid_jax/ reads"


def test_an_unread_key_is_caught():
  source = """
def run(config):
  config.env.eval_split = "x"  # a write is not a read
  return config.train.steps, config.ppo["epochs"], config.checkpoint.get("dir"), getattr(config.optim, "lr")

def validate(config):
  assert config.train.log_every > 0  # a check is not a use
"""
  names = read_names(source)
  config = {
    "train": {"steps": 1, "log_every": 1},
    "ppo": {"epochs": 1},
    "checkpoint": {"dir": ""},
    "optim": {"lr": 1e-6},
    "env": {"eval_split": "valid"},
  }
  assert unread_keys(config, names) == ["train.log_every", "env.eval_split"]
