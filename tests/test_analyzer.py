"""Analyzer: request text, lenient parsing, repair loop, and the four backends (offline, loopback HTTP)."""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time

import pytest
from shared_data import ALFWORLD_ARCHIVE_DEFAULT

from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.envs.base import Hindsight
from opid_jax.skills.analyzer import (
  AnalysisSpec,
  SkillParseError,
  SkillSet,
  build_analysis_messages,
  build_repair_messages,
  discounted_returns,
  parse_skill_set,
  requested_step_skills,
)
from opid_jax.skills.backends import AnalyzerAPIError, make_backend
from opid_jax.skills.records import AnalyzerStats
from tests.fault_server import FaultServer

ALFWORLD_ARCHIVE = os.environ.get("ALFWORLD_ARCHIVE") or ALFWORLD_ARCHIVE_DEFAULT
GAME_FOLDER = "/pick_clean_then_place_in_recep-Apple-None-DiningTable-19/"


# ---------------------------------------------------------------- trajectories built by hand


def make_step(index, observation, action, response=None, reward=0.0, valid=True):
  return Step(
    index=index,
    observation=observation,
    admissible_actions=[],
    prompt_text="",
    prompt_ids=[],
    response_ids=[],
    response_text=response or f"<think>Next I act.</think><action>{action}</action>",
    action=action,
    valid=valid,
    reward=reward,
  )


def trajectory_from(
  actions_and_results,
  first_observation,
  won,
  task="put a clean apple in diningtable",
  hindsight=Hindsight(),
  traj_id=0,
  invalid_steps=(),
  responses=None,
):
  steps = []
  observation = first_observation
  for t, (action, result) in enumerate(actions_and_results):
    last = t == len(actions_and_results) - 1
    response = (responses or {}).get(t)
    steps.append(
      make_step(t, observation, action, response, reward=10.0 if (won and last) else 0.0, valid=t not in invalid_steps)
    )
    observation = result
  return Trajectory(
    group_id=0,
    traj_id=traj_id,
    task_id="game",
    task=task,
    task_type="pick_clean",
    steps=steps,
    won=won,
    episode_return=10.0 if won else 0.0,
    hindsight=hindsight,
  )


ALFWORLD_START = (
  "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
  "you see a cabinet 1, a countertop 1, a diningtable 1, a fridge 1, a microwave 1, a sinkbasin 1, "
  "and a stoveburner 1.\n\nYour task is to: put a clean apple in diningtable."
)
RESULTS = {
  "go to microwave 1": "You arrive at microwave 1. The microwave 1 is closed.",
  "open microwave 1": "You open the microwave 1. The microwave 1 is open. In it, you see a apple 1.",
  "take apple 1 from microwave 1": "You pick up the apple 1 from the microwave 1.",
  "go to sinkbasin 1": "You arrive at sinkbasin 1. On the sinkbasin 1, you see nothing.",
  "clean apple 1 with sinkbasin 1": "You clean the apple 1 using the sinkbasin 1.",
  "go to diningtable 1": "You arrive at diningtable 1. On the diningtable 1, you see a bread 1.",
  "move apple 1 to diningtable 1": "You move the apple 1 to the diningtable 1.",
  "go to countertop 1": "You arrive at countertop 1. On the countertop 1, you see a knife 1.",
  "inventory": "You are carrying: a apple 1.",
}


@pytest.fixture(scope="module")
def walkthrough():
  """The expert walkthrough of one real ALFWorld game (the first pick_clean game in the archive)."""
  with tarfile.open(ALFWORLD_ARCHIVE) as archive:
    for member in archive:
      if GAME_FOLDER in member.name and member.name.endswith("game.tw-pddl"):
        return tuple(json.load(archive.extractfile(member))["walkthrough"])
  pytest.fail("game not found in the ALFWorld archive")


@pytest.fixture(scope="module")
def winning(walkthrough):
  actions = list(walkthrough[:3]) + ["inventory"] + list(walkthrough[3:])  # one detour at step 3
  return trajectory_from(
    [(a, RESULTS[a]) for a in actions], ALFWORLD_START, won=True, hindsight=Hindsight(expert_actions=walkthrough)
  )


