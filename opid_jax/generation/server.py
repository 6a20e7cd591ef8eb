"""An OpenAI-compatible HTTP server over the JAX sampler (used by `python -m opid_jax.serve`).

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /v1/stats (batching counters).

A prompt longer than `max_prompt_tokens` goes through `batching.prompt_length`: by default it is cut from the left
(what the server has always done; `usage.prompt_tokens` counts the tokens the model read); with
`truncation_side="error"` it is answered with HTTP 400 and an OpenAI-style `context_length_exceeded` error.
"""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opid_jax.batching import prompt_length

MAX_TOKENS_LIMIT = 4096


class BadRequest(Exception):
  pass


def parse_chat_request(body: dict, default_max_tokens: int):
  """-> (messages, SamplingParams, n); BadRequest names the offending field."""
  from opid_jax.generation.sampler import SamplingParams

  messages = body.get("messages")
  if (
    not isinstance(messages, list)
    or not messages
    or not all(
      isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    )
  ):
    raise BadRequest("'messages' must be a non-empty list of {role, content} objects with string content")
  if body.get("stream"):
    raise BadRequest("'stream' is not supported")
  try:
    given = [body.get(k) for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    max_tokens = int(given[0]) if given else default_max_tokens
    temperature = float(body.get("temperature", 1.0))
    top_p = float(body.get("top_p", 1.0))
    top_k = int(body.get("top_k", 0) or 0)
    n = int(body.get("n", 1) or 1)
  except (TypeError, ValueError):
    raise BadRequest("max_tokens, temperature, top_p, top_k and n must be numbers") from None
  if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
    raise BadRequest(f"'max_tokens' must be in [1, {MAX_TOKENS_LIMIT}]")
  if not (0.0 <= temperature <= 2.0 and 0.0 < top_p <= 1.0 and top_k >= 0 and 1 <= n <= 16):
    raise BadRequest("temperature must be in [0, 2], top_p in (0, 1], top_k >= 0, n in [1, 16]")
  # Round max_tokens up to a power of two so requests share compiled decode loops; cut on return.
  bucket = 1 << (max_tokens - 1).bit_length()
  return messages, SamplingParams(temperature, top_p, top_k, bucket), n, max_tokens


def make_handler(state):
  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: one line per request is noise under load
      pass

    def _send(self, status: int, payload: dict):
      data = json.dumps(payload).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _error(
      self,
      status: int,
      message: str,
      kind: str = "invalid_request_error",
      param: str | None = None,
      code: str | None = None,
    ):
      self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

    def do_GET(self):
      if self.path.rstrip("/") == "/v1/models":
        self._send(
          200,
          {
            "object": "list",
            "data": [{"id": state["model_id"], "object": "model", "created": state["created"], "owned_by": "opid_jax"}],
          },
        )
      elif self.path.rstrip("/") == "/v1/stats":
        b = state["batcher"]
        self._send(200, {"batches": b.batches, "requests": b.requests})
      else:
        self._error(404, f"no route for GET {self.path}", "not_found_error")

    def do_POST(self):
      if self.path.rstrip("/") != "/v1/chat/completions":
        self._error(404, f"no route for POST {self.path}", "not_found_error")
        return
      try:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        if not isinstance(body, dict):
          raise BadRequest("the request body must be a JSON object")
        messages, sampling, n, max_tokens = parse_chat_request(body, state["default_max_tokens"])
      except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as e:
        self._error(400, str(e) if isinstance(e, BadRequest) else "the request body is not valid JSON")
        return
      try:
        completions = state["complete"](messages, sampling, n, max_tokens)
      except prompt_length.PromptTooLong as e:
        self._error(400, str(e), param="messages", code="context_length_exceeded")
        return
      except Exception as e:
        self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
        return
      choices = [
        {
          "index": i,
          "message": {"role": "assistant", "content": c.text},
          "finish_reason": c.finish_reason,
          "logprobs": None,
        }
        for i, c in enumerate(completions)
      ]
      prompt_tokens = completions[0].prompt_tokens
      completion_tokens = sum(c.completion_tokens for c in completions)
      self._send(
        200,
        {
          "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
          "object": "chat.completion",
          "created": int(time.time()),
          "model": body.get("model") or state["model_id"],
          "choices": choices,
          "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
          },
        },
      )

  return Handler


def build_server(
  model: str,
  host: str,
  port: int,
  *,
  max_batch: int = 32,
  max_prompt_tokens: int = 4096,
  default_max_tokens: int = 512,
  dtype: str = "float32",
  attention: str = "xla",
  truncation_side: str = "left",
):
  from opid_jax.batching import padding
  from opid_jax.generation.batcher import RequestBatcher
  from opid_jax.generation.sampler import Sampler
  from opid_jax.model import loading, tokenizer as tok

  loaded = loading.load(model, dtype=dtype, attention=attention)
  sampler = Sampler(
    loaded.model,
    loaded.stop_ids,
    loaded.pad_id,
    prompt_buckets=padding.buckets_up_to(max_prompt_tokens),
    truncate_left=True,
  )
  batcher = RequestBatcher(sampler, loaded.tokenizer, max_batch=max_batch)

  def complete(messages, sampling, n, max_tokens):
    prompt = prompt_length.fit(
      tok.encode(loaded.tokenizer, tok.chat_prompt(loaded.tokenizer, messages)),
      max_prompt_tokens,
      truncation_side,
      prompt_length.SERVER,
    )
    return [f.result() for f in [batcher.submit(prompt, sampling, max_tokens) for _ in range(n)]]

  state = {
    "model_id": model,
    "created": int(time.time()),
    "batcher": batcher,
    "complete": complete,
    "default_max_tokens": default_max_tokens,
  }
  server = ThreadingHTTPServer((host, port), make_handler(state))
  server.daemon_threads = True
  return server, batcher
