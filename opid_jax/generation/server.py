"""An OpenAI-compatible HTTP server over a generation backend (used by `python -m opid_jax.serve`).

Endpoints: POST /v1/chat/completions and POST /v1/completions (whole answers, or with "stream": true server-sent
events in chunked transfer encoding, ending with `data: [DONE]`), GET /v1/models (and /v1/models/{id}),
GET /v1/stats (the backend's counters). Requests are read by generation/openai_requests.py; the prompt ids go to a
backend (generation/backend.py; by default the static RequestBatcher) and the ids it returns are decoded here.

Answers follow OpenAI's, errors included (`{"error": {message, type, param, code}}`):
- a request naming a model other than the served name: 404 `model_not_found` (naming none is fine);
- a prompt over `max_prompt_tokens`: 400 `context_length_exceeded` (param `messages` or `prompt`), or with
  `truncation_side="left"` it is cut on the left (`usage.prompt_tokens` then counts the tokens the model read);
- a body over `max_body_bytes`: 413, decided from the Content-Length header before any of the body is read (the
  connection is then closed); no Content-Length: 411; a malformed one: 400.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opid_jax.batching import prompt_length
from opid_jax.errors import UserError
from opid_jax.generation import choices, openai_responses as responses
from opid_jax.generation.backend import GenerationBackend
from opid_jax.generation.openai_requests import (
  ApiError,
  check_model,
  parse_chat,
  parse_completion,
  prompt_ids,
)

DEFAULT_MAX_BODY_BYTES = 8 << 20
IDLE_TIMEOUT_S = 120  # a connection silent for this long while we read from it is dropped
POST_ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> is chat


@dataclasses.dataclass
class ServerState:
  backend: GenerationBackend
  tokenizer: object
  model_name: str
  default_max_tokens: int
  max_prompt_tokens: int
  truncation_side: str
  max_body_bytes: int
  created: int = dataclasses.field(default_factory=lambda: int(time.time()))


def served_name(model: str) -> str:
  """A local folder or file is named by its basename; anything else is a hub id, named as given."""
  return os.path.basename(os.path.normpath(os.path.abspath(model))) if os.path.exists(model) else model


def _server_error(e: Exception) -> ApiError:
  if isinstance(e, UserError):  # the request asked for more than this server was started with
    return ApiError(400, str(e))
  return ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error")


class Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  timeout = IDLE_TIMEOUT_S
  state: ServerState  # set by make_handler

  def log_message(self, *args):  # quiet: one line per request is noise under load
    pass

  # ------------------------------------------------------------------ plain answers

  def _send_json(self, status: int, payload: dict, close: bool = False):
    data = json.dumps(payload).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    if close:  # the request's body was not read: the connection cannot carry another request
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(data)

  def _fail(self, error: ApiError, close: bool = False):
    self._send_json(error.status, error.payload(), close)

  def _route(self) -> str:
    return urllib.parse.urlsplit(self.path).path.rstrip("/")

  def _model(self) -> dict:
    return {"id": self.state.model_name, "object": "model", "created": self.state.created, "owned_by": "opid_jax"}

  def do_GET(self):
    route = self._route()
    if route == "/v1/models":
      self._send_json(200, {"object": "list", "data": [self._model()]})
    elif route.startswith("/v1/models/"):
      try:
        check_model({"model": urllib.parse.unquote(route[len("/v1/models/") :])}, self.state.model_name)
        self._send_json(200, self._model())
      except ApiError as e:
        self._fail(e)
    elif route == "/v1/stats":
      self._send_json(200, self.state.backend.stats())
    else:
      self._fail(ApiError(404, f"no route for GET {self.path}", kind="not_found_error"))

  # ------------------------------------------------------------------ reading a request

  def _declared_length(self) -> int:
    """The body's length from its header, checked against the limit; nothing of the body is read."""
    if self.headers.get("Transfer-Encoding"):
      raise ApiError(411, "send the request body with a Content-Length header (chunked bodies are not accepted)")
    values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
    if not values:
      raise ApiError(411, "a Content-Length header is required")
    if len(values) > 1 or not re.fullmatch(r"[0-9]{1,19}", next(iter(values))):
      raise ApiError(400, "the Content-Length header is not a valid length")
    length, limit = int(next(iter(values))), self.state.max_body_bytes
    if length > limit:
      raise ApiError(
        413,
        f"a request body of {length} bytes exceeds this server's --max_body_bytes={limit}",
        code="request_too_large",
      )
    return length

  def handle_expect_100(self):
    # A client sending "Expect: 100-continue" waits for a go-ahead before its body: refuse here instead of inviting it.
    if self.command == "POST":
      try:
        self._declared_length()
      except ApiError as e:
        self._fail(e, close=True)
        return False
    return super().handle_expect_100()

  def _read_json(self) -> dict:
    raw = self.rfile.read(self._declared_length())
    try:
      body = json.loads(raw)
    except (ValueError, RecursionError):
      raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
      raise ApiError(400, "the request body must be a JSON object")
    return body

  def do_POST(self):
    chat = POST_ROUTES.get(self._route())
    if chat is None:
      self._fail(ApiError(404, f"no route for POST {self.path}", kind="not_found_error"), close=True)
      return
    s, body = self.state, None
    try:
      body = self._read_json()
      check_model(body, s.model_name)
      request = parse_chat(body, s.default_max_tokens) if chat else parse_completion(body, len(s.tokenizer))
      prompt = prompt_ids(request, s.tokenizer, s.max_prompt_tokens, s.truncation_side)
    except ApiError as e:
      self._fail(e, close=body is None)  # an unread or unreadable body ends the connection
      return
    if request.stream:
      self._stream(request, prompt)
      return
    try:
      done = choices.complete(s.backend, prompt, request.sampling, request.n)
    except Exception as e:
      self._fail(_server_error(e))
      return
    texts = [choices.decode(s.tokenizer, c) for c in done]
    reasons = [c.finish_reason for c in done]
    used = sum(c.completion_tokens for c in done)
    self._send_json(200, responses.completion(chat, s.model_name, texts, reasons, done[0].prompt_tokens, used))

  # ------------------------------------------------------------------ streaming

  def _event(self, payload: dict | str):
    data = b"data: " + (payload if isinstance(payload, str) else json.dumps(payload)).encode() + b"\n\n"
    self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

  def _stream(self, request, prompt: list[int]):
    s = self.state
    try:
      stream = choices.ChoiceStream(s.backend, s.tokenizer, prompt, request.sampling, request.n)
    except Exception as e:
      self._fail(_server_error(e))
      return
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Transfer-Encoding", "chunked")
    self.end_headers()
    try:
      self._write_events(request, stream, responses.ChunkMaker(request.chat, s.model_name, request.include_usage))
      self.wfile.write(b"0\r\n\r\n")  # the chunked body's end
    except OSError:  # the client went away (or stopped reading): give up its unfinished choices
      stream.cancel()
      self.close_connection = True

  def _write_events(self, request, stream: choices.ChoiceStream, chunks: responses.ChunkMaker):
    if request.chat:
      for i in range(request.n):
        self._event(chunks.role(i))
    events, prompt_tokens, completion_tokens = iter(stream), 0, 0
    while True:
      try:
        i, text, done = next(events)
      except StopIteration:
        break
      except Exception as e:  # headers are sent: the error goes in the stream, where the openai client raises it
        self._event(_server_error(e).payload())
        return
      if text:
        self._event(chunks.delta(i, text))
      if done is not None:
        self._event(chunks.finish(i, done.finish_reason))
        prompt_tokens, completion_tokens = done.prompt_tokens, completion_tokens + done.completion_tokens
    if request.include_usage:
      self._event(chunks.usage_chunk(prompt_tokens, completion_tokens))
    self._event("[DONE]")


