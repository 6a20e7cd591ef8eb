"""Runs groups of episodes to the end: each turn, one batched policy call over every running env.

The policy is any callable `policy(prompt_ids) -> [(response_ids, sampled_logprobs), ...]`, one pair
per prompt in order; the tokenizer (a Hugging Face tokenizer) applies the chat template and decodes.

Each Step's `prompt_text` is the chat-templated prompt its `prompt_ids` come from (held to `max_prompt_tokens`
per `truncation_side`: cut on the left, or refused with a PromptTooLong for "error"); its `user_prompt_text` is
the plain user message, which is what the skill router injects into before the template is applied again;
an agent with a `response_prefix` (the `action` format) ends every prompt with it, and its Step's
`response_text` starts with it (`response_ids` are the sampled tokens only);
`Trajectory.info["format_problems"]` maps the index of each invalid step to what was wrong with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from opid_jax.agent import parsing, prompts
from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.envs.base import ResetResult, StepResult
from opid_jax.envs.pool import EnvPool, failure_of

Policy = Callable[[list[list[int]]], list[tuple[list[int], list[float]]]]


@dataclasses.dataclass(frozen=True)
class AgentSpec:
  """How the agent talks to one kind of env."""

  render: Callable[..., str]  # (task, observation, admissible_actions, history, history_length)
  parse: Callable[[str], parsing.ParsedAction]  # the whole assistant turn, response_prefix included
  history_length: int
  max_steps: int  # a safety cap; the env normally ends the episode itself
  response_prefix: str = ""  # text the assistant turn is pre-filled with (after the chat template)
  # (user text, task type) -> the user text the student sees, e.g. with a skill from a bank (Skill-GRPO); None: as is
  student_prompt: Callable[[str, str], str] | None = None


RESPONSE_FORMATS = ("think_action", "action")  # rollout.response_format (ALFWorld and the counting env)


def alfworld_agent(history_length: int = 5, max_steps: int = 30, response_format: str = "think_action") -> AgentSpec:
  """`think_action`: `<think>...</think><action>...</action>`; `action`: the action alone, the assistant turn
  pre-filled with `<action>` (prompts.render_alfworld_action_prompt)."""
  if response_format == "action":
    return AgentSpec(
      prompts.render_alfworld_action_prompt,
      parsing.parse_action_response,
      history_length,
      max_steps,
      prompts.ACTION_PREFILL,
    )
  if response_format != "think_action":
    raise ValueError(f"unknown response format {response_format!r}; choose one of {RESPONSE_FORMATS}")
  return AgentSpec(prompts.render_alfworld_prompt, parsing.parse_text_action, history_length, max_steps)


def webshop_agent(history_length: int = 2, max_steps: int = 15) -> AgentSpec:
  return AgentSpec(prompts.render_webshop_prompt, parsing.parse_text_action, history_length, max_steps)


def search_agent(history_length: int = 4, max_steps: int = 4) -> AgentSpec:
  return AgentSpec(prompts.render_search_prompt, parsing.parse_search_response, history_length, max_steps)


@dataclasses.dataclass
class Episode:
  """Host-side state of one running episode."""

  env_index: int
  trajectory: Trajectory
  observation: str = ""
  admissible_actions: list[str] = dataclasses.field(default_factory=list)
  history: list[prompts.HistoryEntry] = dataclasses.field(default_factory=list)
  running: bool = True


def group_tasks(
  task_ids: Sequence[str], group_size: int, first_group_id: int = 0, first_traj_id: int = 0
) -> list[tuple[int, int, str]]:
  """`(group_id, traj_id, task_id)` for every episode: each task repeated `group_size` times."""
  episodes = []
  for g, task_id in enumerate(task_ids):
    for k in range(group_size):
      episodes.append((first_group_id + g, first_traj_id + g * group_size + k, task_id))
  return episodes


def run_groups(
  pool: EnvPool,
  policy: Policy,
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
) -> list[Trajectory]:
  """Plays `group_size` episodes of each task to the end; trajectories come back in
  `(group, member)` order. Episodes run in waves of at most `pool.num_envs`. `on_episode_end` (e.g. a progress
  bar) is called with each trajectory as soon as its episode ends."""
  episodes = group_tasks(task_ids, group_size, first_group_id, first_traj_id)
  trajectories = []
  for start in range(0, len(episodes), pool.num_envs):
    trajectories.extend(
      _run_wave(
        pool,
        policy,
        tokenizer,
        episodes[start : start + pool.num_envs],
        agent,
        max_prompt_tokens,
        truncation_side,
        enable_thinking,
        on_episode_end,
      )
    )
  return trajectories


def _run_wave(
  pool: EnvPool,
  policy: Policy,
  tokenizer: Any,
  wave: Sequence[tuple[int, int, str]],
  agent: AgentSpec,
  max_prompt_tokens: int | None,
  truncation_side: str,
  enable_thinking: bool,
  on_episode_end: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
  resets = pool.reset([(env_index, task_id) for env_index, (_, _, task_id) in enumerate(wave)])
  hindsights = pool.hindsight(list(range(len(wave))))
  episodes = [
    start_episode(env_index, episode, reset, hindsight)
    for env_index, (episode, reset, hindsight) in enumerate(zip(wave, resets, hindsights))
  ]
  ended = [e for e in episodes if not e.running]  # failed at reset
  while True:
    for e in ended:
      if on_episode_end is not None:
        on_episode_end(e.trajectory)
    running = [e for e in episodes if e.running]
    if not running:
      break
    _play_turn(pool, policy, tokenizer, running, agent, max_prompt_tokens, truncation_side, enable_thinking)
    ended = [e for e in running if not e.running]
  return [e.trajectory for e in episodes]


def start_episode(env_index: int, episode: tuple[int, int, str], reset: ResetResult, hindsight) -> Episode:
  """The host state of an episode whose env was just reset (not running when the reset failed)."""
  group_id, traj_id, task_id = episode
  trajectory = Trajectory(
    group_id=group_id,
    traj_id=traj_id,
    task_id=task_id,
    task=reset.task,
    task_type=reset.task_type,
    hindsight=hindsight,
    failure_reason=failure_of(reset),
    info={"truncated": False, "format_problems": {}},
  )
  return Episode(
    env_index, trajectory, reset.observation, list(reset.admissible_actions), running=not trajectory.failure_reason
  )


@dataclasses.dataclass(frozen=True)
class Turn:
  """One episode's prompt for its next step, in the three forms a Step records."""

  user_text: str
  prompt_text: str
  prompt_ids: list[int]


