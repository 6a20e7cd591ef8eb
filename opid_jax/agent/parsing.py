"""Turns a policy response into the action an environment receives, and judges its format.

A response is *valid* when it has a `<think>...</think>` block, a well-formed action block and no CJK
characters (`parse_action_response`, for the action-only format: a well-formed action block and no CJK
characters). An invalid response is still turned into a best-effort action so that the episode goes on;
the trainer penalises the step through `valid=False`.
"""

from __future__ import annotations

import dataclasses
import re

from opid_jax.envs.search_qa import search_r1_action

# CJK unified ideographs (U+4E00-U+9FFF, the official validity rule): any of them marks a response as malformed.
_CJK = re.compile(r"[\u4e00-\u9fff]")
_ANY_TAG = re.compile(r"</?(?:think|action|search|answer|information)>", re.IGNORECASE)
_SEARCH_BLOCK = re.compile(r"<search>(.*?)</search>", re.DOTALL)  # case-sensitive, as in Search-R1
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BEST_EFFORT_CHARS = 100


@dataclasses.dataclass(frozen=True)
class ParsedAction:
  action: str  # what the environment receives
  valid: bool
  problem: str = ""  # why the response is invalid; empty when valid


def has_cjk(text: str) -> bool:
  return _CJK.search(text) is not None


def has_think_block(text: str) -> bool:
  start = text.find("<think>")
  return start != -1 and text.find("</think>", start) != -1


def _strip_tags(text: str) -> str:
  return " ".join(_ANY_TAG.sub(" ", text).split())


def _last_nonempty_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _best_effort_action(lowered: str) -> str:
  """An action for a response without a complete action block: the text after an unclosed
  `<action>`, else the last non-empty line, tags removed."""
  start = lowered.find("<action>")
  if start != -1:
    candidate = _strip_tags(lowered[start + len("<action>") :].split("\n")[0])
    if candidate:
      return candidate[:_BEST_EFFORT_CHARS]
  return _strip_tags(_last_nonempty_line(lowered))[:_BEST_EFFORT_CHARS]


def _format_problem(text: str, need_think: bool = True) -> str:
  if has_cjk(text):
    return "contains CJK characters"
  if need_think and not has_think_block(text):
    return "missing <think></think> block"
  return ""


def parse_text_action(response_text: str) -> ParsedAction:
  """ALFWorld/WebShop style: lowercase, take the text between the first `<action>` and the next
  `</action>`. Text after the closing tag is ignored."""
  return _parse_action_block(response_text, need_think=True)


def parse_action_response(response_text: str) -> ParsedAction:
  """The action-only format (`rollout.response_format="action"`): as parse_text_action, without the
  `<think>` block. `response_text` is the whole assistant turn, the pre-filled `<action>` included."""
  return _parse_action_block(response_text, need_think=False)


def _parse_action_block(response_text: str, need_think: bool) -> ParsedAction:
  lowered = response_text.lower()
  start = lowered.find("<action>")
  end = lowered.find("</action>", start + 1) if start != -1 else -1
  if start == -1 or end == -1:
    return ParsedAction(_best_effort_action(lowered), False, "missing <action></action> block")
  inner = lowered[start + len("<action>") : end]
  if _ANY_TAG.search(inner):
    return ParsedAction(_strip_tags(inner), False, "tags nested inside the action block")
  action = inner.strip()
  if not action:
    return ParsedAction("", False, "empty action")
  problem = _format_problem(response_text, need_think)
  return ParsedAction(action, not problem, problem)


def search_action(query: str) -> str:
  return f"<search>{query}</search>"


def answer_action(answer: str) -> str:
  return f"<answer>{answer}</answer>"


def parse_search_response(response_text: str) -> ParsedAction:
  """Search-QA style, read as Search-R1 reads a response (envs/search_qa.py `search_r1_action`): the turn ends
  at the first `</search>` (else the first `</answer>`), its first complete `<search>` or `<answer>` pair is the
  action, tags are case-sensitive, and so an answer is the first `<answer>` of the turn. The env receives the
  action re-wrapped in its tag, e.g. `<search>capital of peru</search>`. Validity is judged on the whole
  response."""
  kind, content = search_r1_action(response_text)
  if kind is None:
    return ParsedAction("", False, "missing <search></search> or <answer></answer> block")
  answering = kind == "answer"
  if _ANY_TAG.search(content):
    content = _strip_tags(content)
    problem = "tags nested inside the action block"
  else:
    content = " ".join(content.split())
    problem = ""
  action = answer_action(content) if answering else search_action(content)
  if not problem and not content:
    problem = "empty answer" if answering else "empty search query"
  if not problem and _SEARCH_BLOCK.search(response_text) and _ANSWER_BLOCK.search(response_text):
    problem = "both <search> and <answer> blocks"
  problem = problem or _format_problem(response_text)
  return ParsedAction(action, not problem, problem)