@pytest.fixture(scope="module")
def losing(walkthrough):
  actions = [
    "go to countertop 1",
    "go to microwave 1",
    "take apple 1 from microwave 1",
    "open microwave 1",
    "take apple 1 from microwave 1",
    "go to diningtable 1",
    "move apple 1 to diningtable 1",
    "look around",
    "go to countertop 1",
  ]
  results = [RESULTS.get(a, "Nothing happens.") for a in actions]
  results[2] = "Nothing happens."
  return trajectory_from(
    list(zip(actions, results)),
    ALFWORLD_START,
    won=False,
    hindsight=Hindsight(expert_actions=walkthrough),
    traj_id=1,
    invalid_steps={7},
    responses={7: "I will look around the room."},
  )


def test_walkthrough_is_the_real_one(walkthrough):
  assert walkthrough == (
    "go to microwave 1",
    "open microwave 1",
    "take apple 1 from microwave 1",
    "go to sinkbasin 1",
    "clean apple 1 with sinkbasin 1",
    "go to diningtable 1",
    "move apple 1 to diningtable 1",
  )


SEARCH_QUESTION = "who wrote the novel the old man and the sea?"
SEARCH_START = f"Answer the question, searching when you need to. Your question: {SEARCH_QUESTION}"
HEMINGWAY_DOCS = (
  "<information>Doc 1(Title: The Old Man and the Sea) The Old Man and the Sea is a "
  "novella by Ernest Hemingway, written in Cuba in 1951.</information>"
)
OTHER_DOCS = "<information>Doc 1(Title: Sea) The sea is a large body of salt water.</information>"


def search_trajectory(final_answer: str | None, docs: str = HEMINGWAY_DOCS, searches: int = 1):
  steps = []
  observation = SEARCH_START
  for t in range(searches):
    steps.append(
      make_step(
        t,
        observation,
        "old man and the sea author",
        "<think>Search first.</think><search>old man and the sea author</search>",
      )
    )
    observation = docs
  if final_answer is not None:
    won = final_answer.lower() in ("ernest hemingway", "hemingway")
    steps.append(
      make_step(
        searches, observation, final_answer, f"<think>Done.</think><answer>{final_answer}</answer>", 1.0 if won else 0.0
      )
    )
  else:
    won = False
  return Trajectory(
    group_id=1,
    traj_id=7,
    task_id="nq-1",
    task=SEARCH_QUESTION,
    task_type="nq",
    steps=steps,
    won=won,
    episode_return=1.0 if won else 0.0,
    hindsight=Hindsight(gold_answers=("Ernest Hemingway", "Hemingway")),
  )


def tiny_trajectory(num_steps=4, traj_id=0):
  actions = [("go to microwave 1", RESULTS["go to microwave 1"])] * num_steps
  return trajectory_from(actions, ALFWORLD_START, won=False, traj_id=traj_id)


GOOD_REPLY = json.dumps(
  {
    "episode_summary": "Went to the wrong place.",
    "episode_skill": "Check the microwave first.",
    "step_skills": {"0": "Go to microwave 1.", "2": "Open microwave 1."},
  }
)
GOOD_SKILLS = SkillSet(
  "Went to the wrong place.", "Check the microwave first.", {0: "Go to microwave 1.", 2: "Open microwave 1."}
)


# ---------------------------------------------------------------- request text


def test_discounted_returns():
  assert discounted_returns([0.0, 0.0, 10.0], 0.95) == pytest.approx([9.025, 9.5, 10.0])
  assert discounted_returns([1.0, 0.0, 1.0], 0.5) == pytest.approx([1.25, 0.5, 1.0])
  assert discounted_returns([], 0.95) == []


def test_request_holds_task_outcome_and_every_step(winning, losing):
  spec = AnalysisSpec(max_step_skills=5)
  [user] = build_analysis_messages(winning, spec)  # one user message, no system message (as the official one)
  assert user["role"] == "user" and "one JSON object and nothing else" in user["content"]
  text = user["content"]
  assert "## Task\nput a clean apple in diningtable" in text
  assert "SUCCESS" in text and "workflow that worked" in text and "mistake" not in text
  for step in winning.steps:
    assert f"### Step {step.index} (G_{step.index} = " in text
    assert step.response_text in text
    assert step.observation in text
  assert f"(G_0 = {10 * 0.95**7:.4f})" in text and "(G_7 = 10.0000)" in text
  assert "at most 5 critical step(s)" in text and 'a key from "0" to "7"' in text
  assert '"episode_summary"' in text and '"episode_skill"' in text and '"step_skills"' in text

  failure_text = build_analysis_messages(losing, AnalysisSpec(max_step_skills=2))[0]["content"]
  assert "FAILURE" in failure_text and "mistake to avoid" in failure_text
  assert "at most 2 critical step(s)" in failure_text
  assert "(malformed output" in failure_text  # step 7 was invalid
  assert "(G_0 = 0.0000)" in failure_text


