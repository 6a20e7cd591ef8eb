"""Env pool faults (dead, hung and failing workers) and the seeded task stream."""

from __future__ import annotations

import os
import signal
import time

import pytest

from opid_jax.envs.base import Env, Hindsight, ResetResult, StepResult
from opid_jax.envs.pool import EnvPool, TaskStream, failure_of

SLOW_S = 1.5


class CountdownEnv(Env):
  """Won after `task_id` (an integer) steps of "go"; "boom" raises, "hang" never returns, "slow" takes
  SLOW_S seconds to change nothing, "die" (as a task or an action) kills the worker process."""

  def __init__(self):
    self.remaining = 0
    self.task_id = ""

  def reset(self, task_id: str) -> ResetResult:
    if task_id == "bad":
      raise ValueError("no such task")
    if task_id == "die":
      os.kill(os.getpid(), signal.SIGKILL)
    self.task_id = task_id
    self.remaining = int(task_id)
    return ResetResult(
      f"count {self.remaining}", f"count down from {task_id}", "countdown", ["go"], info={"pid": os.getpid()}
    )

  def step(self, action: str) -> StepResult:
    if action == "boom":
      raise RuntimeError("the env broke")
    if action == "hang":
      time.sleep(3600)
    if action == "slow":
      time.sleep(SLOW_S)
    if action == "die":
      os.kill(os.getpid(), signal.SIGKILL)
    if action == "go":
      self.remaining -= 1
    won = self.remaining == 0
    return StepResult(f"count {self.remaining}", 1.0 if won else 0.0, won, won, ["go"], info={"pid": os.getpid()})

  def hindsight(self) -> Hindsight:
    return Hindsight(expert_actions=("go",) * int(self.task_id))


@pytest.fixture
def pool():
  with EnvPool(CountdownEnv, num_envs=4, num_workers=2, timeout_s=3.0) as p:
    yield p


def test_batched_reset_step_and_hindsight(pool):
  resets = pool.reset([(0, "2"), (1, "1"), (2, "3"), (3, "2")])
  assert [r.observation for r in resets] == ["count 2", "count 1", "count 3", "count 2"]
  assert {r.info["pid"] for r in resets} == set(pool.worker_pids())
  assert [len(h.expert_actions) for h in pool.hindsight([2, 0])] == [3, 2]
  steps = pool.step([(3, "go"), (1, "go"), (0, "wait")])
  assert [(s.observation, s.done) for s in steps] == [("count 1", False), ("count 0", True), ("count 2", False)]
  with pytest.raises(ValueError):
    pool.step([(0, "go"), (0, "go")])
  with pytest.raises(IndexError):
    pool.step([(4, "go")])


def test_killed_worker_fails_its_episodes_and_comes_back(pool):
  pool.reset([(i, "3") for i in range(4)])
  pool.step([(i, "go") for i in range(4)])
  dead_pid = pool.worker_pids()[0]  # holds envs 0 and 2
  os.kill(dead_pid, signal.SIGKILL)
  steps = pool.step([(i, "go") for i in range(4)])
  assert "died" in failure_of(steps[0]) and "died" in failure_of(steps[2])
  assert steps[0].done and not steps[0].won
  assert [s.observation for s in (steps[1], steps[3])] == ["count 1", "count 1"]
  assert pool.restarts == 1 and pool.failure_log and dead_pid not in pool.worker_pids()
  # the run goes on: surviving episodes finish, the restarted worker serves new episodes
  assert all(s.won for s in pool.step([(1, "go"), (3, "go")]))
  assert not any(failure_of(r) for r in pool.reset([(0, "1"), (2, "1")]))
  assert all(s.won for s in pool.step([(0, "go"), (2, "go")]))


def test_worker_dying_inside_a_call_fails_only_its_unanswered_envs(pool):
  pool.reset([(i, "3") for i in range(4)])
  steps = pool.step([(0, "go"), (1, "go"), (2, "die"), (3, "go")])
  # env 0 answered before env 2 killed their worker, but its game state died with the worker
  assert ["died" in failure_of(s) for s in steps] == [True, False, True, False]
  assert pool.restarts == 1
  assert all(not failure_of(r) for r in pool.reset([(0, "1"), (2, "1")]))


