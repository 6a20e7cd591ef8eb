"""Agent side: golden prompts, response parsing, and rollouts with a scripted policy."""

from __future__ import annotations

import functools
import os
import re
import signal

import pytest

from opid_jax.agent import parsing, prompts, rollout
from opid_jax.agent.prompts import HistoryEntry
from opid_jax.envs.alfworld import AlfworldEnv, list_games, task_type_of
from opid_jax.envs.base import Env, ResetResult, StepResult
from opid_jax.envs.pool import EnvPool


@pytest.fixture(scope="module")
def tokenizer(chatml_tokenizer):
  return chatml_tokenizer


# ---------------------------------------------------------------- golden prompts

ALF_INTRO = (
  "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
  "a sinkbasin 1, and a towelholder 1.\n\nYour task is to: put a clean cloth in cabinet."
)

ALF_STEP0 = """\
You are an expert household agent acting in the ALFRED text world.
Your task is to: put a clean cloth in cabinet.
You have taken 0 steps so far.
You are now at step 1. Your current observation is: You are in the middle of a room. \
Looking quickly around you, you see a cabinet 1, a sinkbasin 1, and a towelholder 1.

Your task is to: put a clean cloth in cabinet.
The admissible actions in this situation are: ['go to cabinet 1', 'go to sinkbasin 1', 'inventory', 'look']

Now it's your turn to act: first reason step by step about the situation inside <think> </think> \
tags, then pick exactly one admissible action and write it inside <action> </action> tags."""

ALF_STEP6 = """\
You are an expert household agent acting in the ALFRED text world.
Your task is to: put a clean cloth in cabinet.
You have taken 6 step(s) so far. Your last 5 observations and the actions you took:
[Observation 2: 'obs 2', Action 2: 'act 2']
[Observation 3: 'obs 3', Action 3: 'act 3']
[Observation 4: 'obs 4', Action 4: 'act 4']
[Observation 5: 'obs 5', Action 5: 'act 5']
[Observation 6: 'obs 6', Action 6: 'act 6']
You are now at step 7. Your current observation is: You clean the cloth 1 using the sinkbasin 1.
The admissible actions in this situation are: ['go to cabinet 1', 'look']

Now it's your turn to act: first reason step by step about the situation inside <think> </think> \
tags, then pick exactly one admissible action and write it inside <action> </action> tags."""

SEARCH_TURN = (
  "Now it's your turn to respond: first reason inside <think> </think> tags, then do "
  "exactly one of two things: if some knowledge is missing or uncertain, write a query "
  "inside <search> </search> tags and the top results will come back inside "
  "<information> </information>; if you are confident, give a short final answer "
  "inside <answer> </answer> tags."
)

SEARCH_STEP0 = f"""\
You are an expert agent who answers questions step by step, searching the web when knowledge is missing.
Your question: who wrote the hobbit?
You have taken 0 steps so far.
You are now at step 1. Your current observation is: Question: who wrote the hobbit?
The actions available to you are: ['<search> query </search>', '<answer> final answer </answer>']

{SEARCH_TURN}"""

SEARCH_STEP2 = f"""\
You are an expert agent who answers questions step by step, searching the web when knowledge is missing.
Your question: who wrote the hobbit?
You have taken 2 step(s) so far. Your last 2 observations and the actions you took (search results \
are wrapped in <information> </information>):
[Observation 1: 'Question: who wrote the hobbit?', Action 1: '<search>hobbit author</search>']
[Observation 2: '<information>Doc 1(Title: The Hobbit) A novel.</information>', \
Action 2: '<search>tolkien</search>']
You are now at step 3. Your current observation is: <information>Doc 1(Title: J. R. R. Tolkien) \
An English writer.</information>
The actions available to you are: ['<search> query </search>', '<answer> final answer </answer>']

{SEARCH_TURN}"""


def test_alfworld_prompt_step0_golden():
  text = prompts.render_alfworld_prompt(
    "put a clean cloth in cabinet.", ALF_INTRO, ["go to cabinet 1", "go to sinkbasin 1", "inventory", "look"], []
  )
  assert text == ALF_STEP0


def test_alfworld_prompt_later_step_golden_keeps_last_k():
  history = [HistoryEntry(f"obs {n}", f"act {n}") for n in range(1, 7)]
  text = prompts.render_alfworld_prompt(
    "put a clean cloth in cabinet.",
    "You clean the cloth 1 using the sinkbasin 1.",
    ["go to cabinet 1", "look"],
    history,
    history_length=5,
  )
  assert text == ALF_STEP6
  assert text.splitlines()[-1].startswith(prompts.TURN_ANCHOR)