@pytest.mark.parametrize("num_steps, asked", [(3, 3), (9, 5), (5, 5), (1, 1)])
def test_request_asks_for_at_most_min_5_and_t_steps_indexed_from_0(num_steps, asked):
  trajectory = tiny_trajectory(num_steps)
  assert requested_step_skills(trajectory, AnalysisSpec()) == asked
  [message] = build_analysis_messages(trajectory, AnalysisSpec())
  text = message["content"]
  assert message["role"] == "user"
  assert f"at most {asked} critical step(s)" in text
  assert text.count("at most ") == 1
  assert f'a 0-based step index (a key from "0" to "{num_steps - 1}"; step 0 is the first step)' in text
  assert "### Step 0 (" in text and f"### Step {num_steps - 1} (" in text and f"### Step {num_steps} (" not in text


def test_request_without_step_skills_asks_for_an_empty_object():
  [message] = build_analysis_messages(tiny_trajectory(3), AnalysisSpec(max_step_skills=0))
  assert '"step_skills": {} (no step guidance' in message["content"] and "at most" not in message["content"]


def test_analysis_spec_defaults_and_checks():
  spec = AnalysisSpec()
  assert (spec.max_step_skills, spec.max_parse_attempts, spec.max_completion_tokens) == (5, 2, 4096)
  with pytest.raises(ValueError, match="max_parse_attempts"):
    AnalysisSpec(max_parse_attempts=0)
  with pytest.raises(ValueError, match="max_completion_tokens"):
    AnalysisSpec(max_completion_tokens=0)
  assert AnalysisSpec(max_completion_tokens=None).max_completion_tokens is None


def test_request_clips_long_observations_only_when_asked():
  trajectory = tiny_trajectory(1)
  trajectory.steps[0].observation = "x" * 50
  clipped = build_analysis_messages(trajectory, AnalysisSpec(max_observation_chars=10))[0]["content"]
  assert "x" * 10 + " ...[40 more characters]" in clipped
  whole = build_analysis_messages(trajectory, AnalysisSpec())[0]["content"]
  assert "x" * 50 in whole


# ---------------------------------------------------------------- lenient parsing (golden cases)

PARSE_CASES = {
  "clean": (GOOD_REPLY, 4, 5, GOOD_SKILLS),
  "fenced": (f"```json\n{GOOD_REPLY}\n```", 4, 5, GOOD_SKILLS),
  "fenced_without_language": (f"Here:\n```\n{GOOD_REPLY}\n```\nDone.", 4, 5, GOOD_SKILLS),
  "trailing_commas": (
    '{"episode_summary": "Went to the wrong place.", "episode_skill": "Check the microwave first.",'
    ' "step_skills": {"0": "Go to microwave 1.", "2": "Open microwave 1.",},}',
    4,
    5,
    GOOD_SKILLS,
  ),
  "surrounding_prose": (f"Sure! Here is my analysis {{of course}}:\n{GOOD_REPLY}\nLet me know.", 4, 5, GOOD_SKILLS),
  "string_keys": (
    '{"episode_summary": "s", "episode_skill": "e", "step_skills": '
    '{"step 3": "a", "Step_1": "b", "t=2": "c", " 0 ": "d", "first": "dropped"}}',
    4,
    5,
    SkillSet("s", "e", {3: "a", 1: "b", 2: "c", 0: "d"}),
  ),
  "duplicate_keys": (
    '{"episode_summary": "s", "episode_skill": "", "episode_skill": "kept", '
    '"step_skills": {"1": "first", "1": "second", "step 1": "third", "2": "x"}}',
    4,
    5,
    SkillSet("s", "kept", {1: "first", 2: "x"}),
  ),
  "too_many_step_skills": (
    json.dumps(
      {
        "episode_summary": "s",
        "episode_skill": "e",
        "step_skills": {str(i): f"skill {i}" for i in (7, 1, 5, 3, 0, 2, 4, 6)},
      }
    ),
    8,
    2,
    SkillSet("s", "e", {7: "skill 7", 1: "skill 1"}),
  ),
  "indices_outside_trajectory": (
    '{"episode_summary": "s", "episode_skill": "e", '
    '"step_skills": {"-1": "neg", "4": "past end", "99": "far", "3": "last", "1": "ok", "2": ""}}',
    4,
    1,
    SkillSet("s", "e", {3: "last"}),
  ),
  "list_of_records_and_whitespace": (
    '{"episode_summary": "s", "episode_skill": "line one\nline two", '
    '"step_skills": [{"step": 2, "skill": "two"}, {"index": "1", "text": "one"}, '
    '{"step": 9, "skill": "x"}]}',
    4,
    5,
    SkillSet("s", "line one line two", {2: "two", 1: "one"}),
  ),
  "missing_step_skills": ('{"episode_skill": "e"}', 4, 5, SkillSet("", "e", {})),
  "decoy_object_first": (
    'Format: {"a": 1}. Answer: {"episode_summary": "s", "episode_skill": "e", "step_skills": {}}',
    4,
    5,
    SkillSet("s", "e", {}),
  ),
  "braces_inside_strings": (
    '{"episode_summary": "used {curly} and \\"quotes\\", ok", "episode_skill": "e ] }", '
    '"step_skills": {"0": "type click[Buy Now], then stop",}}',
    4,
    5,
    SkillSet('used {curly} and "quotes", ok', "e ] }", {0: "type click[Buy Now], then stop"}),
  ),
}


