"""Routing (which skill each step gets) and injection (the augmented prompt text), golden cases."""

from __future__ import annotations

import pytest

from opid_jax.agent import prompts as agent_prompts, rollout
from opid_jax.skills import routing
from opid_jax.skills.records import SkillSet
from opid_jax.skills.routing import (
  NO_SKILL,
  ROUTING_MODES,
  RoutedSkill,
  inject_skill,
  route_step,
  route_trajectory,
  teacher_prompts,
)

SKILLS = SkillSet(
  "summary",
  "Heat the egg in the microwave before placing it.",
  {1: "Open the fridge 1 now.", 3: "Take the egg 1 from the fridge 1."},
)
EP = SKILLS.episode_skill
S1, S3 = SKILLS.step_skills[1], SKILLS.step_skills[3]

EXPECTED_ROUTES = {
  "critical_first": [
    RoutedSkill(EP),
    RoutedSkill(step_skill=S1),
    RoutedSkill(EP),
    RoutedSkill(step_skill=S3),
    RoutedSkill(EP),
  ],
  "episode_only": [RoutedSkill(EP)] * 5,
  "step_only": [NO_SKILL, RoutedSkill(step_skill=S1), NO_SKILL, RoutedSkill(step_skill=S3), NO_SKILL],
  "superimpose": [RoutedSkill(EP), RoutedSkill(EP, S1), RoutedSkill(EP), RoutedSkill(EP, S3), RoutedSkill(EP)],
  "additive": [RoutedSkill(EP), RoutedSkill(EP, S1), RoutedSkill(EP), RoutedSkill(EP, S3), RoutedSkill(EP)],
  "none": [NO_SKILL] * 5,
}


@pytest.mark.parametrize("mode", ROUTING_MODES)
def test_route_every_mode(mode):
  routed = route_trajectory(SKILLS, 5, mode)
  assert routed == EXPECTED_ROUTES[mode]
  assert [r.has_skill for r in routed] == [r != NO_SKILL for r in EXPECTED_ROUTES[mode]]


@pytest.mark.parametrize("mode", ROUTING_MODES)
@pytest.mark.parametrize("skills", [None, SkillSet("s", "", {0: "orphan step skill"})])
def test_no_usable_skill_set_means_no_skill_anywhere(mode, skills):
  assert route_trajectory(skills, 3, mode) == [NO_SKILL] * 3


def test_unknown_mode():
  with pytest.raises(ValueError, match="routing mode"):
    route_step(SKILLS, 0, "critical_last")


ALFWORLD_PROMPT = (
  "You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: heat some egg "
  "and put it in countertop.\n"
  "Prior to this step, you have already taken 1 step(s). Below are the most recent 1 observations and "
  "the corresponding actions you took: [Observation 1: 'You arrive at fridge 1. The fridge 1 is "
  "closed.', Action 1: 'go to fridge 1']\n"
  "You are now at step 2 and your current observation is: You arrive at fridge 1. The fridge 1 is "
  "closed.\n"
  "Your admissible actions of the current situation are: ['open fridge 1', 'look', 'inventory'].\n"
  "\n"
  "Now it's your turn to take an action.\n"
  "You should first reason step-by-step about the current situation, inside <think> </think> tags.\n"
  "Then choose an admissible action and present it within <action> </action> tags."
)

EPISODE_SECTION = (
  "**Episode skill (hindsight from a finished attempt at this task)**\n"
  "Let this lesson guide the whole episode, including the action you choose now:\n"
  "[Heat the egg in the microwave before placing it.]"
)
STEP_SECTION = (
  "**Step skill (hindsight for this exact step)**\n"
  "Follow this advice when you choose the action for the current step:\n"
  "[Open the fridge 1 now.]"
)

ALFWORLD_WITH_EPISODE_SKILL = (
  "You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: heat some egg "
  "and put it in countertop.\n"
  "\n" + EPISODE_SECTION + "\n"
  "\n"
  "Prior to this step, you have already taken 1 step(s). Below are the most recent 1 observations and "
  "the corresponding actions you took: [Observation 1: 'You arrive at fridge 1. The fridge 1 is "
  "closed.', Action 1: 'go to fridge 1']\n"
  "You are now at step 2 and your current observation is: You arrive at fridge 1. The fridge 1 is "
  "closed.\n"
  "Your admissible actions of the current situation are: ['open fridge 1', 'look', 'inventory'].\n"
  "\n"
  "Now it's your turn to take an action.\n"
  "You should first reason step-by-step about the current situation, inside <think> </think> tags.\n"
  "Then choose an admissible action and present it within <action> </action> tags."
)