def test_search_prompts_golden():
  step0 = prompts.render_search_prompt("who wrote the hobbit?", "Question: who wrote the hobbit?", [], [])
  assert step0 == SEARCH_STEP0
  history = [
    HistoryEntry("Question: who wrote the hobbit?", "<search>hobbit author</search>"),
    HistoryEntry("<information>Doc 1(Title: The Hobbit) A novel.</information>", "<search>tolkien</search>"),
  ]
  step2 = prompts.render_search_prompt(
    "who wrote the hobbit?", "<information>Doc 1(Title: J. R. R. Tolkien) An English writer.</information>", [], history
  )
  assert step2 == SEARCH_STEP2


def test_chat_template_and_left_truncation(tokenizer):
  chat = prompts.to_chat_text(tokenizer, "hello")
  assert chat == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
  ids = prompts.tokenize_prompt(tokenizer, chat)
  assert tokenizer.decode(ids) == chat
  assert prompts.tokenize_prompt(tokenizer, chat, max_tokens=3) == ids[-3:]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
  "response, action, valid",
  [
    ("<think>the desk</think>\n<action>Go To Desk 1</action>", "go to desk 1", True),
    ("<think>x</think><action>look</action> then I will open it", "look", True),
    ("<think>x</think><action>look</action><action>inventory</action>", "look", True),
    ("<action>look</action>", "look", False),  # no think block
    ("<think>hmm <action>look</action>", "look", False),  # unclosed think
    ("<think>x</think>\nI will go to desk 1", "i will go to desk 1", False),  # no action tags
    ("<think>x</think><action>open drawer 1", "open drawer 1", False),  # unclosed action
    ("<think>x</think><action>  </action>", "", False),  # empty action
    ("<think>x</think><action><action>look</action></action>", "look", False),  # nested
    ("<think>我想看看</think><action>look</action>", "look", False),  # CJK
    ("<think>x</think><action>take 苹果</action>", "take 苹果", False),
    ("", "", False),
  ],
)
def test_parse_text_action(response, action, valid):
  parsed = parsing.parse_text_action(response)
  assert (parsed.action, parsed.valid) == (action, valid)
  assert bool(parsed.problem) != valid


@pytest.mark.parametrize(
  "response, action, valid",
  [
    ("<think>x</think><search> capital of\n peru </search>", "<search>capital of peru</search>", True),
    ("<think>x</think><answer>Lima</answer>", "<answer>Lima</answer>", True),
    # Search-R1 reads the first complete tag pair of the turn: the first answer counts.
    ("<think>x</think><answer>Cusco</answer> no, <answer>Lima</answer>", "<answer>Cusco</answer>", True),
    ("<think>x</think><search>q</search> and <answer>a</answer>", "<search>q</search>", False),
    ("<think>x</think><answer>a</answer> or <search>q</search>", "<answer>a</answer>", False),
    ("<think>x</think> Lima", "", False),
    ("<answer>Lima</answer>", "<answer>Lima</answer>", False),
    ("<think>x</think><search></search>", "<search></search>", False),
    # Search-R1 cuts the turn at the first </search>: it searches (still invalid: both blocks are present).
    ("<think>x</think><answer><search>q</search></answer>", "<search>q</search>", False),
    ("<think>利马</think><answer>Lima</answer>", "<answer>Lima</answer>", False),
  ],
)
def test_parse_search_response(response, action, valid):
  parsed = parsing.parse_search_response(response)
  assert (parsed.action, parsed.valid) == (action, valid)


# ---------------------------------------------------------------- rollout


class StairsEnv(Env):
  """Won after `task_id` steps of "up"; any other action keeps the agent where it is."""

  def reset(self, task_id: str) -> ResetResult:
    self.left = int(task_id)
    return ResetResult(f"{self.left} stairs to go. Your task is to: climb.", "climb.", "stairs", ["up", "wait"])

  def step(self, action: str) -> StepResult:
    self.left -= action == "up"
    return StepResult(
      f"{self.left} stairs to go.",
      10.0 if self.left == 0 else 0.0,
      self.left == 0,
      self.left == 0,
      ["up", "wait"],
      info={"truncated": False},
    )


def respond(tokenizer, text):
  ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
  return ids, [-0.25] * len(ids)


class WalkthroughPolicy:
  """Replays each game's expert plan, reading the task and step number off the prompt; responses
  at odd batch positions omit the <think> block (invalid but still acted on)."""

  def __init__(self, tokenizer, plans_by_task):
    self.tokenizer = tokenizer
    self.plans_by_task = plans_by_task
    self.calls = []

  def __call__(self, prompt_ids):
    self.calls.append(len(prompt_ids))
    responses = []
    for position, ids in enumerate(prompt_ids):
      text = self.tokenizer.decode(ids)
      task = re.search(r"Your task is to: (.*)", text).group(1)
      step = int(re.search(r"You are now at step (\d+)", text).group(1))
      action = self.plans_by_task[task][step - 1]
      think = "" if position % 2 else "<think>Follow the plan.</think>"
      responses.append(respond(self.tokenizer, f"{think}<action>{action}</action>"))
    return responses


