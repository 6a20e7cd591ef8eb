"""Search-QA: answer a question in at most `max_turns` turns, searching a retriever on the way.

The env receives `<search>query</search>` or `<answer>text</answer>` (see agent/parsing.py) and reads an
action as Search-R1 does (`search_r1_action`): the turn ends at the first `</search>` (else the first
`</answer>`), its first complete tag pair counts, and tags are case-sensitive. Queries go to a retrieval server speaking the Search-R1
`/retrieve` protocol (our `retrieval_server`, or a user's e5 + wiki-18 server), and the passages come back
as `Doc i(Title: t) text` inside `<information>...</information>`. An answer ends the episode with reward 1
on an exact match with one of the gold answers (normalised as in SQuAD/Search-R1), else 0.
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
import time
from typing import Any, Sequence

from opid_jax.envs.base import Env, Hindsight, ResetResult, StepResult

# Search-R1's patterns, case-sensitive: `<Answer>x</Answer>` is no action.
_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
INVALID_ACTION_FEEDBACK = (
  "Your previous action was not valid. To search, put a query between <search> and </search>; "
  "to answer, put the final answer between <answer> and </answer>."
)


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def as_answer_list(golden_answers: str | Sequence[Any]) -> list[str]:
  """Gold answers as a list of strings: a single string is one answer, not a sequence of characters."""
  if isinstance(golden_answers, str):
    return [golden_answers]
  return [str(gold) for gold in golden_answers]


def exact_match(prediction: str, gold_answers: str | Sequence[str]) -> bool:
  """Search-R1's `em_check`: the normalised prediction equals some normalised gold answer."""
  predicted = normalize_answer(prediction)
  return any(predicted == normalize_answer(gold) for gold in as_answer_list(gold_answers))


def search_r1_turn(text: str) -> str:
  """The part of a response that Search-R1 keeps as the turn: up to the first `</search>`, or, in a response
  without one, up to the first `</answer>` (search_r1/llm_agent/generation.py `_postprocess_responses`)."""
  for closing in ("</search>", "</answer>"):
    if closing in text:
      return text.split(closing, 1)[0] + closing
  return text


def search_r1_action(text: str) -> tuple[str | None, str]:
  """`("search" | "answer" | None, content)` as Search-R1 reads a response: the first complete `<search>` or
  `<answer>` pair of the kept turn decides the action (`postprocess_predictions`; case-sensitive tags). An
  answer's content is what Search-R1 scores: the last `<answer>` pair of the turn (verl qa_em.py
  `extract_solution`), which is the first one of the response unless a later `</search>` extended the turn."""
  turn = search_r1_turn(text)
  found = _ACTION.search(turn)
  if found is None:
    return None, ""
  if found.group(1) == "answer":
    return "answer", _ANSWER.findall(turn)[-1].strip()
  return "search", found.group(2).strip()


def split_title(contents: str) -> tuple[str, str]:
  """wiki-18 passages are `title\\ntext`, the title sometimes in double quotes."""
  title, _, text = contents.partition("\n")
  return title.strip().strip('"'), text.strip()


def format_passages(documents: Sequence[dict[str, Any]]) -> str:
  lines = []
  for i, document in enumerate(documents, start=1):
    title, text = split_title(str(document.get("contents", "")))
    lines.append(f"Doc {i}(Title: {title}) {text}")
  return "<information>" + "\n".join(lines) + "</information>"