ALFWORLD_WITH_STEP_SKILL = (
  "You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: heat some egg "
  "and put it in countertop.\n"
  "Prior to this step, you have already taken 1 step(s). Below are the most recent 1 observations and "
  "the corresponding actions you took: [Observation 1: 'You arrive at fridge 1. The fridge 1 is "
  "closed.', Action 1: 'go to fridge 1']\n"
  "You are now at step 2 and your current observation is: You arrive at fridge 1. The fridge 1 is "
  "closed.\n"
  "Your admissible actions of the current situation are: ['open fridge 1', 'look', 'inventory'].\n"
  "\n" + STEP_SECTION + "\n"
  "\n"
  "Now it's your turn to take an action.\n"
  "You should first reason step-by-step about the current situation, inside <think> </think> tags.\n"
  "Then choose an admissible action and present it within <action> </action> tags."
)


def test_inject_episode_skill_after_the_task_line():
  assert inject_skill(ALFWORLD_PROMPT, RoutedSkill(EP)) == ALFWORLD_WITH_EPISODE_SKILL


def test_inject_step_skill_before_the_final_instruction():
  assert inject_skill(ALFWORLD_PROMPT, RoutedSkill(step_skill=S1)) == ALFWORLD_WITH_STEP_SKILL


def test_superimpose_inserts_both_sections():
  both = inject_skill(ALFWORLD_PROMPT, RoutedSkill(EP, S1))
  expected = ALFWORLD_WITH_EPISODE_SKILL.replace(
    "'inventory'].\n\nNow it's your turn", "'inventory'].\n\n" + STEP_SECTION + "\n\nNow it's your turn"
  )
  assert both == expected
  assert both.index(EPISODE_SECTION) < both.index(STEP_SECTION) < both.index("Now it's your turn")


def test_no_skill_leaves_the_prompt_alone():
  assert inject_skill(ALFWORLD_PROMPT, NO_SKILL) is ALFWORLD_PROMPT


SEARCH_PROMPT = (
  "Answer the given question. Reason inside <think> and </think> every time you get new information.\n"
  "Your question: who wrote the novel the old man and the sea?\n"
  "Now it's your turn to respond for the current step."
)


def test_inject_with_the_question_anchor():
  assert inject_skill(
    SEARCH_PROMPT, RoutedSkill("Search the novel's title first.", "Answer <answer>Ernest Hemingway</answer>.")
  ) == (
    "Answer the given question. Reason inside <think> and </think> every time you get new information.\n"
    "Your question: who wrote the novel the old man and the sea?\n"
    "\n"
    "**Episode skill (hindsight from a finished attempt at this task)**\n"
    "Let this lesson guide the whole episode, including the action you choose now:\n"
    "[Search the novel's title first.]\n"
    "\n"
    "**Step skill (hindsight for this exact step)**\n"
    "Follow this advice when you choose the action for the current step:\n"
    "[Answer <answer>Ernest Hemingway</answer>.]\n"
    "\n"
    "Now it's your turn to respond for the current step."
  )


def test_episode_anchor_is_the_first_task_line():
  step0 = (
    "You are an expert agent. Your task is to: cool a mug.\n"
    "Your current observation is: You are in a room.\n\nYour task is to: cool a mug.\n"
    "Now it's your turn to take an action."
  )
  assert inject_skill(step0, RoutedSkill("Use the fridge.")) == (
    "You are an expert agent. Your task is to: cool a mug.\n"
    "\n"
    "**Episode skill (hindsight from a finished attempt at this task)**\n"
    "Let this lesson guide the whole episode, including the action you choose now:\n"
    "[Use the fridge.]\n"
    "\n"
    "Your current observation is: You are in a room.\n\nYour task is to: cool a mug.\n"
    "Now it's your turn to take an action."
  )


UNANCHORED = "Observation: a quiet room.\nPick one action."


