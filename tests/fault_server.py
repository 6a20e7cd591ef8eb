"""A loopback OpenAI-style chat-completions server that misbehaves on request (test helper).

Each request takes the next action from the script (then `default`):
  "ok"          200 with `reply` as the message content
  "500"         HTTP 500
  "429"         HTTP 429 with Retry-After: 0
  "slow"        sleeps `delay_s` (past the client's timeout) before answering "ok"
  "garbage"     200 whose content is prose without any JSON
  "garbage_body" 200 whose body is not JSON at all
  "echo_auth"   HTTP 500 whose body repeats the Authorization header it received
  "400"         HTTP 400 (not retryable)
Every received request is recorded (path, headers, parsed body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GARBAGE_CONTENT = "I looked at the episode carefully and I think the agent did fine overall."


def chat_completion_body(content: str, model: str = "fault-model") -> dict:
  return {
    "id": "chatcmpl-test",
    "object": "chat.completion",
    "created": int(time.time()),
    "model": model,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
  }


class FaultServer:
  def __init__(self, script=(), default: str = "ok", reply: str = "{}", delay_s: float = 1.0):
    self.reply = reply
    self.default = default
    self.delay_s = delay_s
    self.requests: list[dict] = []
    self._script = deque(script)
    self._lock = threading.Lock()
    self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def base_url(self) -> str:
    host, port = self._server.server_address[:2]
    return f"http://{host}:{port}/v1"

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc_info):
    self._server.shutdown()
    self._server.server_close()

  def _next_action(self) -> str:
    with self._lock:
      return self._script.popleft() if self._script else self.default

  def _record(self, handler, body: dict | None) -> None:
    with self._lock:
      self.requests.append({"path": handler.path, "headers": dict(handler.headers), "body": body})

  def _handler_class(self):
    server = self

    class Handler(BaseHTTPRequestHandler):
      def log_message(self, *args):  # keep test output quiet
        pass

      def _send(self, status: int, payload: bytes, headers=()):
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          for name, value in headers:
            self.send_header(name, value)
          self.end_headers()
          self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client gave up (timeout tests)

      def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
          body = json.loads(raw)
        except ValueError:
          body = None
        server._record(self, body)
        action = server._next_action()
        ok = json.dumps(chat_completion_body(server.reply)).encode()
        if action == "ok":
          self._send(200, ok)
        elif action == "slow":
          time.sleep(server.delay_s)
          self._send(200, ok)
        elif action == "500":
          self._send(500, b'{"error": {"message": "internal error"}}')
        elif action == "429":
          self._send(429, b'{"error": {"message": "rate limited"}}', [("Retry-After", "0")])
        elif action == "400":
          self._send(400, b'{"error": {"message": "bad request"}}')
        elif action == "garbage":
          self._send(200, json.dumps(chat_completion_body(GARBAGE_CONTENT)).encode())
        elif action == "garbage_body":
          self._send(200, b"<html>not json</html>")
        elif action == "echo_auth":
          echoed = json.dumps({"error": f"bad key {self.headers.get('Authorization')}"})
          self._send(500, echoed.encode())
        else:
          raise ValueError(f"unknown fault action {action!r}")

    return Handler