def load_questions(path: str) -> dict[str, dict[str, Any]]:
  """Rows of a QA jsonl file by id, in file order; a repeated id keeps its first row."""
  rows: dict[str, dict[str, Any]] = {}
  with open(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      row = json.loads(line)
      missing = {"id", "question", "golden_answers"} - set(row)
      if missing:
        raise ValueError(f"{path}:{line_number}: missing fields {sorted(missing)}")
      rows.setdefault(str(row["id"]), row)
  return rows


@functools.lru_cache(maxsize=8)
def _shared_questions(path: str) -> dict[str, dict[str, Any]]:
  """One parsed copy of a QA file per process, shared (read-only) by its envs."""
  return load_questions(path)


def list_questions(path: str) -> list[str]:
  """Task ids of a QA file, in file order (a fixed evaluation list)."""
  return list(load_questions(path))


def dataset_name(path: str) -> str:
  """`nq_test.jsonl` -> `nq`: the task type reported per dataset."""
  return os.path.basename(path).split(".")[0].split("_")[0]


class RetrieverClient:
  """HTTP client for a Search-R1 style `/retrieve` endpoint, built lazily (clients don't pickle)."""

  def __init__(self, url: str, topk: int = 3, timeout_s: float = 30.0, attempts: int = 3):
    self.url = url
    self.topk = topk
    self.timeout_s = timeout_s
    self.attempts = attempts
    self._client = None

  def retrieve(self, queries: Sequence[str]) -> list[list[dict[str, Any]]]:
    import httpx

    if self._client is None:
      self._client = httpx.Client(timeout=self.timeout_s)
    payload = {"queries": list(queries), "topk": self.topk, "return_scores": True}
    for attempt in range(self.attempts):
      last_try = attempt + 1 == self.attempts
      try:
        response = self._client.post(self.url, json=payload)
      except httpx.TransportError as error:
        if last_try:
          raise RuntimeError(f"retriever at {self.url} unreachable: {error}") from error
      else:
        if response.status_code == 200:
          return [[hit["document"] for hit in hits] for hits in response.json()["result"]]
        if response.status_code < 500 or last_try:  # a rejected request will not improve
          raise RuntimeError(f"retriever at {self.url} answered {response.status_code}: {response.text[:300]}")
      time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")

  def close(self) -> None:
    if self._client is not None:
      self._client.close()
      self._client = None


class SearchQAEnv(Env):
  def __init__(
    self,
    questions_path: str,
    retriever_url: str = "http://127.0.0.1:8000/retrieve",
    topk: int = 3,
    max_turns: int = 4,
    task_type: str | None = None,
    timeout_s: float = 30.0,
  ):
    self.questions_path = questions_path
    self.max_steps = max_turns
    self.task_type = task_type or dataset_name(questions_path)
    self.retriever = RetrieverClient(retriever_url, topk=topk, timeout_s=timeout_s)
    self._rows: dict[str, dict[str, Any]] | None = None
    self._row: dict[str, Any] | None = None
    self._turns = 0
    self._done = True

  def _question_row(self, task_id: str) -> dict[str, Any]:
    if self._rows is None:
      self._rows = _shared_questions(self.questions_path)
    if task_id not in self._rows:
      raise KeyError(f"no question with id {task_id!r} in {self.questions_path}")
    return self._rows[task_id]

  def reset(self, task_id: str) -> ResetResult:
    self._row = self._question_row(task_id)
    self._turns = 0
    self._done = False
    question = str(self._row["question"]).strip()
    return ResetResult(
      observation=f"Question: {question}",
      task=question,
      task_type=self.task_type,
      admissible_actions=[],
      info={"task_id": task_id},
    )

  def step(self, action: str) -> StepResult:
    if self._done or self._row is None:
      raise RuntimeError("step() called on a finished Search-QA episode; call reset() first")
    self._turns += 1
    kind, content = search_r1_action(action)
    answer = content if kind == "answer" else None
    query = " ".join(content.split()) if kind == "search" else None
    won = False
    if answer is not None:
      won = exact_match(answer, self._row["golden_answers"])
      observation = ""
    elif query:
      observation = format_passages(self.retriever.retrieve([query])[0])
    else:
      observation = INVALID_ACTION_FEEDBACK
    truncated = answer is None and self._turns >= self.max_steps
    self._done = answer is not None or truncated
    return StepResult(
      observation=observation,
      reward=1.0 if won else 0.0,
      done=self._done,
      won=won,
      admissible_actions=[],
      info={"truncated": truncated, "answer": answer, "query": query},
    )

  def hindsight(self) -> Hindsight:
    if self._row is None:
      return Hindsight()
    return Hindsight(gold_answers=tuple(as_answer_list(self._row["golden_answers"])))

  def close(self) -> None:
    self.retriever.close()