def test_fallbacks_when_anchors_are_missing():
  assert inject_skill(UNANCHORED, RoutedSkill("Multi\n  line   skill.")) == (
    "**Episode skill (hindsight from a finished attempt at this task)**\n"
    "Let this lesson guide the whole episode, including the action you choose now:\n"
    "[Multi line skill.]\n"
    "\n"
    "Observation: a quiet room.\nPick one action."
  )
  assert inject_skill(UNANCHORED, RoutedSkill(step_skill="Look first.")) == (
    "Observation: a quiet room.\nPick one action.\n"
    "\n"
    "**Step skill (hindsight for this exact step)**\n"
    "Follow this advice when you choose the action for the current step:\n"
    "[Look first.]"
  )
  assert inject_skill(UNANCHORED + "\n", RoutedSkill("E.", "S.")) == (
    "**Episode skill (hindsight from a finished attempt at this task)**\n"
    "Let this lesson guide the whole episode, including the action you choose now:\n"
    "[E.]\n"
    "\n"
    "Observation: a quiet room.\nPick one action.\n"
    "\n"
    "**Step skill (hindsight for this exact step)**\n"
    "Follow this advice when you choose the action for the current step:\n"
    "[S.]\n"
  )


def test_teacher_prompts_for_a_trajectory():
  prompts = [f"Your task is to: t.\nstep {t}\nNow it's your turn." for t in range(3)]
  skills = SkillSet("s", "E.", {1: "S."})
  out = teacher_prompts(prompts, skills, "step_only")
  assert out[0] == [] and out[2] == []
  step_prompt = (
    "Your task is to: t.\nstep 1\n\n**Step skill (hindsight for this exact step)**\n"
    "Follow this advice when you choose the action for the current step:\n[S.]\n\n"
    "Now it's your turn."
  )
  assert out[1] == [step_prompt]
  assert teacher_prompts(prompts, None, "critical_first") == [[], [], []]
  assert all(len(p) == 1 for p in teacher_prompts(prompts, skills, "critical_first"))
  # additive: the episode skill and the step skill in two separate prompts (only the episode one without a step skill)
  additive = teacher_prompts(prompts, skills, "additive")
  assert [len(p) for p in additive] == [1, 2, 1]
  assert additive[1] == [inject_skill(prompts[1], RoutedSkill("E.")), step_prompt]
  assert teacher_prompts(prompts, skills, "superimpose")[1] == [inject_skill(prompts[1], RoutedSkill("E.", "S."))]


# ---------------------------------------------------------------- prompts the agent really renders


def test_the_router_uses_the_agents_anchors():
  assert routing.EPISODE_ANCHORS is agent_prompts.EPISODE_ANCHORS
  assert agent_prompts.EPISODE_ANCHORS == (agent_prompts.TASK_ANCHOR, agent_prompts.QUESTION_ANCHOR)
  assert routing.STEP_ANCHOR is agent_prompts.TURN_ANCHOR


ALFWORLD_EPISODE = (
  "heat some egg and put it in countertop.",
  [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 2, a cabinet 1, a countertop 1, "
    "a fridge 1, a microwave 1, and a sinkbasin 1.\n\nYour task is to: heat some egg and put it in countertop.",
    "You arrive at fridge 1. The fridge 1 is closed.",
    "You open the fridge 1. The fridge 1 is open. In it, you see a egg 1, and a lettuce 2.",
  ],
  [["go to fridge 1", "go to microwave 1", "look"], ["open fridge 1", "look"], ["take egg 1 from fridge 1"]],
  ["go to fridge 1", "open fridge 1", "take egg 1 from fridge 1"],
)
WEBSHOP_EPISODE = (
  "i need a red ceramic mug under 20 dollars",
  [
    "WebShop [SEP] Instruction: [SEP] i need a red ceramic mug under 20 dollars [SEP] Search",
    "Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] B07RED0001 [SEP] Red Ceramic Mug, 12 oz "
    "[SEP] $12.99 [SEP] B07BLU0002 [SEP] Blue Travel Mug [SEP] $18.50",
    "Back to Search [SEP] < Prev [SEP] color [SEP] red [SEP] blue [SEP] Red Ceramic Mug, 12 oz [SEP] "
    "Price: $12.99 [SEP] Buy Now",
  ],
  [["search[<your query>]"], ["click[b07red0001]", "click[next >]"], ["click[red]", "click[buy now]"]],
  ["search[red ceramic mug]", "click[b07red0001]", "click[buy now]"],
)
SEARCH_EPISODE = (
  "who wrote the novel the old man and the sea?",
  [
    "Question: who wrote the novel the old man and the sea?",
    "<information>Doc 1(Title: The Old Man and the Sea) A short novel written in 1951 in Cuba.</information>",
    "<information>Doc 1(Title: Ernest Hemingway) An American novelist and short-story writer.</information>",
  ],
  [[], [], []],
  ["<search>old man and the sea</search>", "<search>hemingway</search>", "<answer>Ernest Hemingway</answer>"],
)
EPISODES = {
  "alfworld": (rollout.alfworld_agent(), ALFWORLD_EPISODE),
  "alfworld_action": (rollout.alfworld_agent(response_format="action"), ALFWORLD_EPISODE),  # one line per action
  "webshop": (rollout.webshop_agent(), WEBSHOP_EPISODE),
  "search": (rollout.search_agent(), SEARCH_EPISODE),
}