@pytest.mark.parametrize("name", sorted(PARSE_CASES))
def test_parse_golden(name):
  reply, num_steps, max_step_skills, expected = PARSE_CASES[name]
  assert parse_skill_set(reply, num_steps, max_step_skills) == expected


@pytest.mark.parametrize(
  "reply", ["", "The agent did fine.", '{"summary": "no skill key"}', "```json\n{broken\n```", '["episode_skill"]']
)
def test_parse_failures(reply):
  with pytest.raises(SkillParseError):
    parse_skill_set(reply, 4, 5)


# ---------------------------------------------------------------- the repair loop (local backend)


def scripted_chat_fn(replies_per_round, seen):
  rounds = iter(replies_per_round)

  def chat_fn(conversations):
    seen.append(conversations)
    return next(rounds)[: len(conversations)]

  return chat_fn


EMPTY_SKILL_REPLY = '{"episode_summary": "s", "episode_skill": "", "step_skills": {"0": "x"}}'


def test_local_backend_repairs_then_gives_up():
  seen = []
  chat_fn = scripted_chat_fn(
    [
      [GOOD_REPLY, "no json here", "still no json", EMPTY_SKILL_REPLY, EMPTY_SKILL_REPLY],
      [GOOD_REPLY, "nope", GOOD_REPLY, '```json\n{"episode_skill": "  "}\n```'],
      ["never called: two attempts in all"],
    ],
    seen,
  )
  trajectories = [tiny_trajectory(traj_id=i) for i in range(5)]
  with make_backend("local", chat_fn=chat_fn, max_step_skills=5) as backend:
    handle = backend.analyze_many_async(trajectories)
    results = handle.result(timeout=10)
  assert [len(batch) for batch in seen] == [5, 4]
  assert [r.traj_id for r in results] == [0, 1, 2, 3, 4]
  assert results[0].skills == GOOD_SKILLS
  assert results[1].skills == GOOD_SKILLS  # repaired once
  assert results[2].skills is None and "no usable reply after 2 tries" in results[2].failure
  assert results[3].skills == GOOD_SKILLS  # an empty episode skill is retried, then answered
  assert (
    results[4].skills is None and results[4].failure == 'no usable reply after 2 tries: the "episode_skill" is empty'
  )
  repair = seen[1][0]
  [first] = seen[0][1]
  assert [m["role"] for m in repair] == ["user"]
  assert repair[0]["content"].startswith(first["content"] + "\n\n## Your previous answer could not be used")
  assert "no json here" in repair[0]["content"] and "JSON object" in repair[0]["content"]
  assert 'Problem: the "episode_skill" is empty.' in seen[1][2][0]["content"]
  stats = handle.stats.as_dict()
  assert stats == {
    "trajectories": 5,
    "skipped": 0,
    "calls": 9,
    "retries": 0,
    "repairs": 4,
    "parse_failures": 6,
    "final_failures": 2,
    "empty_skills": 3,
    "with_skill": 3,
    "seconds": pytest.approx(stats["seconds"]),
  }
  assert stats["trajectories"] == stats["skipped"] + stats["with_skill"] + stats["final_failures"]
  assert stats["seconds"] > 0 and backend.last_stats is handle.stats