def test_worker_dying_during_a_reset_fails_every_reset_it_held(pool):
  resets = pool.reset([(0, "2"), (1, "2"), (2, "die"), (3, "2")])
  # env 0 was reset before env 2 killed their worker: its fresh game died with it
  assert ["died" in failure_of(r) for r in resets] == [True, False, True, False]
  resets = pool.reset([(0, "2"), (2, "2")])  # the restarted worker answers again
  assert not any(failure_of(r) for r in resets)
  assert [s.observation for s in pool.step([(i, "go") for i in range(4)])] == ["count 1"] * 4


def test_worker_killed_between_calls_fails_the_episodes_it_held(pool):
  pool.reset([(i, "3") for i in range(4)])
  os.kill(pool.worker_pids()[1], signal.SIGKILL)  # holds envs 1 and 3
  time.sleep(0.2)
  steps = pool.step([(0, "go"), (1, "go")])  # env 3 is not asked now ...
  assert not failure_of(steps[0]) and "died" in failure_of(steps[1])
  later = pool.step([(3, "go")])  # ... and learns about its lost episode on its next step
  assert "died" in failure_of(later[0])


def test_hung_worker_is_restarted_after_the_timeout(pool):
  pool.reset([(i, "2") for i in range(4)])
  hung_pid = pool.worker_pids()[1]
  started = time.monotonic()
  steps = pool.step([(0, "go"), (1, "hang"), (2, "go"), (3, "go")])
  assert time.monotonic() - started < 20
  assert "hung" in failure_of(steps[1]) and "hung" in failure_of(steps[3])
  assert not failure_of(steps[0]) and not failure_of(steps[2])
  assert hung_pid not in pool.worker_pids()
  assert not any(failure_of(r) for r in pool.reset([(1, "1"), (3, "1")]))


def test_env_error_fails_one_episode_and_keeps_the_worker(pool):
  pids = pool.worker_pids()
  resets = pool.reset([(0, "bad"), (1, "2")])
  assert "no such task" in failure_of(resets[0]) and not failure_of(resets[1])
  steps = pool.step([(1, "boom")])
  assert "the env broke" in failure_of(steps[0]) and steps[0].done
  assert pool.worker_pids() == pids and pool.restarts == 0


def _receive_all(pool):
  results = []
  while pool.in_flight:
    results += pool.receive(timeout_s=10)
  return results


def _play_batched(pool, tasks):
  history = {i: [result] for (i, _), result in zip(tasks, pool.reset(tasks))}
  playing = [i for i, _ in tasks]
  while playing:
    for i, result in zip(playing, pool.step([(i, "go") for i in playing])):
      history[i].append(result)
    playing = [i for i in playing if not history[i][-1].done]
  return history


def _play_async(pool, tasks):
  history = {i: [] for i, _ in tasks}
  for i, task_id in tasks:
    pool.submit("reset", i, task_id)
  while pool.in_flight:
    for i, command, result in pool.receive(timeout_s=10):
      assert command == ("step" if history[i] else "reset")
      history[i].append(result)
      if not getattr(result, "done", False):
        pool.submit("step", i, "go")
  return history


def test_async_plays_like_the_batched_calls(pool):
  tasks = [(0, "2"), (1, "1"), (2, "3"), (3, "2")]
  batched = _play_batched(pool, tasks)
  assert _play_async(pool, tasks) == batched
  assert [len(batched[i]) for i in range(4)] == [3, 2, 4, 3] and all(h[-1].won for h in batched.values())
  pool.submit("hindsight", 2, None)
  assert pool.receive(timeout_s=10) == [(2, "hindsight", Hindsight(expert_actions=("go",) * 3))]


def test_async_answers_come_as_they_are_ready(pool):
  pool.reset([(i, "2") for i in range(4)])
  started = time.monotonic()
  pool.submit("step", 1, "slow")  # worker 1 is busy for SLOW_S ...
  pool.submit("step", 0, "go")  # ... while worker 0 answers at once
  pool.submit("step", 2, "go")
  fast = []
  while len(fast) < 2:
    fast += pool.receive(timeout_s=10)
  assert time.monotonic() - started < SLOW_S - 0.5 and pool.in_flight == 1
  assert sorted((i, command, r.observation) for i, command, r in fast) == [
    (0, "step", "count 1"),
    (2, "step", "count 1"),
  ]
  pool.submit("step", 0, "go")
  [(env_index, _, won)] = pool.receive(timeout_s=10)
  assert env_index == 0 and won.won and pool.in_flight == 1
  [(env_index, _, slow)] = pool.receive(timeout_s=10)
  assert env_index == 1 and slow.observation == "count 2" and not slow.done and pool.in_flight == 0