def agent_rendered(env_name: str) -> list[str]:
  """The user prompts of one episode, rendered as agent/rollout.py renders them (`agent.render`)."""
  agent, (task, observations, admissible, actions) = EPISODES[env_name]
  history, out = [], []
  for observation, allowed, action in zip(observations, admissible, actions):
    out.append(agent.render(task, observation, allowed, history, agent.history_length))
    history.append(agent_prompts.HistoryEntry(observation, action))
  return out


def expected_injection(text: str, routed: RoutedSkill) -> str:
  """By hand, from the documented contract: the episode section is its own paragraph right after the first line
  holding the task / question; the step section its own paragraph right before the last line starting
  "Now it's your turn"; nothing else changes."""
  first_task = min(text.index(a) for a in ("Your task is to: ", "Your question: ") if a in text)
  after_task = text.index("\n", first_task) + 1
  turn = text.rindex("\nNow it's your turn") + 1
  assert text[:turn].endswith("\n\n")  # the rendered layout has a blank line before the final instruction
  out = text
  if routed.step_skill:
    section = "\n".join(routing.skill_section(routing.STEP_HEADER, routing.STEP_USAGE, routed.step_skill))
    out = out[:turn] + section + "\n\n" + out[turn:]
  if routed.episode_skill:
    section = "\n".join(routing.skill_section(routing.EPISODE_HEADER, routing.EPISODE_USAGE, routed.episode_skill))
    out = out[:after_task] + "\n" + section + "\n\n" + out[after_task:]
  return out


RENDERED_SKILLS = SkillSet(
  "summary",
  "Find the target first, then act on it.",
  {1: "Take the next step toward the target now.", 2: "Finish the task with this action."},
)


@pytest.mark.parametrize("mode", ROUTING_MODES)
@pytest.mark.parametrize("env_name", sorted(EPISODES))
def test_skills_land_in_prompts_the_agent_rendered(env_name, mode):
  texts = agent_rendered(env_name)
  routed = route_trajectory(RENDERED_SKILLS, len(texts), mode)
  teachers = teacher_prompts(texts, RENDERED_SKILLS, mode)
  assert [bool(t) for t in teachers] == [r.has_skill for r in routed]
  for text, r, prompts in zip(texts, routed, teachers):
    if mode == "additive":  # each part on its own, checked like the single-skill modes
      parts = [RoutedSkill(r.episode_skill), RoutedSkill(step_skill=r.step_skill)]
      assert prompts == [expected_injection(text, p) for p in parts if p.has_skill]
      continue
    if not prompts:
      continue
    (got,) = prompts
    assert got == expected_injection(text, r)
    lines, got_lines = text.split("\n"), got.split("\n")
    assert got_lines[:2] == lines[:2] and got_lines[-1] == lines[-1]  # role, task, final instruction kept
    assert got_lines[1].startswith(agent_prompts.EPISODE_ANCHORS) and lines[-1].startswith("Now it's your turn")
    if r.episode_skill:
      assert got_lines[2:7] == ["", routing.EPISODE_HEADER, routing.EPISODE_USAGE, f"[{r.episode_skill}]", ""]
    if r.step_skill:
      assert got_lines[-6:-1] == ["", routing.STEP_HEADER, routing.STEP_USAGE, f"[{r.step_skill}]", ""]