def test_local_backend_honours_more_parse_attempts():
  seen = []
  chat_fn = scripted_chat_fn([["bad"], [EMPTY_SKILL_REPLY], [GOOD_REPLY]], seen)
  with make_backend("local", chat_fn=chat_fn, max_parse_attempts=3) as backend:
    [result] = backend.analyze_many([tiny_trajectory()])
  assert result.skills == GOOD_SKILLS and len(seen) == 3
  request = seen[0][0][0]["content"]
  third = seen[2][0][0]["content"]  # built from the first request, not from the second repair
  assert third.startswith(request + "\n\n") and "Previous answer:" in third and "bad" not in third[len(request) :]


def test_repair_message_clips_the_echoed_reply():
  [repair] = build_repair_messages([{"role": "user", "content": "REQUEST"}], "y" * 9000, "broken")
  assert repair["role"] == "user" and repair["content"].startswith("REQUEST\n\n")
  assert "Problem: broken." in repair["content"] and "y" * 8000 + " ...[1000 more characters]" in repair["content"]


def test_local_backend_failures_and_skips():
  def broken(conversations):
    raise RuntimeError("sampler exploded")

  no_steps = Trajectory(group_id=0, traj_id=5, task_id="t", task="t", task_type="x")
  faulted = tiny_trajectory(traj_id=6)
  faulted.failure_reason = "worker died"
  with make_backend("local", chat_fn=broken) as backend:
    results = backend.analyze_many([tiny_trajectory(traj_id=4), no_steps, faulted])
  assert [r.has_skill for r in results] == [False, False, False]
  assert "chat_fn failed" in results[0].failure
  assert results[1].failure == "trajectory has no steps"
  assert "worker died" in results[2].failure
  assert backend.last_stats.calls == 1 and backend.last_stats.skipped == 2
  assert backend.last_stats.final_failures == 1


def test_none_backend_makes_no_calls():
  with make_backend("none", max_step_skills=2) as backend:
    results = backend.analyze_many([tiny_trajectory(traj_id=i) for i in range(3)])
  assert [r.skills for r in results] == [None] * 3
  assert backend.last_stats.calls == 0 and backend.last_stats.trajectories == 3


def test_factory_rejects_unknown_names_and_options():
  with pytest.raises(ValueError, match="unknown analyzer backend"):
    make_backend("gpt")
  with pytest.raises(TypeError):
    make_backend("expert", base_url="http://x")
  backend = make_backend("expert", max_step_skills=2, gamma=0.9)
  assert backend.spec == AnalysisSpec(gamma=0.9, max_step_skills=2)


# ---------------------------------------------------------------- openai backend against the fault server


def openai_backend(server, **overrides):
  options = dict(
    base_url=server.base_url,
    model="fault-model",
    timeout_s=2.0,
    backoff_base_s=0.01,
    backoff_max_s=0.05,
    concurrency=4,
    max_step_skills=5,
  )
  options.update(overrides)
  return make_backend("openai", **options)


BAD_INDEX_REPLY = json.dumps(
  {
    "episode_summary": "s",
    "episode_skill": "e",
    "step_skills": {"9": "past the end", "-2": "negative", "step 1": "kept"},
  }
)

FAULT_CASES = {
  # name: (script, default, reply, options, expected skills, expected counters)
  "good": (
    [],
    "ok",
    GOOD_REPLY,
    {},
    GOOD_SKILLS,
    dict(calls=1, retries=0, repairs=0, parse_failures=0, final_failures=0),
  ),
  "server_errors": (
    [],
    "500",
    GOOD_REPLY,
    {},
    None,
    dict(calls=6, retries=5, repairs=0, parse_failures=0, final_failures=1),
  ),
  "rate_limited_then_ok": (
    ["429"],
    "ok",
    GOOD_REPLY,
    {},
    GOOD_SKILLS,
    dict(calls=2, retries=1, repairs=0, parse_failures=0, final_failures=0),
  ),
  "slow_then_ok": (
    ["slow"],
    "ok",
    GOOD_REPLY,
    {"timeout_s": 0.3},
    GOOD_SKILLS,
    dict(calls=2, retries=1, repairs=0, parse_failures=0, final_failures=0),
  ),
  "always_slow": (
    [],
    "slow",
    GOOD_REPLY,
    {"timeout_s": 0.2, "max_api_retries": 2},
    None,
    dict(calls=3, retries=2, repairs=0, parse_failures=0, final_failures=1),
  ),
  "garbage": (
    [],
    "garbage",
    GOOD_REPLY,
    {},
    None,
    dict(calls=2, retries=0, repairs=1, parse_failures=2, final_failures=1),
  ),
  "empty_episode_skill_twice": (
    [],
    "ok",
    EMPTY_SKILL_REPLY,
    {},
    None,
    dict(calls=2, retries=0, repairs=1, parse_failures=2, empty_skills=2, final_failures=1),
  ),
  "garbage_then_good": (
    ["garbage"],
    "ok",
    GOOD_REPLY,
    {},
    GOOD_SKILLS,
    dict(calls=2, retries=0, repairs=1, parse_failures=1, final_failures=0),
  ),
  "garbage_body_then_ok": (
    ["garbage_body"],
    "ok",
    GOOD_REPLY,
    {},
    GOOD_SKILLS,
    dict(calls=2, retries=1, repairs=0, parse_failures=0, final_failures=0),
  ),
  "bad_indices": (
    [],
    "ok",
    BAD_INDEX_REPLY,
    {},
    SkillSet("s", "e", {1: "kept"}),
    dict(calls=1, retries=0, repairs=0, parse_failures=0, final_failures=0),
  ),
  "not_retryable": (
    [],
    "400",
    GOOD_REPLY,
    {},
    None,
    dict(calls=1, retries=0, repairs=0, parse_failures=0, final_failures=1),
  ),
}


