"""Routing (which skill each step gets) and injection (the augmented prompt text), golden cases."""

from __future__ import annotations

import pytest

from opid_jax.skills.records import SkillSet
from opid_jax.skills.routing import (NO_SKILL, ROUTING_MODES, RoutedSkill, augmented_prompts,
                                     inject_skill, route_step, route_trajectory)

SKILLS = SkillSet("summary", "Heat the egg in the microwave before placing it.",
                  {1: "Open the fridge 1 now.", 3: "Take the egg 1 from the fridge 1."})
EP = SKILLS.episode_skill
S1, S3 = SKILLS.step_skills[1], SKILLS.step_skills[3]

EXPECTED_ROUTES = {
    "critical_first": [RoutedSkill(EP), RoutedSkill(step_skill=S1), RoutedSkill(EP),
                       RoutedSkill(step_skill=S3), RoutedSkill(EP)],
    "episode_only": [RoutedSkill(EP)] * 5,
    "step_only": [NO_SKILL, RoutedSkill(step_skill=S1), NO_SKILL, RoutedSkill(step_skill=S3), NO_SKILL],
    "superimpose": [RoutedSkill(EP), RoutedSkill(EP, S1), RoutedSkill(EP), RoutedSkill(EP, S3),
                    RoutedSkill(EP)],
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
    "Then choose an admissible action and present it within <action> </action> tags.")

EPISODE_SECTION = (
    "**Episode skill (hindsight from a finished attempt at this task)**\n"
    "Let this lesson guide the whole episode, including the action you choose now:\n"
    "[Heat the egg in the microwave before placing it.]")
STEP_SECTION = (
    "**Step skill (hindsight for this exact step)**\n"
    "Follow this advice when you choose the action for the current step:\n"
    "[Open the fridge 1 now.]")

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
    "Then choose an admissible action and present it within <action> </action> tags.")

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
    "Then choose an admissible action and present it within <action> </action> tags.")


def test_inject_episode_skill_after_the_task_line():
  assert inject_skill(ALFWORLD_PROMPT, RoutedSkill(EP)) == ALFWORLD_WITH_EPISODE_SKILL


def test_inject_step_skill_before_the_final_instruction():
  assert inject_skill(ALFWORLD_PROMPT, RoutedSkill(step_skill=S1)) == ALFWORLD_WITH_STEP_SKILL


def test_superimpose_inserts_both_sections():
  both = inject_skill(ALFWORLD_PROMPT, RoutedSkill(EP, S1))
  expected = ALFWORLD_WITH_EPISODE_SKILL.replace(
      "'inventory'].\n\nNow it's your turn", "'inventory'].\n\n" + STEP_SECTION + "\n\nNow it's your turn")
  assert both == expected
  assert both.index(EPISODE_SECTION) < both.index(STEP_SECTION) < both.index("Now it's your turn")


def test_no_skill_leaves_the_prompt_alone():
  assert inject_skill(ALFWORLD_PROMPT, NO_SKILL) is ALFWORLD_PROMPT


SEARCH_PROMPT = (
    "Answer the given question. Reason inside <think> and </think> every time you get new information.\n"
    "Your question: who wrote the novel the old man and the sea?\n"
    "Now it's your turn to respond for the current step.")


def test_inject_with_the_question_anchor():
  assert inject_skill(SEARCH_PROMPT, RoutedSkill("Search the novel's title first.",
                                                 "Answer <answer>Ernest Hemingway</answer>.")) == (
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
      "Now it's your turn to respond for the current step.")


def test_episode_anchor_is_the_first_task_line():
  step0 = ("You are an expert agent. Your task is to: cool a mug.\n"
           "Your current observation is: You are in a room.\n\nYour task is to: cool a mug.\n"
           "Now it's your turn to take an action.")
  assert inject_skill(step0, RoutedSkill("Use the fridge.")) == (
      "You are an expert agent. Your task is to: cool a mug.\n"
      "\n"
      "**Episode skill (hindsight from a finished attempt at this task)**\n"
      "Let this lesson guide the whole episode, including the action you choose now:\n"
      "[Use the fridge.]\n"
      "\n"
      "Your current observation is: You are in a room.\n\nYour task is to: cool a mug.\n"
      "Now it's your turn to take an action.")


UNANCHORED = "Observation: a quiet room.\nPick one action."


def test_fallbacks_when_anchors_are_missing():
  assert inject_skill(UNANCHORED, RoutedSkill("Multi\n  line   skill.")) == (
      "**Episode skill (hindsight from a finished attempt at this task)**\n"
      "Let this lesson guide the whole episode, including the action you choose now:\n"
      "[Multi line skill.]\n"
      "\n"
      "Observation: a quiet room.\nPick one action.")
  assert inject_skill(UNANCHORED, RoutedSkill(step_skill="Look first.")) == (
      "Observation: a quiet room.\nPick one action.\n"
      "\n"
      "**Step skill (hindsight for this exact step)**\n"
      "Follow this advice when you choose the action for the current step:\n"
      "[Look first.]")
  assert inject_skill(UNANCHORED + "\n", RoutedSkill("E.", "S.")) == (
      "**Episode skill (hindsight from a finished attempt at this task)**\n"
      "Let this lesson guide the whole episode, including the action you choose now:\n"
      "[E.]\n"
      "\n"
      "Observation: a quiet room.\nPick one action.\n"
      "\n"
      "**Step skill (hindsight for this exact step)**\n"
      "Follow this advice when you choose the action for the current step:\n"
      "[S.]\n")


def test_augmented_prompts_for_a_trajectory():
  prompts = [f"Your task is to: t.\nstep {t}\nNow it's your turn." for t in range(3)]
  skills = SkillSet("s", "E.", {1: "S."})
  out = augmented_prompts(prompts, skills, "step_only")
  assert out[0] is None and out[2] is None
  assert out[1] == ("Your task is to: t.\nstep 1\n\n**Step skill (hindsight for this exact step)**\n"
                    "Follow this advice when you choose the action for the current step:\n[S.]\n\n"
                    "Now it's your turn.")
  assert augmented_prompts(prompts, None, "critical_first") == [None, None, None]
  assert all(p is not None for p in augmented_prompts(prompts, skills, "critical_first"))
