"""A BM25 retrieval server speaking the Search-R1 `/retrieve` protocol.

  python -m opid_jax.envs.retrieval_server --corpus=FILE.jsonl --port=8000 [--host=127.0.0.1]

POST /retrieve  {"queries": ["..."], "topk": 3, "return_scores": true}
  -> {"result": [[{"document": {"id": ..., "contents": ...}, "score": 12.3}, ...], ...]}
     one list per query, in query order; without `return_scores` each hit is the bare document.
GET /health     -> {"status": "ok", "documents": N}
Malformed requests get a 4xx answer `{"error": "<what is wrong>"}`. The corpus is a jsonl file of
`{"id", "contents"}` rows (wiki-18 style: `title\\ntext`). It listens on loopback unless told otherwise.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
from typing import Any, Sequence

MAX_BODY_BYTES = 1 << 20
MAX_DISCARD_BYTES = 64 << 20
MAX_QUERIES = 1024
MAX_TOPK = 100
DEFAULT_TOPK = 3


class RequestError(ValueError):
  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def load_corpus(path: str) -> list[dict[str, Any]]:
  documents = []
  with open(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      row = json.loads(line)
      if "contents" not in row:
        raise ValueError(f"{path}:{line_number}: a corpus row needs a 'contents' field")
      documents.append({"id": str(row.get("id", line_number - 1)), "contents": row["contents"]})
  if not documents:
    raise ValueError(f"{path}: empty corpus")
  return documents


class Bm25Index:
  """bm25s over the passages; English stopwords, no stemming."""

  def __init__(self, documents: list[dict[str, Any]]):
    from opid_jax.envs.bm25 import import_bm25s

    bm25s = import_bm25s()
    self._bm25s = bm25s
    self.documents = documents
    self._retriever = bm25s.BM25()
    tokens = bm25s.tokenize([d["contents"] for d in documents], stopwords="en", show_progress=False)
    self._retriever.index(tokens, show_progress=False)
    self._lock = threading.Lock()  # bm25s makes no promise about concurrent retrieve calls

  def search(self, queries: Sequence[str], topk: int) -> list[list[tuple[dict[str, Any], float]]]:
    if not queries:
      return []
    k = min(topk, len(self.documents))
    query_tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
    with self._lock:
      indices, scores = self._retriever.retrieve(query_tokens, k=k, show_progress=False)
    return [
      [(self.documents[int(i)], float(s)) for i, s in zip(row_ids, row_scores)]
      for row_ids, row_scores in zip(indices, scores)
    ]


def parse_retrieve_request(body: bytes) -> tuple[list[str], int, bool]:
  """Validates a /retrieve body; raises RequestError(400, reason) when it is malformed."""
  try:
    request = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise RequestError(400, f"body is not valid JSON: {error}") from error
  if not isinstance(request, dict):
    raise RequestError(400, "body must be a JSON object")
  queries = request.get("queries")
  if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
    raise RequestError(400, "'queries' must be a list of strings")
  if len(queries) > MAX_QUERIES:
    raise RequestError(400, f"at most {MAX_QUERIES} queries per request")
  topk = request.get("topk", DEFAULT_TOPK)
  if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
    raise RequestError(400, f"'topk' must be an integer from 1 to {MAX_TOPK}")
  return_scores = request.get("return_scores", False)
  if not isinstance(return_scores, bool):
    raise RequestError(400, "'return_scores' must be true or false")
  return queries, topk, return_scores


def retrieve_response(index: Bm25Index, queries: list[str], topk: int, return_scores: bool) -> dict[str, Any]:
  results = index.search(queries, topk)
  if return_scores:
    return {"result": [[{"document": doc, "score": score} for doc, score in hits] for hits in results]}
  return {"result": [[doc for doc, _ in hits] for hits in results]}


def make_handler(index: Bm25Index) -> type[http.server.BaseHTTPRequestHandler]:

  class RetrieveHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients send many small requests

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
      data = json.dumps(payload).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _read_body(self) -> bytes:
      length = self.headers.get("Content-Length")
      if length is None:
        raise RequestError(411, "a Content-Length header is required")
      try:
        size = int(length)
      except ValueError as error:
        raise RequestError(400, "Content-Length is not a number") from error
      if size < 0:
        raise RequestError(400, "Content-Length is negative")
      if size > MAX_BODY_BYTES:
        self._discard(size)
        raise RequestError(413, f"body larger than {MAX_BODY_BYTES} bytes")
      return self.rfile.read(size)

    def _discard(self, size: int) -> None:
      # Reading a moderately large body lets the client finish sending and then see the 413;
      # beyond the cap the connection is simply closed after the answer.
      remaining = size if size <= MAX_DISCARD_BYTES else 0
      while remaining > 0:
        chunk = self.rfile.read(min(remaining, 1 << 16))
        if not chunk:
          break
        remaining -= len(chunk)

    def do_POST(self) -> None:
      try:
        if self.path.split("?")[0] != "/retrieve":
          raise RequestError(404, f"no endpoint {self.path}; use POST /retrieve")
        body = self._read_body()
        self._send_json(200, retrieve_response(index, *parse_retrieve_request(body)))
      except RequestError as error:
        self.close_connection = True  # the body may be unread: don't reuse this connection
        self._send_json(error.status, {"error": str(error)})
      except Exception as error:  # a bug must not leave the client without an answer
        self.close_connection = True
        self._send_json(500, {"error": f"internal error: {type(error).__name__}: {error}"})

    def do_GET(self) -> None:
      if self.path.split("?")[0] == "/health":
        self._send_json(200, {"status": "ok", "documents": len(index.documents)})
      elif self.path.split("?")[0] == "/retrieve":
        self._send_json(405, {"error": "use POST for /retrieve"})
      else:
        self._send_json(404, {"error": f"no endpoint {self.path}"})

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
      del format, args

  return RetrieveHandler


def make_server(corpus_path: str, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
  """A ready server (not yet serving); port 0 picks a free port (see `server.server_address`)."""
  index = Bm25Index(load_corpus(corpus_path))
  server = http.server.ThreadingHTTPServer((host, port), make_handler(index))
  server.daemon_threads = True
  server.index = index
  return server


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--corpus", required=True, help="jsonl file of {id, contents} rows")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument(
    "--host", default="127.0.0.1", help="interface to listen on (loopback by default; 0.0.0.0 exposes it)"
  )
  args = parser.parse_args(argv)
  server = make_server(args.corpus, args.host, args.port)
  host, port = server.server_address[:2]
  print(
    f"retrieval server: {len(server.index.documents)} passages, http://{host}:{port}/retrieve",
    file=sys.stderr,
    flush=True,
  )
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  main()