def test_async_killed_worker_fails_only_its_requests(pool):
  pool.reset([(i, "3") for i in range(4)])
  dead_pid = pool.worker_pids()[0]  # holds envs 0 and 2
  pool.submit("step", 0, "slow")
  pool.submit("step", 1, "go")
  pool.submit("step", 3, "go")
  os.kill(dead_pid, signal.SIGKILL)
  results = {i: result for i, _, result in _receive_all(pool)}
  assert failure_of(results[0]) == "env worker died (exit code -9)" and results[0].done and not results[0].won
  assert [(results[i].observation, failure_of(results[i])) for i in (1, 3)] == [("count 2", "")] * 2
  assert pool.restarts == 1 and dead_pid not in pool.worker_pids()
  # env 2 had nothing in flight: its episode died with the worker, which its next step reports at once
  pool.submit("step", 2, "go")
  with pytest.raises(ValueError):
    pool.submit("step", 2, "go")
  [(env_index, command, lost)] = pool.receive(timeout_s=0)
  assert (env_index, command, failure_of(lost)) == (2, "step", "env worker died (exit code -9)") and lost.done
  pool.submit("reset", 0, "1")
  [(_, _, reset)] = pool.receive(timeout_s=10)
  assert not failure_of(reset) and reset.info["pid"] == pool.worker_pids()[0]
  pool.submit("step", 0, "go")
  [(_, _, won)] = pool.receive(timeout_s=10)
  assert won.won


def test_async_hung_worker_fails_only_its_requests(pool):
  pool.reset([(i, "2") for i in range(4)])  # workers are up before the short hang timeout
  pool.timeout_s = 0.5
  hung_pid = pool.worker_pids()[1]  # holds envs 1 and 3
  started = time.monotonic()
  for env_index, action in [(1, "hang"), (3, "go"), (0, "go"), (2, "go")]:
    pool.submit("step", env_index, action)
  results = {i: result for i, _, result in _receive_all(pool)}
  assert time.monotonic() - started < 5
  assert [failure_of(results[i]) for i in (1, 3)] == ["env worker sent nothing for 0.5 s (hung)"] * 2
  assert [results[i].observation for i in (0, 2)] == ["count 1"] * 2
  assert hung_pid not in pool.worker_pids() and pool.restarts == 1
  pool.timeout_s = 3.0
  assert not any(failure_of(r) for r in pool.reset([(1, "1"), (3, "1")]))


def test_async_receive_waits_and_refuses_misuse(pool):
  started = time.monotonic()
  assert pool.receive() == [] and pool.receive(timeout_s=5) == [] and pool.in_flight == 0
  assert time.monotonic() - started < 0.5
  pool.reset([(0, "2"), (1, "2")])
  pool.submit("step", 0, "slow")
  with pytest.raises(ValueError):
    pool.submit("step", 0, "go")
  with pytest.raises(ValueError):
    pool.submit("jump", 1, "go")
  with pytest.raises(IndexError):
    pool.submit("step", 4, "go")
  for batched in (lambda: pool.step([(1, "go")]), lambda: pool.reset([(1, "1")]), lambda: pool.hindsight([1])):
    with pytest.raises(RuntimeError):
      batched()
  started = time.monotonic()
  assert pool.receive(timeout_s=0.3) == [] and pool.in_flight == 1
  assert 0.25 < time.monotonic() - started < SLOW_S
  [(env_index, _, slow)] = pool.receive(timeout_s=10)
  assert env_index == 0 and not failure_of(slow)
  assert [s.observation for s in pool.step([(0, "go"), (1, "go")])] == ["count 1", "count 1"]


def test_task_stream_is_seeded_and_resumable():
  tasks = [f"t{i}" for i in range(10)]
  stream = TaskStream(tasks, seed=7)
  first_epoch = stream.next_tasks(4) + stream.next_tasks(6)
  assert sorted(first_epoch) == sorted(tasks) and first_epoch != tasks
  assert TaskStream(tasks, seed=7).next_tasks(10) == first_epoch
  assert TaskStream(tasks, seed=8).next_tasks(10) != first_epoch

  stream.next_tasks(3)
  saved = dict(stream.state_dict())
  expected = stream.next_tasks(12)  # crosses into a third epoch
  resumed = TaskStream(tasks, seed=0)
  resumed.load_state_dict(saved)
  assert resumed.next_tasks(12) == expected
  assert TaskStream(tasks, shuffle=False).next_tasks(12) == tasks + tasks[:2]
  with pytest.raises(ValueError):
    TaskStream(tasks[:5]).load_state_dict(saved)
