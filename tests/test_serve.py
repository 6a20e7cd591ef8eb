"""The OpenAI-compatible server over real loopback HTTP, and the `openai` analyzer backend talking to it."""

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
from hf_fixtures import make_hf_model, save_tiny_tokenizer

from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.envs.base import Hindsight
from opid_jax.generation.server import build_server
from opid_jax.skills.backends import make_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("served"))
  save_tiny_tokenizer(model_dir)
  make_hf_model("qwen3", model_dir, seed=4)
  # The analyzer's prompts run past 1024 tokens: cut them on the left (the default answers 400) to keep compiles small.
  httpd, batcher = build_server(
    model_dir, "127.0.0.1", 0, max_batch=16, max_prompt_tokens=1024, default_max_tokens=16, truncation_side="left"
  )
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", os.path.basename(model_dir)  # the default served name
  httpd.shutdown()
  httpd.server_close()
  batcher.close()


def chat(url, **body):
  body.setdefault("messages", [{"role": "user", "content": "go to cabinet 1"}])
  return httpx.post(f"{url}/chat/completions", json=body, timeout=300)


def test_models_and_a_completion(server):
  url, served = server
  models = httpx.get(f"{url}/models", timeout=30).json()
  assert models["object"] == "list" and models["data"][0]["id"] == served
  res = chat(url, max_tokens=5, temperature=0.7, n=2)
  assert res.status_code == 200
  body = res.json()
  assert body["object"] == "chat.completion" and len(body["choices"]) == 2
  for choice in body["choices"]:
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
  usage = body["usage"]
  assert (
    1 <= usage["completion_tokens"] <= 10
    and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
  )


@pytest.mark.parametrize(
  "body,status,needle",
  [
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["\n"]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "numbers"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
  ],
)
def test_bad_requests_get_error_objects(server, body, status, needle):
  url, _ = server
  res = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
  assert res.status_code == status
  error = res.json()["error"]
  assert needle in error["message"] and error["type"] == "invalid_request_error"
  assert httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=60).status_code == 400
  assert httpx.get(f"{url}/nowhere", timeout=60).json()["error"]["type"] == "not_found_error"


def test_concurrent_requests_share_batches(server):
  url, _ = server
  before = httpx.get(f"{url}/stats", timeout=30).json()
  results = [None] * 12

  def one(i):
    results[i] = chat(url, max_tokens=6, temperature=1.0).status_code

  threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  after = httpx.get(f"{url}/stats", timeout=30).json()
  assert results == [200] * 12
  assert after["requests"] - before["requests"] == 12
  assert after["batches"] - before["batches"] < 12  # at least two requests shared a sampler call


def trajectory(traj_id, won):
  steps = [
    Step(
      index=i,
      observation=f"You see a cabinet {i}.",
      admissible_actions=["go to cabinet 1"],
      prompt_text="",
      prompt_ids=[1],
      response_ids=[2],
      response_text="<action>go to cabinet 1</action>",
      action="go to cabinet 1",
      valid=True,
      reward=10.0 if (won and i == 1) else 0.0,
    )
    for i in range(2)
  ]
  return Trajectory(
    group_id=0,
    traj_id=traj_id,
    task_id="t",
    task="put a mug in the sink",
    task_type="pick",
    steps=steps,
    won=won,
    episode_return=10.0 if won else 0.0,
    hindsight=Hindsight(),
  )


def test_openai_backend_talks_to_the_server(server, monkeypatch):
  url, served = server
  monkeypatch.setenv("OPID_TEST_KEY", "sk-sentinel-not-a-real-key")
  backend = make_backend(
    "openai",
    base_url=url,
    model=served,
    api_key_env="OPID_TEST_KEY",
    concurrency=4,
    timeout_s=120,
    max_completion_tokens=24,
    max_step_skills=2,
  )
  results = backend.analyze_many([trajectory(i, won=i % 2 == 0) for i in range(4)])
  stats = backend.last_stats
  assert len(results) == 4 and stats.trajectories == 4
  # A tiny random model writes no valid JSON: every trajectory fails after its repair attempts.
  assert stats.calls >= 4 and stats.parse_failures >= 4 and stats.final_failures + stats.with_skill == 4
  assert all((r.skills is None) == bool(r.failure) for r in results)
  backend.close()


def test_a_training_iteration_with_the_server_as_its_analyzer(server, model_dir, tmp_path):
  """The paper's setting end to end: an LLM analyzer behind an OpenAI-compatible endpoint (ours)."""
  url, served = server
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", OPID_TEST_KEY="sk-sentinel-not-a-real-key")
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "opid_jax.train",
      "--config=configs/smoke.py",
      f"--workdir={tmp_path / 'run'}",
      f"--config.model.path={model_dir}",
      "--config.train.steps=1",
      "--config.analyzer.backend=openai",
      f"--config.analyzer.base_url={url}",
      f"--config.analyzer.model={served}",
      "--config.analyzer.api_key_env=OPID_TEST_KEY",
      "--config.analyzer.max_completion_tokens=16",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  assert row["analyzer/trajectories"] == 4 and row["analyzer/calls"] >= 4 and row["samples"] > 0


def test_the_openai_analyzer_without_an_endpoint_is_one_error_line(tmp_path):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  res = subprocess.run(
    [sys.executable, "-m", "opid_jax.train", "--config=configs/alfworld.py", f"--workdir={tmp_path}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 2
  (line,) = res.stderr.strip().splitlines()
  assert line.startswith("error: analyzer.backend=openai")
  for needle in ("analyzer.base_url", "analyzer.model", "analyzer.api_key_env", "--config.analyzer.backend=expert"):
    assert needle in line