@pytest.mark.parametrize("name", sorted(FAULT_CASES))
def test_openai_backend_under_faults(name):
  script, default, reply, options, expected, counters = FAULT_CASES[name]
  with FaultServer(script, default=default, reply=reply, delay_s=0.6) as server:
    with openai_backend(server, **options) as backend:
      [result] = backend.analyze_many([tiny_trajectory()])
    stats = backend.last_stats
  assert result.skills == expected
  assert (result.failure == "") == (expected is not None)
  assert {k: getattr(stats, k) for k in counters} == counters
  assert len(server.requests) == counters["calls"]
  assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
  assert all(r["body"]["model"] == "fault-model" for r in server.requests if r["body"])
  assert stats.with_skill == (1 if expected else 0) and stats.seconds > 0


def test_openai_failure_reasons_are_readable():
  with FaultServer([], default="500") as server:
    with openai_backend(server, max_api_retries=1) as backend:
      [result] = backend.analyze_many([tiny_trajectory()])
  assert result.skills is None
  assert "HTTP 500" in result.failure and "gave up after 2 attempts" in result.failure


def test_openai_repair_request_and_json_mode():
  with FaultServer(["garbage"], reply=GOOD_REPLY) as server:
    with openai_backend(server, json_mode=True, temperature=0.0, max_completion_tokens=256) as backend:
      [result] = backend.analyze_many([tiny_trajectory()])
  assert result.skills == GOOD_SKILLS
  first, repair = (r["body"] for r in server.requests)
  assert first["response_format"] == {"type": "json_object"}
  assert first["temperature"] == 0.0 and first["max_tokens"] == 256 and repair["max_tokens"] == 256
  assert [m["role"] for m in first["messages"]] == ["user"]
  assert [m["role"] for m in repair["messages"]] == ["user"]
  assert repair["messages"][0]["content"].startswith(first["messages"][0]["content"])
  assert "looked at the episode" in repair["messages"][0]["content"]


def test_openai_request_carries_the_completion_token_cap():
  with FaultServer([], reply=GOOD_REPLY) as server:
    with openai_backend(server) as backend:
      backend.analyze_many([tiny_trajectory()])
    assert backend.spec.max_completion_tokens == 4096
    with openai_backend(server, max_completion_tokens=777, token_cap_field="max_completion_tokens") as backend:
      backend.analyze_many([tiny_trajectory()])
    with openai_backend(server, max_completion_tokens=None) as backend:
      backend.analyze_many([tiny_trajectory()])
  default, renamed, uncapped = (r["body"] for r in server.requests)
  assert default["max_tokens"] == 4096 and "max_completion_tokens" not in default
  assert renamed["max_completion_tokens"] == 777 and "max_tokens" not in renamed
  assert "max_tokens" not in uncapped and "max_completion_tokens" not in uncapped
  with pytest.raises(ValueError, match="token_cap_field"):
    openai_backend(server, token_cap_field="max_new_tokens")


class RepliesInTurn(FaultServer):
  """A fault server whose "ok" replies are taken in turn from a list (the last one repeats)."""

  def __init__(self, replies, **kwargs):
    self._replies = list(replies)
    super().__init__(**kwargs)

  @property
  def reply(self):
    return self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]

  @reply.setter
  def reply(self, _value):
    pass


