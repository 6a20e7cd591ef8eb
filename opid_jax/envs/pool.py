"""A pool of environments over worker processes, stepped in batches or one env at a time, and the task stream.

Envs are dealt to workers in blocks of `envs_per_block` consecutive indices, round robin (env `i`
lives in worker `(i // envs_per_block) % num_workers`): blocks of 1 balance any prefix of the envs;
blocks of the group size keep a group's envs, which play the same game, in one process, where
per-process caches (e.g. ALFWorld's PDDL translation) serve them all. Each worker builds its envs
lazily from a picklable factory (e.g. `functools.partial(AlfworldEnv, data_dir)`). A batched call
(`reset`, `step`, `hindsight`) sends every worker its share, then gathers one answer per env. The
asynchronous interface (`submit`, `receive`) sends one env's request at once and hands back answers as
they come, for rollouts that keep decoding while envs work; the two modes never interleave. Faults
never stop the run:
  * an env that raises ends its episode as failed (the worker lives on);
  * a worker that dies, or sends nothing for `timeout_s` while it owes answers, is killed and
    restarted; the requests it still owed and every episode it held end as failed, with the reason logged.
A failed reset or step comes back as a normal result whose `info["failure_reason"]` says what
happened (a failed step has `done=True`, `won=False`, reward 0).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import signal
import time
from typing import Any, Callable, Sequence

from opid_jax.envs.base import Env, Hindsight, ResetResult, StepResult

logger = logging.getLogger(__name__)

FAILURE_KEY = "failure_reason"
COMMANDS = ("reset", "step", "hindsight")

_Answer = tuple[int, str, bool, Any]  # (env_index, command, ok, result or failure reason), as a worker sent it


def failure_of(result: ResetResult | StepResult) -> str:
  """The failure reason of a pool result; empty when the call succeeded."""
  return str(result.info.get(FAILURE_KEY, ""))


def _failed_reset(reason: str) -> ResetResult:
  return ResetResult(observation="", task="", task_type="", admissible_actions=[], info={FAILURE_KEY: reason})


def _failed_step(reason: str) -> StepResult:
  return StepResult(observation="", reward=0.0, done=True, won=False, admissible_actions=[], info={FAILURE_KEY: reason})


def _apply(command: str, env: Env, payload: Any) -> Any:
  if command == "reset":
    return env.reset(payload)
  if command == "step":
    return env.step(payload)
  if command == "hindsight":
    return env.hindsight()
  raise ValueError(f"unknown pool command {command!r}")


def _worker_main(conn: mp.connection.Connection, env_factory: Callable[[], Env], env_indices: tuple[int, ...]) -> None:
  """Serves (command, [(env_index, payload), ...]) requests, answering one message per env."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
  envs: dict[int, Env] = {}
  while True:
    try:
      command, items = conn.recv()
    except EOFError:
      break
    if command == "close":
      break
    for env_index, payload in items:
      try:
        if env_index not in envs:
          envs[env_index] = env_factory()
        message = (env_index, True, _apply(command, envs[env_index], payload))
      except Exception as error:  # an env fault fails one episode, not the worker
        message = (env_index, False, f"{type(error).__name__}: {error}")
      try:
        conn.send(message)
      except (TypeError, ValueError, AttributeError) as error:  # result does not pickle
        conn.send((env_index, False, f"result could not be sent: {error}"))
  for env in envs.values():
    try:
      env.close()
    except Exception:  # closing is best effort
      pass


@dataclasses.dataclass
class _Worker:
  process: Any  # a multiprocessing process
  conn: mp.connection.Connection
  env_indices: tuple[int, ...]
  pending: dict[int, str] = dataclasses.field(default_factory=dict)  # env -> command awaiting its answer
  deadline: float = 0.0  # when a worker with pending requests that stays silent counts as hung


