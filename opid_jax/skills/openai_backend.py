"""Analyzer over any OpenAI-compatible chat-completions endpoint (plain HTTP with httpx).

The API key is read from the environment variable *named* in the config at each request; it is never
stored on the objects here and is scrubbed from every message this module writes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

from opid_jax.agent.trajectory import Trajectory
from opid_jax.skills.analyzer import AnalysisSpec, Message, analyze_batch
from opid_jax.skills.backend_base import AnalyzerBackend, Future
from opid_jax.skills.records import AnalysisResult, AnalyzerStats

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# The request-body field that carries the reply's token cap. OpenAI-style servers (vLLM, our own
# `opid_jax.generation.server`) read `max_tokens`; OpenAI deprecated it for `max_completion_tokens`, the only
# one its reasoning models accept.
TOKEN_CAP_FIELDS = ("max_tokens", "max_completion_tokens")
_SNIPPET_CHARS = 300


class AnalyzerAPIError(RuntimeError):
  """The endpoint gave no usable reply (after the allowed retries, or a non-retryable status)."""


class _Retryable(Exception):
  def __init__(self, problem: str, wait_hint_s: float | None = None):
    super().__init__(problem)
    self.problem = problem
    self.wait_hint_s = wait_hint_s


def _retry_after_seconds(response: httpx.Response) -> float | None:
  try:
    return float(response.headers.get("retry-after", ""))
  except ValueError:
    return None


def _reply_content(response: httpx.Response) -> str:
  try:
    content = response.json()["choices"][0]["message"].get("content")
  except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
    raise _Retryable("malformed response body") from err
  return content if isinstance(content, str) else ""


class ChatCompletionsClient:
  """One chat-completions request at a time per caller; thread-safe (share one across threads)."""

  def __init__(
    self,
    *,
    base_url: str,
    model: str,
    api_key_env: str | None = None,
    timeout_s: float = 120.0,
    max_api_retries: int = 5,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 30.0,
    json_mode: bool = False,
    temperature: float | None = None,
    max_tokens: int | None = None,
    token_cap_field: str = "max_tokens",
    max_connections: int = 16,
  ):
    if token_cap_field not in TOKEN_CAP_FIELDS:
      raise ValueError(f"token_cap_field must be one of {TOKEN_CAP_FIELDS}, not {token_cap_field!r}")
    if api_key_env is not None and not os.environ.get(api_key_env):
      raise ValueError(f"environment variable {api_key_env} (the analyzer API key) is not set")
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model = model
    self.api_key_env = api_key_env
    self.timeout_s = timeout_s
    self.max_api_retries = max_api_retries
    self.backoff_base_s = backoff_base_s
    self.backoff_max_s = backoff_max_s
    self.json_mode = json_mode
    self.temperature = temperature
    self.max_tokens = max_tokens
    self.token_cap_field = token_cap_field
    self._http = httpx.Client(
      timeout=httpx.Timeout(timeout_s),
      limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )

  def __repr__(self) -> str:
    return f"ChatCompletionsClient(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

  def close(self) -> None:
    self._http.close()

  def _api_key(self) -> str:
    return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

  def redact(self, text: str) -> str:
    key = self._api_key()
    return text.replace(key, "[redacted]") if key else text

  def _body(self, messages: list[Message]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": self.model, "messages": messages}
    if self.temperature is not None:
      body["temperature"] = self.temperature
    if self.max_tokens is not None:
      body[self.token_cap_field] = self.max_tokens
    if self.json_mode:
      body["response_format"] = {"type": "json_object"}
    return body

  def _post_once(self, body: dict[str, Any]) -> str:
    headers = {"Authorization": f"Bearer {self._api_key()}"} if self.api_key_env else {}
    try:
      response = self._http.post(self.url, json=body, headers=headers)
    except httpx.TimeoutException as err:
      raise _Retryable(f"no reply within {self.timeout_s:g} s") from err
    except httpx.TransportError as err:
      raise _Retryable(f"connection failed ({type(err).__name__})") from err
    if response.status_code == 200:
      return _reply_content(response)
    # Scrubbed before it enters any exception: a server may echo the request's headers.
    problem = self.redact(f"HTTP {response.status_code}: {response.text[:_SNIPPET_CHARS]!r}")
    if response.status_code in RETRYABLE_STATUS:
      raise _Retryable(problem, _retry_after_seconds(response))
    raise AnalyzerAPIError(problem)

  def _backoff_s(self, retry: int, wait_hint_s: float | None) -> float:
    delay = self.backoff_base_s * 2 ** (retry - 1) * (1.0 + 0.25 * random.random())
    if wait_hint_s is not None:
      delay = max(delay, wait_hint_s)
    return min(delay, self.backoff_max_s)

  def complete(self, messages: list[Message], stats: AnalyzerStats) -> str:
    """The reply text; retries 429/5xx/timeouts with exponential backoff, then AnalyzerAPIError."""
    body = self._body(messages)
    attempts = self.max_api_retries + 1
    for attempt in range(1, attempts + 1):
      stats.add("calls")
      try:
        return self._post_once(body)
      except _Retryable as err:
        problem = err.problem
        if attempt == attempts:
          raise AnalyzerAPIError(f"{problem} (gave up after {attempts} attempts)") from None
        delay = self._backoff_s(attempt, err.wait_hint_s)
        logger.warning(
          "analyzer request failed (%s), attempt %d of %d; retrying in %.2f s", problem, attempt, attempts, delay
        )
        stats.add("retries")
        time.sleep(delay)
    raise AssertionError("unreachable")


class OpenAIBackend(AnalyzerBackend):
  """LLM analyzer behind an OpenAI-compatible endpoint; one thread per trajectory, `concurrency` at once.

  Every request carries the reply cap `spec.max_completion_tokens` (None: none sent) in the body field
  `token_cap_field`: `max_tokens` by default, the most widely read; `max_completion_tokens` for servers that
  want that one (OpenAI's reasoning models).
  """

  name = "openai"

  def __init__(
    self,
    spec: AnalysisSpec,
    *,
    base_url: str,
    model: str,
    api_key_env: str | None = None,
    concurrency: int = 16,
    timeout_s: float = 120.0,
    max_api_retries: int = 5,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 30.0,
    json_mode: bool = False,
    temperature: float | None = None,
    token_cap_field: str = "max_tokens",
  ):
    super().__init__(spec)
    self.client = ChatCompletionsClient(
      base_url=base_url,
      model=model,
      api_key_env=api_key_env,
      timeout_s=timeout_s,
      max_api_retries=max_api_retries,
      backoff_base_s=backoff_base_s,
      backoff_max_s=backoff_max_s,
      json_mode=json_mode,
      temperature=temperature,
      max_tokens=spec.max_completion_tokens,
      token_cap_field=token_cap_field,
      max_connections=concurrency,
    )
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="opid-analyzer")

  def __repr__(self) -> str:
    return f"OpenAIBackend(client={self.client!r}, spec={self.spec!r})"

  def _reply_or_error(self, messages: list[Message], stats: AnalyzerStats) -> str | BaseException:
    try:
      return self.client.complete(messages, stats)
    except AnalyzerAPIError as err:
      logger.warning("analyzer request abandoned: %s", err)
      return err
    except Exception as err:  # a bug must cost one skill, not the training run
      problem = self.client.redact(f"{type(err).__name__}: {err}")
      logger.error("analyzer request crashed: %s", problem)
      return AnalyzerAPIError(problem)

  def _analyze_one(self, trajectory: Trajectory, stats: AnalyzerStats) -> AnalysisResult:
    def chat_many(conversations):
      return [self._reply_or_error(messages, stats) for messages in conversations]

    return analyze_batch([trajectory], chat_many, self.spec, stats)[0]

  def _start(self, trajectories: Sequence[Trajectory], stats: AnalyzerStats) -> list[Future]:
    return [self._pool.submit(self._analyze_one, trajectory, stats) for trajectory in trajectories]

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
    self.client.close()