def test_openai_empty_episode_skill_is_retried_once_then_succeeds():
  with RepliesInTurn([EMPTY_SKILL_REPLY, GOOD_REPLY]) as server:
    with openai_backend(server) as backend:
      [result] = backend.analyze_many([tiny_trajectory()])
    stats = backend.last_stats
  assert result.skills == GOOD_SKILLS and result.failure == ""
  first, repair = (r["body"] for r in server.requests)
  assert 'Problem: the "episode_skill" is empty.' in repair["messages"][0]["content"]
  assert EMPTY_SKILL_REPLY in repair["messages"][0]["content"]
  assert (stats.calls, stats.repairs, stats.parse_failures, stats.empty_skills) == (2, 1, 1, 1)
  assert (stats.with_skill, stats.final_failures) == (1, 0)


def test_openai_two_empty_episode_skills_leave_no_skill():
  with FaultServer([], reply=EMPTY_SKILL_REPLY) as server:
    with openai_backend(server) as backend:
      [result] = backend.analyze_many([tiny_trajectory()])
    stats = backend.last_stats
  assert result.skills is None and result.failure == 'no usable reply after 2 tries: the "episode_skill" is empty'
  assert result.reply == EMPTY_SKILL_REPLY and len(server.requests) == 2
  assert stats.as_dict() == {
    "trajectories": 1,
    "skipped": 0,
    "calls": 2,
    "retries": 0,
    "repairs": 1,
    "parse_failures": 2,
    "final_failures": 1,
    "empty_skills": 2,
    "with_skill": 0,
    "seconds": pytest.approx(stats.seconds),
  }


def test_openai_runs_concurrently_in_the_background():
  trajectories = [tiny_trajectory(traj_id=i) for i in range(8)]
  with FaultServer([], default="slow", reply=GOOD_REPLY, delay_s=0.3) as server:
    with openai_backend(server, concurrency=8) as backend:
      started = time.perf_counter()
      handle = backend.analyze_many_async(trajectories)
      returned_after = time.perf_counter() - started
      assert not handle.done()
      results = handle.result(timeout=10)
      elapsed = time.perf_counter() - started
  assert returned_after < 0.2
  assert elapsed < 8 * 0.3  # overlapped, not one after another
  assert [r.traj_id for r in results] == list(range(8))
  assert all(r.skills == GOOD_SKILLS for r in results)
  assert handle.stats.calls == 8 and handle.stats.with_skill == 8


# ---------------------------------------------------------------- the API key stays secret

SENTINEL = "sk-sentinel-4f1c9a7e-do-not-leak"
KEY_ENV = "OPID_TEST_ANALYZER_KEY"


def test_api_key_goes_only_into_the_header(monkeypatch, caplog, capsys):
  monkeypatch.setenv(KEY_ENV, SENTINEL)
  caplog.set_level(logging.DEBUG)
  with FaultServer(["echo_auth", "ok"], reply=GOOD_REPLY) as server:
    with openai_backend(server, api_key_env=KEY_ENV) as backend:
      good = backend.analyze_many([tiny_trajectory()])
      good_stats = backend.last_stats
    with openai_backend(server, api_key_env=KEY_ENV, max_api_retries=1) as failing:
      server.default = "echo_auth"
      bad = failing.analyze_many([tiny_trajectory()])
      client = failing.client
      with pytest.raises(AnalyzerAPIError) as raised:
        client.complete([{"role": "user", "content": "hi"}], AnalyzerStats())
  assert all(r["headers"]["Authorization"] == f"Bearer {SENTINEL}" for r in server.requests)
  assert len(server.requests) == 6
  assert good[0].skills == GOOD_SKILLS and bad[0].skills is None and "HTTP 500" in bad[0].failure
  assert "[redacted]" in bad[0].failure  # the server echoed the key; we scrubbed it

  error = raised.value
  exposed = [
    caplog.text,
    repr(backend),
    str(backend),
    repr(failing),
    repr(client),
    repr(vars(client)),
    repr(vars(failing)),
    repr(good),
    repr(bad),
    repr(good_stats),
    repr(failing.last_stats),
    str(good_stats.as_dict()),
    str(error),
    repr(error),
    repr(error.__cause__),
    repr(error.__context__),
    repr(backend.spec),
  ]
  captured = capsys.readouterr()
  exposed += [captured.out, captured.err]
  assert caplog.text  # the retries were logged
  for text in exposed:
    assert SENTINEL not in text