class EnvPool:
  """`num_envs` envs over `num_workers` processes, addressed by env index 0..num_envs-1."""

  def __init__(
    self,
    env_factory: Callable[[], Env],
    num_envs: int,
    num_workers: int | None = None,
    timeout_s: float = 300.0,
    start_method: str = "forkserver",
    envs_per_block: int = 1,
  ):
    if num_envs < 1 or envs_per_block < 1:
      raise ValueError("num_envs and envs_per_block must be at least 1")
    self.env_factory = env_factory
    self.num_envs = num_envs
    num_blocks = -(-num_envs // envs_per_block)
    self.num_workers = max(1, min(num_blocks, num_workers or os.cpu_count() or 1))
    self.timeout_s = timeout_s  # longest silence of a busy worker before it counts as hung
    self.envs_per_block = envs_per_block
    self.restarts = 0
    self.failure_log: list[str] = []
    self._context = mp.get_context(start_method)
    self._active: set[int] = set()  # envs with an episode in progress
    self._lost: dict[int, str] = {}  # env -> why its episode was lost with its worker
    self._faults: dict[int, str] = {}  # worker -> what went wrong with it during the current batched call
    self._ready: list[tuple[int, str, Any]] = []  # async results decided without a worker, for the next receive
    self._workers = [self._start_worker(w) for w in range(self.num_workers)]

  # --- public API -------------------------------------------------------------------------------

  def worker_of(self, env_index: int) -> int:
    return (env_index // self.envs_per_block) % self.num_workers

  def worker_pids(self) -> list[int]:
    return [worker.process.pid for worker in self._workers]

  @property
  def in_flight(self) -> int:
    """Submitted requests whose results `receive` has not returned yet."""
    return sum(len(worker.pending) for worker in self._workers) + len(self._ready)

  def reset(self, requests: Sequence[tuple[int, str]]) -> list[ResetResult]:
    """Resets env `i` to task `task_id` for each `(i, task_id)`; results in request order."""
    return self._call("reset", requests)

  def step(self, requests: Sequence[tuple[int, str]]) -> list[StepResult]:
    """Steps env `i` with `action` for each `(i, action)`; results in request order."""
    return self._call("step", requests)

  def hindsight(self, env_indices: Sequence[int]) -> list[Hindsight]:
    """Privileged knowledge of each env's current task (empty where the worker failed)."""
    return self._call("hindsight", [(i, None) for i in env_indices])

  def submit(self, command: str, env_index: int, payload: Any) -> None:
    """Sends one request ("reset" with a task id, "step" with an action, "hindsight" with None) without
    waiting; its result comes from `receive`. An env has at most one request in flight."""
    self._check_indices([(env_index, payload)])
    if self._is_in_flight(env_index):
      raise ValueError(f"env {env_index} already has a request in flight")
    early = self._prepare(command, env_index)
    if early is not None:
      self._ready.append((env_index, command, early))
      return
    answers = self._send(self.worker_of(env_index), command, [(env_index, payload)])
    self._ready.extend(self._deliver(answer) for answer in answers)

  def receive(self, timeout_s: float | None = None) -> list[tuple[int, str, Any]]:
    """Every result ready now, as `(env_index, command, result)`, converted as the batched calls do.

    Waits until at least one is ready or `timeout_s` passes (None: no limit); returns [] at once when
    nothing is in flight. A worker that died or hung is restarted here, failing what it still owed.
    """
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while self._busy_workers():
      wait_s = 0.0 if self._ready else (None if end is None else max(0.0, end - time.monotonic()))
      self._ready.extend(self._deliver(answer) for answer in self._collect(wait_s))
      if self._ready or wait_s == 0.0:
        break
    ready, self._ready = self._ready, []
    return ready

  def close(self) -> None:
    for worker in self._workers:
      try:
        worker.conn.send(("close", None))
      except (OSError, EOFError):
        pass
    for worker in self._workers:
      worker.process.join(timeout=10)
      if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(timeout=5)
      worker.conn.close()
    self._workers = []

  def __enter__(self) -> EnvPool:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  # --- workers --------------------------------------------------------------------------------

  def _check_indices(self, requests: Sequence[tuple[int, Any]]) -> None:
    indices = [i for i, _ in requests]
    if len(set(indices)) != len(indices):
      raise ValueError("an env index appears twice in one batched call")
    bad = [i for i in indices if not 0 <= i < self.num_envs]
    if bad:
      raise IndexError(f"env indices {bad} outside 0..{self.num_envs - 1}")

  def _is_in_flight(self, env_index: int) -> bool:
    pending = self._workers[self.worker_of(env_index)].pending
    return env_index in pending or any(i == env_index for i, _, _ in self._ready)

  def _prepare(self, command: str, env_index: int) -> Any:
    """Episode bookkeeping before a request; returns the result already decided (a step of a lost episode)."""
    if command not in COMMANDS:
      raise ValueError(f"unknown pool command {command!r}")
    if command == "reset":
      self._active.discard(env_index)
      self._lost.pop(env_index, None)
    elif command == "step" and env_index in self._lost:
      return _failed_step(self._lost.pop(env_index))
    return None

  def _result(self, command: str, env_index: int, ok: bool, value: Any) -> Any:
    """A worker's answer as the caller sees it, with the episode bookkeeping it implies."""
    if command == "reset":
      if ok:
        self._active.add(env_index)
      return value if ok else _failed_reset(value)
    if command == "step":
      result = value if ok else _failed_step(value)
      if result.done:
        self._active.discard(env_index)
        self._lost.pop(env_index, None)  # a step failed with its worker reports the lost episode itself
      return result
    return value if ok else Hindsight()

  def _deliver(self, answer: _Answer) -> tuple[int, str, Any]:
    env_index, command, ok, value = answer
    return env_index, command, self._result(command, env_index, ok, value)

  def _call(self, command: str, requests: Sequence[tuple[int, Any]]) -> list[Any]:
    """A batched call: results in request order."""
    if self.in_flight:
      raise RuntimeError(f"{self.in_flight} asynchronous requests are in flight; receive them first")
    self._check_indices(requests)
    early = {i: result for i, _ in requests if (result := self._prepare(command, i)) is not None}
    outcomes = self._run(command, [(i, payload) for i, payload in requests if i not in early])
    return [early[i] if i in early else self._result(command, i, *outcomes[i]) for i, _ in requests]

  def _start_worker(self, worker_id: int) -> _Worker:
    env_indices = tuple(i for i in range(self.num_envs) if self.worker_of(i) == worker_id)
    parent_conn, child_conn = self._context.Pipe()
    process = self._context.Process(
      target=_worker_main,
      args=(child_conn, self.env_factory, env_indices),
      name=f"opid-env-worker-{worker_id}",
      daemon=True,
    )
    process.start()
    child_conn.close()
    return _Worker(process, parent_conn, env_indices)

  def _restart_worker(self, worker_id: int, reason: str) -> None:
    worker = self._workers[worker_id]
    if worker.process.is_alive():
      worker.process.kill()
    worker.process.join(timeout=10)
    worker.conn.close()
    message = f"env worker {worker_id} (pid {worker.process.pid}) {reason}; restarted"
    logger.warning(message)
    self.failure_log.append(message)
    self.restarts += 1
    for env_index in worker.env_indices:
      if env_index in self._active:
        self._active.discard(env_index)
        self._lost[env_index] = f"env worker {reason}"
    self._workers[worker_id] = self._start_worker(worker_id)

  def _run(self, command: str, requests: Sequence[tuple[int, Any]]) -> dict[int, tuple[bool, Any]]:
    """Sends each worker its share of `requests` and gathers `env_index -> (ok, value or reason)`.

    Every env of a worker that had to be restarted fails, even one that answered before the fault:
    its state went down with the process.
    """
    shares: dict[int, list[tuple[int, Any]]] = {}
    for env_index, payload in requests:
      shares.setdefault(self.worker_of(env_index), []).append((env_index, payload))
    self._faults = {}
    answers = []
    for worker_id, items in shares.items():
      answers += self._send(worker_id, command, items)
    while self._busy_workers():
      answers += self._collect(None)
    outcomes = {env_index: (ok, value) for env_index, _, ok, value in answers}
    for worker_id, reason in self._faults.items():
      for env_index, _ in shares.get(worker_id, ()):
        outcomes[env_index] = (False, f"env worker {reason}")
    self._faults = {}
    return outcomes

  def _busy_workers(self) -> list[int]:
    return [worker_id for worker_id, worker in enumerate(self._workers) if worker.pending]

  def _send(self, worker_id: int, command: str, items: Sequence[tuple[int, Any]]) -> list[_Answer]:
    """Sends one request message; returns the failed answers when the worker turns out dead."""
    worker = self._workers[worker_id]
    try:
      worker.conn.send((command, list(items)))
      sent = True
    except (OSError, EOFError):
      sent = False
    if not worker.pending:
      worker.deadline = time.monotonic() + self.timeout_s
    worker.pending.update((env_index, command) for env_index, _ in items)
    return [] if sent else self._fail_worker(worker_id, self._death_reason(worker_id), [])

  def _collect(self, timeout_s: float | None) -> list[_Answer]:
    """Waits for the busy workers until one answers or faults, the first hang deadline, or `timeout_s`
    (None: no limit of its own); then reads every answer in their pipes and restarts the workers that
    died or hung, failing what they owed."""
    busy = self._busy_workers()
    owners: dict[Any, int] = {}
    for worker_id in busy:
      owners[self._workers[worker_id].conn] = worker_id
      owners[self._workers[worker_id].process.sentinel] = worker_id
    wait_s = max(0.0, min(self._workers[w].deadline for w in busy) - time.monotonic())
    ready = mp.connection.wait(list(owners), timeout=wait_s if timeout_s is None else min(wait_s, timeout_s))
    answers: list[_Answer] = []
    for worker_id in sorted({owners[obj] for obj in ready}):
      drained, alive = self._drain(worker_id)
      answers += drained if alive else self._fail_worker(worker_id, self._death_reason(worker_id), drained)
    now = time.monotonic()
    for worker_id in busy:
      worker = self._workers[worker_id]  # a worker restarted above has nothing pending
      if worker.pending and worker.deadline <= now:
        answers += self._fail_worker(worker_id, f"sent nothing for {self.timeout_s:g} s (hung)", [])
    return answers

  def _drain(self, worker_id: int) -> tuple[list[_Answer], bool]:
    """Reads every answer already in the pipe; the flag is False when the worker is gone."""
    worker = self._workers[worker_id]
    answers: list[_Answer] = []
    try:
      while worker.conn.poll():
        env_index, ok, value = worker.conn.recv()
        answers.append((env_index, worker.pending.pop(env_index), ok, value))
    except (EOFError, OSError):
      return answers, False
    if answers:
      worker.deadline = time.monotonic() + self.timeout_s
    return answers, not worker.pending or worker.process.is_alive()

  def _death_reason(self, worker_id: int) -> str:
    process = self._workers[worker_id].process
    process.join(timeout=1)
    return f"died (exit code {process.exitcode})"

  def _fail_worker(self, worker_id: int, reason: str, drained: list[_Answer]) -> list[_Answer]:
    """Restarts a dead or hung worker; what it still owed fails, and so do the answers just read from it,
    whose state went down with the process."""
    owed = [(env_index, command) for env_index, command, _, _ in drained]
    owed += self._workers[worker_id].pending.items()
    self._faults[worker_id] = reason
    self._restart_worker(worker_id, reason)
    return [(env_index, command, False, f"env worker {reason}") for env_index, command in owed]


class TaskStream:
  """Tasks in a fixed order given by `seed`: each epoch is a fresh seeded permutation of the task
  list, so tasks repeat only across epochs. The position is plain state for checkpoints."""

  def __init__(self, task_ids: Sequence[str], seed: int = 0, shuffle: bool = True):
    if not task_ids:
      raise ValueError("TaskStream needs at least one task")
    self.task_ids = list(task_ids)
    self.seed = seed
    self.shuffle = shuffle
    self.epoch = 0
    self.position = 0
    self._order = self._epoch_order(0)

  def _epoch_order(self, epoch: int) -> list[str]:
    order = list(self.task_ids)
    if self.shuffle:
      random.Random(f"{self.seed}/{epoch}").shuffle(order)
    return order

  def next_tasks(self, count: int) -> list[str]:
    tasks = []
    while len(tasks) < count:
      if self.position == len(self._order):
        self.epoch += 1
        self.position = 0
        self._order = self._epoch_order(self.epoch)
      take = min(count - len(tasks), len(self._order) - self.position)
      tasks.extend(self._order[self.position : self.position + take])
      self.position += take
    return tasks

  def state_dict(self) -> dict[str, int]:
    return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_tasks": len(self.task_ids)}

  def load_state_dict(self, state: dict[str, int]) -> None:
    if int(state["num_tasks"]) != len(self.task_ids):
      raise ValueError(f"state is for {state['num_tasks']} tasks, this stream has {len(self.task_ids)}")
    self.seed = int(state["seed"])
    self.epoch = int(state["epoch"])
    self.position = int(state["position"])
    self._order = self._epoch_order(self.epoch)