class _Server(ThreadingHTTPServer):
  # Many clients connect at once while the engine thread holds the GIL between device calls: a longer accept queue
  # than socketserver's 5 keeps the kernel from resetting their connections.
  request_queue_size = 256


def make_handler(state: ServerState) -> type[Handler]:
  return type("BoundHandler", (Handler,), {"state": state})


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
  truncation_side: str = "error",
  served_model_name: str | None = None,
  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
  backend: GenerationBackend | None = None,
  engine: str = "static",
  slots: int = 32,
  decode_steps: int = 8,
  max_new_tokens: int = 1024,
) -> tuple[ThreadingHTTPServer, GenerationBackend]:
  """-> (server, backend); run `server.serve_forever()`, then `server.server_close()` and `backend.close()`.

  `backend`: a ready backend over `model` (only the tokenizer is loaded here then); None builds, for
  engine="static", a RequestBatcher over the JAX sampler (`max_batch` requests per call), for "continuous" an
  EngineBackend (`slots` sequences decoded side by side, `decode_steps` tokens per device call, requests of at
  most `max_new_tokens`); `dtype` and `attention` apply to either."""
  from opid_jax.model import tokenizer as tok

  if truncation_side not in prompt_length.SIDES:
    raise ValueError(f"unknown truncation side {truncation_side!r}; choose one of {prompt_length.SIDES}")
  built = backend is None
  if built:
    if engine == "continuous":
      backend, tokenizer = _engine_backend(
        model, slots, decode_steps, max_new_tokens, max_prompt_tokens, dtype, attention
      )
    else:
      backend, tokenizer = _batcher(model, max_batch, max_prompt_tokens, dtype, attention)
  else:
    tokenizer = tok.load_tokenizer(model)
  state = ServerState(
    backend,
    tokenizer,
    served_model_name or served_name(model),
    default_max_tokens,
    max_prompt_tokens,
    truncation_side,
    max_body_bytes,
  )
  try:
    server = _Server((host, port), make_handler(state))
  except OSError:
    if built:
      backend.close()
    raise
  server.daemon_threads = True
  return server, backend


def _batcher(model: str, max_batch: int, max_prompt_tokens: int, dtype: str, attention: str):
  from opid_jax.batching import padding
  from opid_jax.generation.batcher import RequestBatcher
  from opid_jax.generation.sampler import Sampler
  from opid_jax.model import loading

  loaded = loading.load(model, dtype=dtype, attention=attention)
  sampler = Sampler(
    loaded.model,
    loaded.stop_ids,
    loaded.pad_id,
    prompt_buckets=padding.buckets_up_to(max_prompt_tokens),
    truncate_left=True,
  )
  return RequestBatcher(sampler, loaded.tokenizer, max_batch=max_batch), loaded.tokenizer


def _engine_backend(model, slots, decode_steps, max_new_tokens, max_prompt_tokens, dtype, attention):
  from opid_jax.batching import padding
  from opid_jax.generation.engine import ContinuousEngine
  from opid_jax.generation.engine_backend import EngineBackend
  from opid_jax.model import loading

  loaded = loading.load(model, dtype=dtype, attention=attention)
  engine = ContinuousEngine(
    loaded.model,
    loaded.stop_ids,
    loaded.pad_id,
    slots=slots,
    max_new_tokens=max_new_tokens,
    decode_steps=decode_steps,
    prompt_buckets=padding.buckets_up_to(max_prompt_tokens),
    truncate_left=True,
  )
  return EngineBackend(engine), loaded.tokenizer
