"""Pipelined rollouts through the continuous engine play the same episodes as the static, turn-by-turn path
(greedy decoding), on real ALFWorld games and on the counting env, with the committed ALFWorld SFT policy."""

import functools
import os

import jax
import numpy as np
import pytest

from opid_jax.agent import rollout
from opid_jax.agent.pipelined_rollout import run_groups_pipelined
from opid_jax.envs import counting
from opid_jax.envs.alfworld import AlfworldEnv, list_games
from opid_jax.envs.pool import EnvPool
from opid_jax.generation.engine import ContinuousEngine
from opid_jax.generation.policy import EnginePolicy, make_policy
from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import loading

POLICY = os.path.join(os.path.dirname(__file__), "..", "results", "cpu_study", "sft", "policy")
GREEDY = SamplingParams(0.0, max_new_tokens=48)
BUCKETS = (256, 512, 1024)


@pytest.fixture(scope="module")
def policy_model():
  return loading.load(POLICY)


def _static(loaded, pool, tasks, agent, stats=None):
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=BUCKETS)
  policy = make_policy(sampler, GREEDY, jax.random.PRNGKey(0), stats)
  return rollout.run_groups(pool, policy, loaded.tokenizer, tasks, 2, agent, max_prompt_tokens=1024)


def _pipelined(loaded, pool, tasks, agent, stats, slots=3):
  engine = ContinuousEngine(
    loaded.model, loaded.stop_ids, loaded.pad_id, slots=slots, max_new_tokens=48, decode_steps=4, prompt_buckets=BUCKETS
  )
  generator = EnginePolicy(engine, GREEDY, jax.random.PRNGKey(0), stats)
  ended = []
  trajectories = run_groups_pipelined(
    pool, generator, loaded.tokenizer, tasks, 2, agent, 1024, on_episode_end=ended.append, stats=stats
  )
  assert sorted(t.traj_id for t in ended) == [t.traj_id for t in trajectories]
  return trajectories


def _assert_same(static, pipelined):
  assert [(t.group_id, t.traj_id, t.task_id) for t in pipelined] == [(t.group_id, t.traj_id, t.task_id) for t in static]
  for a, b in zip(static, pipelined):
    assert (a.won, a.episode_return, a.failure_reason, a.info, a.task, a.hindsight) == (
      b.won,
      b.episode_return,
      b.failure_reason,
      b.info,
      b.task,
      b.hindsight,
    )
    assert len(a.steps) == len(b.steps)
    for x, y in zip(a.steps, b.steps):
      np.testing.assert_allclose(x.sampled_logprobs, y.sampled_logprobs, atol=1e-4)
      x.sampled_logprobs = y.sampled_logprobs = None
      assert x == y


def test_alfworld_episodes_match_the_static_path(policy_model, alfworld_games):
  games = list_games(alfworld_games, "valid_seen")[:3]
  agent = rollout.alfworld_agent(max_steps=6)
  with EnvPool(functools.partial(AlfworldEnv, alfworld_games), num_envs=6, num_workers=2) as pool:
    static = _static(policy_model, pool, games, agent)
  stats = {}
  # Fewer envs than episodes: an env is reset for the next episode as soon as its episode ends.
  with EnvPool(functools.partial(AlfworldEnv, alfworld_games), num_envs=4, num_workers=2) as pool:
    pipelined = _pipelined(policy_model, pool, games, agent, stats)
  _assert_same(static, pipelined)
  lengths = {len(s.response_ids) for t in static for s in t.steps}
  assert len(lengths) > 1  # responses of several lengths ended at different times
  assert stats["new_tokens"] == sum(len(s.response_ids) for t in pipelined for s in t.steps)
  assert stats["env_busy_seconds"] >= stats["env_exposed_seconds"] >= 0
  assert 0 < stats["decode_tokens"] <= stats["slot_steps"]


def test_counting_episodes_match_the_static_path(policy_model):
  agent = rollout.alfworld_agent(max_steps=4)
  tasks = counting.task_ids(5)
  with EnvPool(counting.CountingEnv, num_envs=10, num_workers=2) as pool:
    static = _static(policy_model, pool, tasks, agent)
    pipelined = _pipelined(policy_model, pool, tasks, agent, {}, slots=4)
  _assert_same(static, pipelined)


def test_a_dead_env_worker_fails_only_its_episodes(policy_model):
  """A worker killed mid-rollout ends the episodes it held as failed; the others play on to their end."""
  agent = rollout.alfworld_agent(max_steps=4)
  tasks = counting.task_ids(4)
  with EnvPool(counting.CountingEnv, num_envs=8, num_workers=2) as pool:
    static = _static(policy_model, pool, tasks, agent)
    victim = pool.worker_pids()[1]
    engine = ContinuousEngine(
      policy_model.model, policy_model.stop_ids, policy_model.pad_id, slots=4, max_new_tokens=48, prompt_buckets=BUCKETS
    )
    generator = EnginePolicy(engine, GREEDY, jax.random.PRNGKey(0))
    killed = []

    def kill_once(trajectory):
      if not killed:
        os.kill(victim, 9)
        killed.append(trajectory.traj_id)

    pipelined = run_groups_pipelined(
      pool, generator, policy_model.tokenizer, tasks, 2, agent, 1024, on_episode_end=kill_once
    )
  failed = [t for t in pipelined if t.failure_reason]
  assert failed and all("env worker" in t.failure_reason and not t.won for t in failed)
  for a, b in zip(static, pipelined):
    if not b.failure_reason:
      assert [s.response_ids for s in a.steps] == [s.response_ids for s in b.steps] and a.won == b.won
