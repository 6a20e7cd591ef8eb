"""Step prompts: one user message per step, rendered to plain text, then wrapped by the chat template.

Layout shared by every environment (the skill router, skills/routing.py, finds its place by these anchors,
defined here only):
  role line
  task line                        `Your task is to: ...` / `Your question: ...` (episode-skill anchor)
  steps taken so far, and from step 1 on the last K `[Observation n: '...', Action n: '...']` pairs
  current step number and observation
  admissible actions as a quoted list (the `action` response format: one `<action>...</action>` line each)
  (blank line)
  final instruction line           starts with `Now it's your turn` (step-skill anchor)
Steps are numbered from 1 in the text; `step_index` arguments are 0-based.

Response formats (`rollout.response_format`, ALFWorld): `think_action` asks for `<think>...</think>` then
`<action>...</action>`; `action` lists each admissible action as the exact line to write, and the rollout
pre-fills the assistant turn with ACTION_PREFILL, so the model only writes the action and `</action>` (a tiny
model such as SmolLM2-135M follows this, not the free-form instruction).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from opid_jax.batching import prompt_length

TASK_ANCHOR = "Your task is to: "
QUESTION_ANCHOR = "Your question: "
EPISODE_ANCHORS = (TASK_ANCHOR, QUESTION_ANCHOR)  # the episode skill goes after the first line holding one
TURN_ANCHOR = "Now it's your turn"  # the step skill goes before the last line starting with it
ACTION_PREFILL = "<action>"  # how the assistant turn starts in the `action` response format


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
  observation: str  # what the agent saw at that step
  action: str  # what the env received at that step


def format_action_list(actions: Sequence[str]) -> str:
  return "[" + ", ".join(f"'{action}'" for action in actions) + "]"


def format_action_lines(actions: Sequence[str]) -> list[str]:
  """One line per action, written exactly as the `action` response format's answer."""
  return [f"<action>{action}</action>" for action in actions]


def format_history(history: Sequence[HistoryEntry], history_length: int) -> str:
  """The last `history_length` entries, numbered by their absolute (1-based) step."""
  first = max(0, len(history) - history_length)
  return "\n".join(
    f"[Observation {n}: '{entry.observation}', Action {n}: '{entry.action}']"
    for n, entry in enumerate(history[first:], start=first + 1)
  )


def _progress_lines(history: Sequence[HistoryEntry], history_length: int, what: str) -> list[str]:
  steps_taken = len(history)
  if steps_taken == 0:
    return ["You have taken 0 steps so far."]
  shown = min(steps_taken, history_length)
  return [
    f"You have taken {steps_taken} step(s) so far. Your last {shown} {what}:",
    format_history(history, history_length),
  ]


def _admissible_action_prompt(
  role: str,
  instruction: str,
  task: str,
  observation: str,
  admissible_actions: Sequence[str],
  history: Sequence[HistoryEntry],
  history_length: int,
) -> str:
  """The layout shared by envs with a list of admissible actions (ALFWorld, WebShop)."""
  lines = [
    role,
    f"{TASK_ANCHOR}{task}",
    *_progress_lines(history, history_length, "observations and the actions you took"),
    f"You are now at step {len(history) + 1}. Your current observation is: {observation}",
    f"The admissible actions in this situation are: {format_action_list(admissible_actions)}",
    "",
    f"{TURN_ANCHOR} to act: {instruction}",
  ]
  return "\n".join(lines)


def render_alfworld_prompt(
  task: str,
  observation: str,
  admissible_actions: Sequence[str],
  history: Sequence[HistoryEntry],
  history_length: int = 5,
) -> str:
  """The ALFWorld step prompt; `history` holds every earlier step of the episode."""
  return _admissible_action_prompt(
    "You are an expert household agent acting in the ALFRED text world.",
    "first reason step by step about the situation inside <think> </think> tags, then pick exactly one "
    "admissible action and write it inside <action> </action> tags.",
    task,
    observation,
    admissible_actions,
    history,
    history_length,
  )


def render_alfworld_action_prompt(
  task: str,
  observation: str,
  admissible_actions: Sequence[str],
  history: Sequence[HistoryEntry],
  history_length: int = 5,
) -> str:
  """The ALFWorld step prompt of the `action` response format: the admissible actions one per line, each
  written as the answer is (`<action>go to desk 1</action>`), and an instruction to copy one line."""
  lines = [
    "You are an expert household agent acting in the ALFRED text world.",
    f"{TASK_ANCHOR}{task}",
    *_progress_lines(history, history_length, "observations and the actions you took"),
    f"You are now at step {len(history) + 1}. Your current observation is: {observation}",
    "The admissible actions in this situation are:",
    *format_action_lines(admissible_actions),
    "",
    f"{TURN_ANCHOR} to act: copy exactly one line from the list of admissible actions above.",
  ]
  return "\n".join(lines)


def render_webshop_prompt(
  task: str,
  observation: str,
  admissible_actions: Sequence[str],
  history: Sequence[HistoryEntry],
  history_length: int = 2,
) -> str:
  """The WebShop step prompt: `task` is the shopping instruction; actions are search[...] / click[...]."""
  return _admissible_action_prompt(
    "You are an expert autonomous agent shopping on a web store for a customer.",
    "first reason step by step about which product and options match the instruction inside "
    "<think> </think> tags, then write exactly one admissible action, such as search[query] or "
    "click[button], inside <action> </action> tags.",
    task,
    observation,
    admissible_actions,
    history,
    history_length,
  )


SEARCH_ACTIONS = ("<search> query </search>", "<answer> final answer </answer>")


def render_search_prompt(
  task: str,
  observation: str,
  admissible_actions: Sequence[str],
  history: Sequence[HistoryEntry],
  history_length: int = 4,
) -> str:
  """The Search-QA step prompt; `task` is the question. The action space is free text, so the
  list shows the two action forms (`admissible_actions` is ignored)."""
  del admissible_actions
  lines = [
    "You are an expert agent who answers questions step by step, searching the web when knowledge is missing.",
    f"{QUESTION_ANCHOR}{task}",
    *_progress_lines(
      history,
      history_length,
      "observations and the actions you took (search results are wrapped in <information> </information>)",
    ),
    f"You are now at step {len(history) + 1}. Your current observation is: {observation}",
    f"The actions available to you are: {format_action_list(SEARCH_ACTIONS)}",
    "",
    f"{TURN_ANCHOR} to respond: first reason inside <think> </think> tags, then do exactly one of "
    "two things: if some knowledge is missing or uncertain, write a query inside "
    "<search> </search> tags and the top results will come back inside "
    "<information> </information>; if you are confident, give a short final answer inside "
    "<answer> </answer> tags.",
  ]
  return "\n".join(lines)


def to_chat_text(tokenizer: Any, user_text: str, enable_thinking: bool = False) -> str:
  """Wraps the user message in the tokenizer's chat template with the assistant turn opened.
  `enable_thinking` is read by Qwen3 templates and ignored by others."""
  messages = [{"role": "user", "content": user_text}]
  return tokenizer.apply_chat_template(
    messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
  )


def tokenize_prompt(
  tokenizer: Any, chat_text: str, max_tokens: int | None = None, side: str = "left", what: str = "prompt"
) -> list[int]:
  """Token ids of a chat-templated prompt, held to `max_tokens` by `prompt_length.fit`: cut from the left
  (the published setups do, so that the current observation and the instruction survive) or refused ("error")."""
  ids = tokenizer(chat_text, add_special_tokens=False)["input_ids"]
  return prompt_length.fit(ids, max_tokens, side, what=what)
