"""Episodes as pipelines: each episode moves on the moment its own response ends.

The generator (a continuous-batching engine behind `generation.policy.EnginePolicy`) decodes every waiting prompt
side by side; a finished response is parsed and its action sent to the env pool at once (`EnvPool.submit`),
and when the observation comes back the episode's next prompt joins the generator's queue. Env workers step while
the generator decodes other episodes. An env whose episode ended is reset for the next episode straight away, so
up to `pool.num_envs` episodes are in flight. Trajectories, and every record in them, are those of
`rollout.run_groups` (same order, same fields); under greedy decoding, the same trajectories.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Protocol, Sequence

from opid_jax.agent.rollout import (
  AgentSpec,
  Episode,
  group_tasks,
  next_turn,
  read_response,
  record_step,
  run_groups,
  start_episode,
)
from opid_jax.agent.trajectory import Trajectory
from opid_jax.envs.pool import EnvPool


class Generator(Protocol):
  """What the pipeline needs of a generator; handles carry `.tokens` and `.logprobs` once finished."""

  busy: bool

  def submit(self, prompt_ids: list[int], traj_id: int, step: int) -> Any: ...

  def step(self) -> list[Any]: ...  # the handles that finished


def run_groups_pipelined(
  pool: EnvPool,
  generator: Generator,
  tokenizer: Any,
  task_ids: Sequence[str],
  group_size: int,
  agent: AgentSpec,
  max_prompt_tokens: int | None = 2048,
  enable_thinking: bool = False,
  first_group_id: int = 0,
  first_traj_id: int = 0,
  truncation_side: str = "left",
  on_episode_end: Callable[[Trajectory], None] | None = None,
  stats: dict | None = None,
) -> list[Trajectory]:
  """`rollout.run_groups` through a continuous generator. `stats` (when given) gains env_busy_seconds (wall time
  with an env request in flight) and env_exposed_seconds (of it, time the loop waited on envs with nothing to
  decode); the difference is env time hidden behind decoding."""
  planned = group_tasks(task_ids, group_size, first_group_id, first_traj_id)
  waiting = collections.deque(planned)
  total = len(waiting)
  trajectories: dict[int, Trajectory] = {}
  starting: dict[int, tuple] = {}  # env -> (episode tuple, reset result once it came)
  episodes: dict[int, Episode] = {}  # env -> its running episode
  asked: dict[Any, tuple[Episode, Any]] = {}  # generator handle -> (episode, turn)
  acting: dict[int, tuple] = {}  # env -> (turn, sample, response text, parsed action) awaiting the env's answer
  busy_s = exposed_s = 0.0

  def start(env_index: int) -> None:
    if waiting:
      starting[env_index] = (waiting.popleft(), None)
      pool.submit("reset", env_index, starting[env_index][0][2])

  def ask(episode: Episode) -> None:
    turn = next_turn(episode, agent, tokenizer, max_prompt_tokens, truncation_side, enable_thinking)
    handle = generator.submit(turn.prompt_ids, episode.trajectory.traj_id, episode.trajectory.length)
    asked[handle] = (episode, turn)

  def end(episode: Episode) -> None:
    trajectories[episode.trajectory.traj_id] = episode.trajectory
    episodes.pop(episode.env_index, None)
    if on_episode_end is not None:
      on_episode_end(episode.trajectory)
    start(episode.env_index)

  def on_env(env_index: int, command: str, result) -> None:
    if command == "reset":
      starting[env_index] = (starting[env_index][0], result)
      pool.submit("hindsight", env_index, None)
    elif command == "hindsight":
      episode_tuple, reset = starting.pop(env_index)
      episode = start_episode(env_index, episode_tuple, reset, result)
      episodes[env_index] = episode
      ask(episode) if episode.running else end(episode)
    else:
      episode = episodes[env_index]
      turn, sample, text, parsed = acting.pop(env_index)
      record_step(episode, turn, sample, text, parsed, result, agent)
      ask(episode) if episode.running else end(episode)

  for env_index in range(min(pool.num_envs, total)):
    start(env_index)
  while len(trajectories) < total:
    began, envs_working = time.perf_counter(), pool.in_flight > 0
    if generator.busy:
      for handle in generator.step():
        episode, turn = asked.pop(handle)
        text, parsed = read_response(agent, tokenizer, handle.tokens)
        acting[episode.env_index] = (turn, (list(handle.tokens), list(handle.logprobs)), text, parsed)
        pool.submit("step", episode.env_index, parsed.action)
    elif pool.in_flight == 0:
      raise RuntimeError("pipelined rollout stalled: nothing to decode and no env request in flight")
    block = not generator.busy
    wait_began = time.perf_counter()
    for env_index, command, result in pool.receive(None if block else 0.0):
      on_env(env_index, command, result)
    if block:
      exposed_s += time.perf_counter() - wait_began
    if envs_working or block:
      busy_s += time.perf_counter() - began
  if stats is not None:
    stats["env_busy_seconds"] = stats.get("env_busy_seconds", 0.0) + busy_s
    stats["env_exposed_seconds"] = stats.get("env_exposed_seconds", 0.0) + exposed_s
  return [trajectories[traj_id] for _, traj_id, _ in planned]


def play_groups(pool: EnvPool, generator, tokenizer: Any, task_ids: Sequence[str], group_size: int, agent, **kw):
  """`group_size` episodes of each task with either kind of generator: a policy callable plays turn by turn
  (`rollout.run_groups`), a Generator (one with `submit`) pipelined; keywords as `rollout.run_groups`."""
  if hasattr(generator, "submit"):
    stats = getattr(generator, "stats", None)
    return run_groups_pipelined(pool, generator, tokenizer, task_ids, group_size, agent, stats=stats, **kw)
  return run_groups(pool, generator, tokenizer, task_ids, group_size, agent, **kw)