def test_missing_api_key_names_the_variable_only(monkeypatch):
  monkeypatch.delenv(KEY_ENV, raising=False)
  with pytest.raises(ValueError, match=KEY_ENV):
    make_backend("openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV)


def test_no_key_means_no_authorization_header():
  with FaultServer([], reply=GOOD_REPLY) as server:
    with openai_backend(server) as backend:
      backend.analyze_many([tiny_trajectory()])
  assert "Authorization" not in server.requests[0]["headers"]


# ---------------------------------------------------------------- expert backend (golden skills)

PLAN = (
  "go to microwave 1 -> open microwave 1 -> take apple 1 from microwave 1 -> go to sinkbasin 1 -> "
  "clean apple 1 with sinkbasin 1 -> go to diningtable 1 -> move apple 1 to diningtable 1"
)


def expert_skills(trajectory, max_step_skills=5):
  with make_backend("expert", max_step_skills=max_step_skills) as backend:
    [result] = backend.analyze_many([trajectory])
    assert backend.last_stats.calls == 0
  return result.skills


def test_expert_winning_alfworld(winning):
  assert expert_skills(winning) == SkillSet(
    "The task was completed in 8 steps.",
    f"Workflow that solves this task: {PLAN}.",
    {3: "Do 'go to sinkbasin 1' now: it is the next action of the plan that solves this task."},
  )


def test_expert_losing_alfworld(losing):
  def advice(action):
    return f"Do '{action}' now: it is the next action of the plan that solves this task."

  assert expert_skills(losing) == SkillSet(
    "The task was not completed in 9 steps; the agent first left the plan at step 0.",
    "Mistake to avoid: at step 0 you did 'go to countertop 1' where the plan needed "
    f"'go to microwave 1', and the task was never completed. Follow this plan instead: {PLAN}.",
    {
      0: advice("go to microwave 1"),
      2: advice("open microwave 1"),
      5: advice("go to sinkbasin 1"),
      6: advice("go to sinkbasin 1"),
      7: advice("go to sinkbasin 1"),
    },
  )  # 8 is past the limit
  assert list(expert_skills(losing, max_step_skills=2).step_skills) == [0, 2]


def test_expert_losing_alfworld_that_stopped_on_plan(walkthrough):
  actions = list(walkthrough[:2])
  trajectory = trajectory_from(
    [(a, RESULTS[a]) for a in actions], ALFWORLD_START, won=False, hindsight=Hindsight(expert_actions=walkthrough)
  )
  skills = expert_skills(trajectory)
  assert skills.episode_skill == (
    "Mistake to avoid: stopping before the plan is finished (2 of 7 "
    f"actions done). Follow this plan to the end: {PLAN}."
  )
  assert skills.step_skills == {}


def test_expert_search():
  assert expert_skills(search_trajectory("John Steinbeck"), max_step_skills=2) == SkillSet(
    "The agent answered 'John Steinbeck', but the correct answer is 'Ernest Hemingway'.",
    "Mistake to avoid: answering 'John Steinbeck' without evidence for it; the correct answer is "
    "'Ernest Hemingway'. Search until a passage states the answer, then answer with what it says.",
    {
      1: "Answer <answer>Ernest Hemingway</answer> instead of 'John Steinbeck': the passages you saw at step 1 name it."
    },
  )
  assert expert_skills(search_trajectory("hemingway"), max_step_skills=2) == SkillSet(
    "The agent answered 'hemingway', which is correct.",
    "Workflow that worked: search for the question's key entity, read the passages for the answer, "
    "then answer <answer>Hemingway</answer>.",
    {1: "Answer <answer>Hemingway</answer>: the passages you saw at step 1 name it."},
  )


def test_expert_search_without_evidence_or_answer():
  trajectory = search_trajectory(None, docs=OTHER_DOCS, searches=4)
  assert expert_skills(trajectory, max_step_skills=2) == SkillSet(
    "The agent never answered; the correct answer is 'Ernest Hemingway'.",
    "Mistake to avoid: using every step without answering; the correct answer is 'Ernest Hemingway'. "
    "Answer as soon as a passage states it.",
    {
      0: "Search for the question's key entity so that the passages mention 'Ernest Hemingway'.",
      3: "Stop searching and answer <answer>Ernest Hemingway</answer>.",
    },
  )
  assert list(expert_skills(trajectory, max_step_skills=1).step_skills) == [0]


def test_expert_is_deterministic_and_needs_hindsight(winning, losing):
  with make_backend("expert") as backend:
    first = backend.analyze_many([winning, losing, tiny_trajectory(traj_id=9)])
    second = backend.analyze_many([winning, losing, tiny_trajectory(traj_id=9)])
  assert first == second
  assert first[2].skills is None and "no hindsight" in first[2].failure
