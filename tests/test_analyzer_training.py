"""The hosted-analyzer path inside training: faults from a real loopback server, the counts they leave, zero
skill advantage for trajectories the analyzer failed on, and no trace of the API key anywhere."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from fault_server import FaultServer
from flax import nnx

from opid_jax.agent import rollout
from opid_jax.envs import counting
from opid_jax.envs.pool import EnvPool
from opid_jax.generation.policy import make_policy
from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import loading
from opid_jax.rl import batch as batch_lib, opid_samples, update
from opid_jax.rl.scoring import Scorer
from opid_jax.skills.backends import make_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = json.dumps(
  {
    "episode_summary": "counted",
    "episode_skill": "say the next number each step",
    "step_skills": {"0": "say the number after the current one", "9": "not a step"},
  }
)
SENTINEL = "sk-opid-sentinel-8c1f0e"


@pytest.fixture(scope="module")
def model_dir(tiny_policy_dir):
  return tiny_policy_dir("llama", 6)


def test_one_iteration_through_faults(model_dir, monkeypatch):
  monkeypatch.setenv("OPID_ANALYZER_KEY", SENTINEL)
  loaded = loading.load(model_dir)
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=(256,))
  scorer = Scorer(loaded.model, loaded.pad_id, micro_batch=4, prompt_buckets=(256, 1024), response_buckets=(8,))
  with EnvPool(functools.partial(counting.CountingEnv, max_steps=2), num_envs=4, num_workers=1) as pool:
    policy = make_policy(sampler, SamplingParams(temperature=1.0, max_new_tokens=8), jax.random.PRNGKey(1))
    trajs = rollout.run_groups(pool, policy, loaded.tokenizer, ["1", "2"], 2, rollout.alfworld_agent(1, 2), 256)
  # Sequential analysis (concurrency 1) meets the script in trajectory order:
  # t0: two 500s then a good answer; t1: prose three times (two repairs) -> failure;
  # t2: too slow six times (timeouts, all API retries) -> failure; t3: a good answer with one bad step index.
  script = ["500", "500", "ok", "garbage", "garbage"] + ["slow"] * 6 + ["ok"]
  with FaultServer(script=script, default="ok", reply=GOOD, delay_s=1.0) as server:
    backend = make_backend(
      "openai",
      base_url=server.base_url,
      model="m",
      api_key_env="OPID_ANALYZER_KEY",
      concurrency=1,
      timeout_s=0.3,
      backoff_base_s=0.01,
      backoff_max_s=0.02,
      max_step_skills=5,
    )
    handle = backend.analyze_many_async(trajs)
    samples, metrics = opid_samples.build_samples(
      trajs,
      score=lambda p, r, params, units=None: scorer.score(p, r, params=params, units=units).logprobs,
      params=scorer.params,
      ref_params=None,
      tokenizer=loaded.tokenizer,
      settings=opid_samples.OpidSettings(lambda_skill=0.5),
      analysis_handle=handle,
    )
    results = handle.result()
    backend.close()
    assert all(r["headers"].get("Authorization") == f"Bearer {SENTINEL}" for r in server.requests)
  stats = handle.stats
  assert [r.has_skill for r in results] == [True, False, False, True]
  assert (stats.trajectories, stats.with_skill, stats.final_failures) == (4, 2, 2)
  assert stats.parse_failures == 2 and stats.repairs == 1
  assert stats.calls == 3 + 2 + 6 + 1 and stats.retries == 2 + 5
  assert results[3].skills.step_skills == {0: "say the number after the current one"}
  assert SENTINEL not in repr(results) + repr(stats.as_dict())

  baseline, _ = opid_samples.build_samples(
    trajs,
    score=lambda p, r, params, units=None: scorer.score(p, r, params=params, units=units).logprobs,
    params=scorer.params,
    ref_params=None,
    tokenizer=loaded.tokenizer,
    settings=opid_samples.OpidSettings(lambda_skill=0.0),
  )
  i = 0
  for traj, result in zip(trajs, results):
    for _ in traj.steps:
      same = np.allclose(samples[i].advantages, baseline[i].advantages, atol=0)
      assert same != result.has_skill, (traj.traj_id, result.failure)
      i += 1
  assert metrics["adv/skill_coverage"] == pytest.approx(
    sum(t.length for t, r in zip(trajs, results) if r.has_skill) / i
  )

  graphdef, params = nnx.split(loaded.model)
  tx = update.make_optimizer(lr=1e-3)
  mb = batch_lib.minibatches(
    samples,
    mini_batch_size=16,
    micro_batch_size=4,
    seed=0,
    pad_id=loaded.pad_id,
    prompt_buckets=(256,),
    response_buckets=(8,),
  )
  state = update.init_train_state(params, tx)
  for batch in mb:
    state, m = update.train_step(state, batch, graphdef=graphdef, tx=tx, cfg=update.LossConfig())
    assert np.isfinite(float(m["ppo/loss"]))


def test_a_run_leaves_no_trace_of_the_key(model_dir, tmp_path):
  workdir = tmp_path / "run"
  with FaultServer(default="ok", reply=GOOD) as server:
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", OPID_ANALYZER_KEY=SENTINEL)
    res = subprocess.run(
      [
        sys.executable,
        "-m",
        "opid_jax.train",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        f"--config.model.path={model_dir}",
        "--config.train.steps=1",
        "--config.analyzer.backend=openai",
        f"--config.analyzer.base_url={server.base_url}",
        "--config.analyzer.model=m",
        "--config.analyzer.api_key_env=OPID_ANALYZER_KEY",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.requests and all(r["headers"]["Authorization"] == f"Bearer {SENTINEL}" for r in server.requests)
  assert SENTINEL not in res.stdout + res.stderr
  files = [p for p in workdir.rglob("*") if p.is_file()]
  assert any(p.name == "metrics.jsonl" for p in files) and any(p.name == "config.json" for p in files)
  for path in files:
    assert SENTINEL.encode() not in path.read_bytes(), path
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[0]["analyzer/with_skill"] == 4 and rows[0]["adv/skill_coverage"] == 1.0