def next_turn(
  episode: Episode,
  agent: AgentSpec,
  tokenizer: Any,
  max_prompt_tokens: int | None,
  truncation_side: str,
  enable_thinking: bool,
) -> Turn:
  e = episode
  user_text = agent.render(e.trajectory.task, e.observation, e.admissible_actions, e.history, agent.history_length)
  if agent.student_prompt is not None:
    user_text = agent.student_prompt(user_text, e.trajectory.task_type)
  prompt_text = prompts.to_chat_text(tokenizer, user_text, enable_thinking) + agent.response_prefix
  return Turn(
    user_text, prompt_text, prompts.tokenize_prompt(tokenizer, prompt_text, max_prompt_tokens, truncation_side)
  )


def read_response(agent: AgentSpec, tokenizer: Any, response_ids: Sequence[int]) -> tuple[str, parsing.ParsedAction]:
  """The assistant turn's text (the response prefix included) and the action parsed from it."""
  text = agent.response_prefix + tokenizer.decode(list(response_ids), skip_special_tokens=True)
  return text, agent.parse(text)


def _play_turn(
  pool: EnvPool,
  policy: Policy,
  tokenizer: Any,
  running: list[Episode],
  agent: AgentSpec,
  max_prompt_tokens: int | None,
  truncation_side: str,
  enable_thinking: bool,
) -> None:
  turns = [next_turn(e, agent, tokenizer, max_prompt_tokens, truncation_side, enable_thinking) for e in running]
  samples = policy([t.prompt_ids for t in turns])
  if len(samples) != len(running):
    raise ValueError(f"policy returned {len(samples)} responses for {len(running)} prompts")
  responses = [read_response(agent, tokenizer, ids) for ids, _ in samples]
  results = pool.step([(e.env_index, parsed.action) for e, (_, parsed) in zip(running, responses)])
  for episode, turn, sample, (text, parsed), result in zip(running, turns, samples, responses, results):
    record_step(episode, turn, sample, text, parsed, result, agent)


def record_step(
  episode: Episode,
  turn: Turn,
  sample: tuple[list[int], list[float]],
  response_text: str,
  parsed: parsing.ParsedAction,
  result: StepResult,
  agent: AgentSpec,
) -> None:
  """Appends the step to the trajectory and moves the episode on (or ends it)."""
  max_steps, response_prefix = agent.max_steps, agent.response_prefix
  trajectory = episode.trajectory
  at_cap = trajectory.length + 1 >= max_steps
  done = result.done or at_cap
  response_ids, logprobs = sample
  trajectory.steps.append(
    Step(
      index=trajectory.length,
      observation=episode.observation,
      admissible_actions=episode.admissible_actions,
      prompt_text=turn.prompt_text,
      prompt_ids=turn.prompt_ids,
      response_ids=list(response_ids),
      response_text=response_text,
      action=parsed.action,
      valid=parsed.valid,
      reward=float(result.reward),
      done=done,
      sampled_logprobs=list(logprobs),
      user_prompt_text=turn.user_text,
      response_prefix=response_prefix,
    )
  )
  trajectory.episode_return += float(result.reward)
  if parsed.problem:
    trajectory.info["format_problems"][trajectory.length - 1] = parsed.problem
  reason = failure_of(result)
  if reason:
    trajectory.failure_reason = reason
  if done:
    trajectory.won = bool(result.won) and not reason
    trajectory.info["truncated"] = bool(result.info.get("truncated")) or (at_cap and not result.done)
    episode.running = False
  else:
    episode.history.append(prompts.HistoryEntry(episode.observation, parsed.action))
    episode.observation = result.observation
    episode.admissible_actions = list(result.admissible_actions)