def test_rollout_on_real_alfworld_games(tokenizer, alfworld_games):
  games = list_games(alfworld_games, "valid_seen")[:2]
  with EnvPool(functools.partial(AlfworldEnv, alfworld_games), num_envs=4, num_workers=2) as pool:
    plans = {}
    for reset, hindsight in zip(pool.reset(list(enumerate(games))), pool.hindsight([0, 1])):
      plans[reset.task] = hindsight.expert_actions
    assert len(plans) == 2
    policy = WalkthroughPolicy(tokenizer, plans)
    trajectories = rollout.run_groups(
      pool, policy, tokenizer, games, group_size=2, agent=rollout.alfworld_agent(), first_group_id=5, first_traj_id=10
    )
  assert [(t.group_id, t.traj_id, t.task_id) for t in trajectories] == [
    (5, 10, games[0]),
    (5, 11, games[0]),
    (6, 12, games[1]),
    (6, 13, games[1]),
  ]
  assert policy.calls[0] == 4 and max(policy.calls) == 4  # one batched call per turn
  for traj in trajectories:
    plan = plans[traj.task]
    assert traj.won and traj.episode_return == 10.0 and not traj.failure_reason
    assert traj.hindsight.expert_actions == plan
    assert traj.task_type == task_type_of(traj.task_id)
    assert [s.action for s in traj.steps] == list(plan)
    assert [s.index for s in traj.steps] == list(range(len(plan)))
    assert [s.reward for s in traj.steps] == [0.0] * (len(plan) - 1) + [10.0]
    assert [s.done for s in traj.steps] == [False] * (len(plan) - 1) + [True]
    first = traj.steps[0]
    assert first.observation.endswith("Your task is to: " + traj.task)
    assert first.prompt_text.startswith("<|im_start|>user\nYou are an expert household agent")
    assert first.prompt_ids == tokenizer(first.prompt_text, add_special_tokens=False)["input_ids"]
    assert first.response_ids[-1] == tokenizer.eos_token_id
    assert len(first.sampled_logprobs) == len(first.response_ids)
    assert "<|im_end|>" not in first.response_text and first.response_text.endswith("</action>")
    assert first.user_prompt_text == prompts.render_alfworld_prompt(
      traj.task, first.observation, first.admissible_actions, []
    )
    assert first.prompt_text == prompts.to_chat_text(tokenizer, first.user_prompt_text)
    if len(traj.steps) > 1:
      second = traj.steps[1]
      assert f"[Observation 1: '{first.observation}', Action 1: '{plan[0]}']" in second.prompt_text
      assert second.observation in second.prompt_text
  # odd batch positions were malformed at step 0 (members 2 and 4 of the first turn)
  assert [t.steps[0].valid for t in trajectories] == [True, False, True, False]
  assert trajectories[1].info["format_problems"][0] == "missing <think></think> block"


def test_rollout_runs_waves_and_survives_a_killed_worker(tokenizer):
  with EnvPool(StairsEnv, num_envs=4, num_workers=2) as pool:
    calls = []

    def policy(prompt_ids):
      calls.append(len(prompt_ids))
      if len(calls) == 2:
        os.kill(pool.worker_pids()[0], signal.SIGKILL)  # holds envs 0 and 2, mid-episode
      return [respond(tokenizer, "<think>climb</think><action>up</action>") for _ in prompt_ids]

    trajectories = rollout.run_groups(pool, policy, tokenizer, ["3", "3"], group_size=2, agent=rollout.alfworld_agent())
    failed = [t for t in trajectories if t.failure_reason]
    assert [t.traj_id for t in failed] == [0, 2]
    assert all("died" in t.failure_reason and not t.won and t.length == 2 for t in failed)
    assert all(t.won and t.length == 3 for t in trajectories if not t.failure_reason)

    # the worker is back: a second run (three tasks in two waves of four envs) is clean
    trajectories = rollout.run_groups(
      pool, policy, tokenizer, ["1", "2", "3"], group_size=2, agent=rollout.alfworld_agent(), max_prompt_tokens=40
    )
    assert [t.length for t in trajectories] == [1, 1, 2, 2, 3, 3]
    assert all(t.won and not t.failure_reason for t in trajectories)
    assert all(len(s.prompt_ids) == 40 for t in trajectories for s in t.steps)
    assert pool.restarts == 1


def test_rollout_caps_episode_length(tokenizer):
  with EnvPool(StairsEnv, num_envs=2, num_workers=1) as pool:
    wait = lambda prompt_ids: [respond(tokenizer, "<think>rest</think><action>wait</action>") for _ in prompt_ids]
    trajectories = rollout.run_groups(
      pool, wait, tokenizer, ["2"], group_size=2, agent=rollout.alfworld_agent(max_steps=3)
    )
  assert all(t.length == 3 and not t.won and t.info["truncated"] for t in trajectories)
  assert all(t.steps[-1].done for t in trajectories)
