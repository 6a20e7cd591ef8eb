"""`opid_jax.serve` as the official `openai` client sees it: answers, streams, error objects and the HTTP limits."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import httpx
import openai
import pytest

from opid_jax.generation.batcher import Completion
from opid_jax.generation.server import build_server
from opid_jax.model import tokenizer as tok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVED = "opid-tiny"
MESSAGES = [{"role": "user", "content": "go to cabinet 1"}]
PROMPT = "You are in the middle of a room. Your task is to:"
LONG = "go to cabinet 1 " * 40  # well over the 64-token limit


def serve_in_thread(model_dir, **kwargs):
  httpd, backend = build_server(model_dir, "127.0.0.1", 0, **kwargs)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  return httpd, backend


@pytest.fixture(scope="module")
def server(model_dir):
  httpd, backend = serve_in_thread(
    model_dir, served_model_name=SERVED, max_batch=4, max_prompt_tokens=64, default_max_tokens=8
  )
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  backend.close()


@pytest.fixture(scope="module")
def client(server):
  with openai.OpenAI(
    base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused", max_retries=0, timeout=300
  ) as c:
    yield c


def test_models_list_shows_the_served_name(client):
  assert [m.id for m in client.models.list().data] == [SERVED]
  assert client.models.retrieve(SERVED).id == SERVED
  with pytest.raises(openai.NotFoundError):
    client.models.retrieve("gpt-4o")


def test_a_streamed_chat_completion_equals_the_whole_one(client):
  whole = client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=8, temperature=0)
  assert whole.object == "chat.completion" and whole.model == SERVED
  chunks = list(
    client.chat.completions.create(
      model=SERVED,
      messages=MESSAGES,
      max_tokens=8,
      temperature=0,
      stream=True,
      stream_options={"include_usage": True},
    )
  )
  assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
  first, *middle, last_choice, usage = chunks
  assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
  text = "".join(c.choices[0].delta.content or "" for c in middle)
  assert text == whole.choices[0].message.content
  assert last_choice.choices[0].finish_reason == whole.choices[0].finish_reason
  assert last_choice.choices[0].delta.content is None and all(c.choices[0].finish_reason is None for c in middle)
  assert usage.choices == [] and usage.usage == whole.usage
  assert all(c.usage is None for c in chunks[:-1])


def test_a_streamed_text_completion_equals_the_whole_one(client, model_dir):
  whole = client.completions.create(model=SERVED, prompt=PROMPT, temperature=0)  # max_tokens: OpenAI's default 16
  choice = whole.choices[0]
  assert whole.object == "text_completion" and choice.logprobs is None
  assert whole.usage.completion_tokens == 16 or choice.finish_reason == "stop"
  chunks = list(client.completions.create(model=SERVED, prompt=PROMPT, temperature=0, stream=True))
  assert "".join(c.choices[0].text for c in chunks) == choice.text
  assert chunks[-1].choices[0].finish_reason == choice.finish_reason and chunks[-1].choices[0].text == ""
  # The prompt is tokenized raw (no chat template): its ids give the same answer.
  ids = tok.encode(tok.load_tokenizer(model_dir), PROMPT)
  by_ids = client.completions.create(model=SERVED, prompt=ids, temperature=0)
  assert by_ids.choices[0].text == choice.text and by_ids.usage == whole.usage


def test_text_parts_are_joined_and_other_parts_refused(client):
  parts = [{"type": "text", "text": "go to"}, {"type": "text", "text": "cabinet 1"}]
  joined = [{"role": "user", "content": "go to\ncabinet 1"}]
  a = client.chat.completions.create(
    model=SERVED, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
  )
  b = client.chat.completions.create(model=SERVED, messages=joined, max_tokens=8, temperature=0)
  assert a.choices[0].message.content == b.choices[0].message.content and a.usage == b.usage
  image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
  with pytest.raises(openai.BadRequestError) as err:
    client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": [parts[0], image]}])
  assert "image_url" in err.value.message and err.value.param == "messages"


def test_error_objects_surface_as_the_clients_exceptions(client):
  with pytest.raises(openai.BadRequestError) as err:
    client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": LONG}], max_tokens=1)
  assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
  with pytest.raises(openai.BadRequestError) as err:
    client.completions.create(model=SERVED, prompt=LONG, max_tokens=1, stream=True)
  assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
  with pytest.raises(openai.NotFoundError) as err:
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
  assert err.value.code == "model_not_found" and SERVED in err.value.message
  with pytest.raises(openai.BadRequestError) as err:
    client.completions.create(model=SERVED, prompt=PROMPT, echo=True)
  assert err.value.param == "echo"


def raw_exchange(port: int, head: str, timeout: float = 10.0) -> tuple[bytes, float]:
  """Sends only `head` (request line and headers), then reads until the server closes: (answer, seconds)."""
  start = time.monotonic()
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
    sock.sendall(head.encode())
    answer = b""
    while chunk := sock.recv(65536):
      answer += chunk
  return answer, time.monotonic() - start


def json_of(answer: bytes) -> dict:
  return json.loads(answer.partition(b"\r\n\r\n")[2])


def test_an_oversized_body_is_refused_from_its_header_without_reading_it(server):
  port = server.server_address[1]
  head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
  # 2 GB declared, none sent: the 413 arrives at once and the server closes the connection (it would otherwise wait).
  answer, seconds = raw_exchange(port, head + "Content-Length: 2000000000\r\n\r\n")
  assert answer.startswith(b"HTTP/1.1 413 ") and seconds < 5
  error = json_of(answer)["error"]
  assert error["type"] == "invalid_request_error" and "2000000000 bytes exceeds" in error["message"]
  answer, _ = raw_exchange(port, head + "Content-Length: 2000000000\r\nExpect: 100-continue\r\n\r\n")
  assert answer.startswith(b"HTTP/1.1 413 ")  # no "100 Continue" first
  assert raw_exchange(port, head + "\r\n")[0].startswith(b"HTTP/1.1 411 ")
  assert raw_exchange(port, head + "Content-Length: -5\r\n\r\n")[0].startswith(b"HTTP/1.1 400 ")


class ScriptedBackend:
  """A backend answering every prompt with the same ids, handed over one at a time from its own thread."""

  def __init__(self, ids):
    self.ids, self.requests = ids, 0

  def submit(self, prompt_ids, sampling, max_tokens, on_tokens=None):
    future = Future()
    self.requests += 1

    def run():
      ids = self.ids[:max_tokens]
      for i in ids:
        if on_tokens:
          on_tokens([i])
      reason = "length" if len(ids) < len(self.ids) else "stop"
      future.set_result(Completion(ids, len(prompt_ids), len(ids), reason))

    threading.Thread(target=run, daemon=True).start()
    return future

  def close(self):
    pass

  def stats(self):
    return {"requests": self.requests}


def test_a_plugged_in_backend_streams_token_by_token(model_dir):
  tokenizer = tok.load_tokenizer(model_dir)
  text = "héllo 😀 wörld, ünïcode"
  ids = tok.encode(tokenizer, text)
  assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(len(ids)))  # characters split over tokens
  backend = ScriptedBackend(ids)
  httpd, _ = serve_in_thread(model_dir, backend=backend)
  try:
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    name = os.path.basename(model_dir)
    assert [m.id for m in c.models.list().data] == [name]
    chunks = list(c.chat.completions.create(model=name, messages=MESSAGES, n=2, stream=True, max_tokens=100))
    for index in (0, 1):
      deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices[0].index == index]
      assert "".join(d or "" for d in deltas) == text and not any("\ufffd" in (d or "") for d in deltas)
      assert len(deltas) > 5  # streamed in pieces, not at the end
    assert sum(ch.choices[0].finish_reason == "stop" for ch in chunks) == 2
    cut = c.completions.create(model=name, prompt="x", max_tokens=3)
    assert cut.choices[0].text == tokenizer.decode(ids[:3]) and cut.choices[0].finish_reason == "length"
    assert httpx.get(f"{url}/stats").json() == {"requests": 3}
  finally:
    httpd.shutdown()
    httpd.server_close()


def test_the_cli_cuts_on_the_left_only_with_truncate_left(model_dir):
  cmd = [sys.executable, "-m", "opid_jax.serve", f"--model={model_dir}", "--port=0", "--max_prompt_tokens=16"]
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([*cmd, "--truncate_left"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline()
    assert line.startswith(f"serving {os.path.basename(model_dir)} ("), line
    url = line.split(" on ")[-1].strip()
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 1}
    res = httpx.post(f"{url}/chat/completions", json=body, timeout=300)
    assert res.status_code == 200 and res.json()["usage"]["prompt_tokens"] == 16, res.text
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def test_the_continuous_engine_serves_the_same_answers_and_streams_as_it_decodes(client, model_dir):
  """--engine=continuous: greedy answers equal the static server's; more concurrent requests than slots all finish;
  a stream arrives in several chunks; a max_tokens over the engine's limit is a 400."""
  httpd, backend = serve_in_thread(
    model_dir,
    served_model_name=SERVED,
    max_prompt_tokens=64,
    default_max_tokens=8,
    engine="continuous",
    slots=2,
    decode_steps=2,
    max_new_tokens=16,
  )
  try:
    base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300) as engine_client:
      prompts = [f"go to cabinet {i}" for i in range(5)]

      def ask(c, content):
        messages = [{"role": "user", "content": content}]
        return c.chat.completions.create(model=SERVED, messages=messages, max_tokens=12, temperature=0)

      static = [ask(client, p).choices[0].message.content for p in prompts]
      results: list = [None] * len(prompts)
      threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, ask(engine_client, prompts[i])))
        for i in range(len(prompts))
      ]
      for t in threads:
        t.start()
      for t in threads:
        t.join(timeout=300)
      assert [r.choices[0].message.content for r in results] == static
      chunks = list(
        engine_client.completions.create(model=SERVED, prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
      )
      texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
      whole = client.completions.create(model=SERVED, prompt=PROMPT, max_tokens=12, temperature=0)
      assert "".join(texts) == whole.choices[0].text and len(texts) > 1
      with pytest.raises(openai.BadRequestError, match="exceeds this server's 16"):
        engine_client.completions.create(model=SERVED, prompt=PROMPT, max_tokens=17)
    stats = httpx.get(base_url + "/stats").json()
    assert stats["requests"] == 6 and stats["slots"] == 2 and stats["in_flight"] == 0
  finally:
    httpd.shutdown()
    httpd.server_close()
    backend.close()
