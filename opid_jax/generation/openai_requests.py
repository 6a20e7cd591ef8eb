"""OpenAI request bodies (chat and text completions) read into what the server submits, and the error answers.

Read: model, messages (string content, or a list of text parts joined by newlines) or prompt (a string, a list
with one string, or token ids), max_tokens / max_completion_tokens, temperature, top_p, top_k, n, stream,
stream_options.include_usage. Ignored: seed, user, response_format, penalties and the like. Refused with a 400
naming the field, because ignoring them would silently change the answer: echo, suffix, stop, logprobs,
top_logprobs, best_of > 1, and non-text content parts.
"""

from __future__ import annotations

import dataclasses
import numbers

from opid_jax.batching import prompt_length
from opid_jax.generation.sampler import SamplingParams
from opid_jax.model import tokenizer as tok

MAX_TOKENS_LIMIT = 4096
MAX_N = 16
CHAT_REFUSED = ("stop", "logprobs", "top_logprobs")
TEXT_REFUSED = ("echo", "suffix", "stop", "logprobs")
TEXT_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
  """An answer in OpenAI's error format: the HTTP status and the `error` object's fields."""

  def __init__(
    self,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
  ):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

  def payload(self) -> dict:
    return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
  return ApiError(400, message, param=param, code=code)


@dataclasses.dataclass(frozen=True)
class Request:
  chat: bool  # a chat completion (messages) or a text completion (prompt)
  messages: list[dict] | None
  prompt: str | list[int] | None  # text, or token ids
  sampling: SamplingParams  # max_new_tokens is the request's max_tokens
  n: int
  stream: bool
  include_usage: bool


def check_model(body: dict, served_name: str) -> None:
  """A request naming another model gets OpenAI's 404 `model_not_found`; one naming none is served."""
  model = body.get("model")
  if model is not None and model != served_name:
    raise ApiError(
      404,
      f"The model '{model}' does not exist; this server serves '{served_name}' (see GET /v1/models).",
      param="model",
      code="model_not_found",
    )


def parse_chat(body: dict, default_max_tokens: int) -> Request:
  messages = body.get("messages")
  if not isinstance(messages, list) or not messages:
    raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
  _refuse(body, CHAT_REFUSED)
  given = [body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
  return _request(body, given[0] if given else default_max_tokens, messages=[_message(m) for m in messages])


def parse_completion(body: dict, vocab_size: int) -> Request:
  _refuse(body, TEXT_REFUSED)
  if body.get("best_of") not in (None, 1):
    raise bad_request("'best_of' is not supported; use 'n'", "best_of")
  max_tokens = body.get("max_tokens")
  return _request(body, TEXT_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, prompt=_prompt(body, vocab_size))


def prompt_ids(request: Request, tokenizer, max_prompt_tokens: int, truncation_side: str) -> list[int]:
  """The ids the model reads: the chat template applied (chat) or the prompt tokenized raw, fitted to the limit."""
  param = "messages" if request.chat else "prompt"
  if request.chat:
    try:
      ids = tok.encode(tokenizer, tok.chat_prompt(tokenizer, request.messages))
    except Exception as e:  # no chat template, or a template refusing these messages (e.g. role order)
      raise bad_request(f"cannot apply the chat template: {e}", "messages") from None
  else:
    ids = tok.encode(tokenizer, request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
  if not ids:
    raise bad_request("the prompt is empty", param)
  knobs = prompt_length.Knobs("this server's --max_prompt_tokens", f"shorten the {param}")
  try:
    return prompt_length.fit(ids, max_prompt_tokens, truncation_side, knobs)
  except prompt_length.PromptTooLong as e:
    raise bad_request(str(e), param, "context_length_exceeded") from None


def _refuse(body: dict, names) -> None:
  for name in names:
    if body.get(name) not in (None, False, "", [], {}):
      raise bad_request(f"'{name}' is not supported by this server", name)


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _message(m) -> dict:
  if not isinstance(m, dict) or not isinstance(m.get("role"), str):
    raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
  content = m.get("content")
  if isinstance(content, str):
    return {"role": m["role"], "content": content}
  if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
    raise bad_request("each message's 'content' must be a string or a list of content parts", "messages")
  others = sorted({str(p.get("type")) for p in content if p.get("type") != "text"})
  if others:
    raise bad_request(f"content parts of type {', '.join(others)} are not supported; send text parts only", "messages")
  if not all(isinstance(p.get("text"), str) for p in content):
    raise bad_request("a text content part needs a string 'text'", "messages")
  return {"role": m["role"], "content": "\n".join(p["text"] for p in content)}


def _prompt(body: dict, vocab_size: int) -> str | list[int]:
  prompt = body.get("prompt")
  if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
    prompt = prompt[0]  # a batch of one
  if isinstance(prompt, str):
    return prompt
  if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
    if not all(0 <= t < vocab_size for t in prompt):
      raise bad_request(f"token ids in 'prompt' must be in [0, {vocab_size})", "prompt")
    return [int(t) for t in prompt]
  if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
    raise bad_request("one prompt per request: send the others as separate requests", "prompt")
  raise bad_request("'prompt' must be a string, a list with one string, or a list of token ids", "prompt")


def _request(body: dict, max_tokens, **prompt) -> Request:
  try:
    temperature = float(_or(body.get("temperature"), 1.0))
    top_p = float(_or(body.get("top_p"), 1.0))
    numbers_given = [max_tokens, _or(body.get("top_k"), 0), _or(body.get("n"), 1)]
    if not all(_is_int(v) or (isinstance(v, float) and v.is_integer()) for v in numbers_given):
      raise ValueError
    max_tokens, top_k, n = (int(v) for v in numbers_given)
  except (TypeError, ValueError):
    raise bad_request(
      "max_tokens, temperature, top_p, top_k and n must be numbers (max_tokens, top_k, n integers)"
    ) from None
  if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
    raise bad_request(f"'max_tokens' must be in [1, {MAX_TOKENS_LIMIT}]", "max_tokens")
  if not (0.0 <= temperature <= 2.0 and 0.0 < top_p <= 1.0 and top_k >= 0 and 1 <= n <= MAX_N):
    raise bad_request(f"temperature must be in [0, 2], top_p in (0, 1], top_k >= 0, n in [1, {MAX_N}]")
  stream = body.get("stream")
  options = body.get("stream_options")
  if not isinstance(stream, (bool, type(None))) or not isinstance(options, (dict, type(None))):
    raise bad_request("'stream' must be a boolean and 'stream_options' an object", "stream")
  return Request(
    chat="messages" in prompt,
    messages=prompt.get("messages"),
    prompt=prompt.get("prompt"),
    sampling=SamplingParams(temperature, top_p, top_k, max_tokens),
    n=n,
    stream=bool(stream),
    include_usage=bool(stream and options and options.get("include_usage")),
  )


def _or(value, default):
  return default if value is None else value
