"""Finds the JSON object inside a model's free-form reply, forgiving the usual slips.

Handles ```json fences, prose around the object, trailing commas, raw newlines inside strings and
repeated keys (the first non-empty value wins).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def _is_empty(value: Any) -> bool:
  return value is None or value == "" or value == {} or value == []


def _first_non_empty_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  merged: dict[str, Any] = {}
  for key, value in pairs:
    if key not in merged or (_is_empty(merged[key]) and not _is_empty(value)):
      merged[key] = value
  return merged


def _scan_outside_strings(text: str) -> Iterator[tuple[int, str]]:
  """Yields (position, char) for every character that is not inside a JSON string literal."""
  in_string = False
  escaped = False
  for position, char in enumerate(text):
    if in_string:
      if escaped:
        escaped = False
      elif char == "\\":
        escaped = True
      elif char == '"':
        in_string = False
      continue
    if char == '"':
      in_string = True
      continue
    yield position, char


def strip_trailing_commas(text: str) -> str:
  """Removes commas that directly precede a closing brace or bracket (outside strings)."""
  drop: set[int] = set()
  last_comma = None
  for position, char in _scan_outside_strings(text):
    if char == ",":
      last_comma = position
    elif char in "}]":
      if last_comma is not None:
        drop.add(last_comma)
      last_comma = None
    elif not char.isspace():
      last_comma = None
  return "".join(char for position, char in enumerate(text) if position not in drop)


def balanced_objects(text: str) -> list[str]:
  """Every top-level `{...}` span of the text, in order of appearance."""
  spans = []
  depth = 0
  start = 0
  for position, char in _scan_outside_strings(text):
    if char == "{":
      if depth == 0:
        start = position
      depth += 1
    elif char == "}" and depth > 0:
      depth -= 1
      if depth == 0:
        spans.append(text[start : position + 1])
  return spans


def _candidates(text: str) -> Iterator[str]:
  for fenced in _FENCE.findall(text):
    yield fenced.strip()
    yield from balanced_objects(fenced)
  yield text.strip()
  yield from balanced_objects(text)


def _decode(candidate: str) -> Any:
  return json.loads(strip_trailing_commas(candidate), strict=False, object_pairs_hook=_first_non_empty_pairs)


def find_json_object(text: str, accept: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
  """The first JSON object in `text` that `accept` approves; ValueError when there is none."""
  seen: set[str] = set()
  for candidate in _candidates(text):
    if not candidate or candidate in seen:
      continue
    seen.add(candidate)
    try:
      value = _decode(candidate)
    except ValueError:
      continue
    if isinstance(value, dict) and accept(value):
      return value
  raise ValueError("no usable JSON object in the reply")
