"""The README's official-settings and paper-rows tables against the config files and the row switch (no drift)."""

import ast
import importlib
import os
import re

import pytest

from opid_jax.training import algo_rows, config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDPOINT = dict(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="OPID_ROWS_KEY")


def readme_table(marker: str) -> list[list[str]]:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  body = text.split(f"<!-- {marker}:begin -->")[1].split(f"<!-- {marker}:end -->")[0]
  lines = [line for line in body.strip().splitlines() if line.startswith("|")][2:]  # header and rule dropped
  assert lines, f"README table {marker} is empty"
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def config(name: str):
  return importlib.import_module(f"configs.{name}").get_config()


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def settings_of(cell: str) -> list[tuple[str, object]]:
  return [(key, parse_value(value)) for key, value in re.findall(r"`([\w.]+)=([^`]*)`", cell)]


OFFICIAL = readme_table("official-settings")


@pytest.mark.parametrize("row", OFFICIAL, ids=[r[0] for r in OFFICIAL])
def test_official_settings_table_matches_the_configs(row):
  setting, _, ours, configs = row
  pairs = settings_of(ours)
  assert pairs, f"{setting}: no `key=value` in the ours column"
  for name in (c.strip() for c in configs.split(",")):
    c = config(name)
    for key, want in pairs:
      block, field = key.split(".")
      got = c[block][field]
      assert got == want or (isinstance(want, float) and got == pytest.approx(want)), f"{name}: {key}={got}"


def test_the_table_catches_drift():
  c = config("alfworld")
  c.ppo.dual_clip = 0.0
  (row,) = [r for r in OFFICIAL if r[0] == "dual clip"]
  assert dict(settings_of(row[2]))["ppo.dual_clip"] != c.ppo.dual_clip


PAPER_ROWS = readme_table("paper-rows")


def apply_overrides(c, command: str):
  for key, value in re.findall(r"--config\.([\w.]+)=(\S+)", command.strip("`")):
    node = c
    *path, field = key.split(".")
    for part in path:
      node = node[part]
    node[field] = type(node[field])(parse_value(value)) if not isinstance(node[field], str) else value
  return c


def test_every_algo_row_is_in_the_table():
  named = set(re.findall(r"--config\.algo\.name=(\w+)", " ".join(r[1] for r in PAPER_ROWS)))
  assert named | {"opid"} == set(algo_rows.ROWS)


@pytest.mark.parametrize("row", PAPER_ROWS, ids=[r[0] for r in PAPER_ROWS])
def test_every_command_line_is_accepted(row, monkeypatch):
  name, command, _ = row
  c = apply_overrides(config("alfworld"), command)
  monkeypatch.setenv("OPID_ROWS_KEY", "k")
  if algo_rows.needs_analyzer(c):
    c.analyzer.update(**ENDPOINT)
  config_checks.validate(c)
  if name in ("GRPO", "GiGPO"):  # no skills: no analyzer endpoint needed
    assert not algo_rows.needs_analyzer(c)
