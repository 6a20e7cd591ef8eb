"""One rule for an over-long prompt (cut from the left, or refuse) and every caller that applies it: the rollout,
evaluation, skill-augmented prompts, the sampler and scorer, the generate / score tools, the server and training."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading

import httpx
import pytest

from opid_jax.agent import prompts, rollout
from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.batching import prompt_length
from opid_jax.batching.prompt_length import PromptTooLong
from opid_jax.envs import counting
from opid_jax.envs.pool import EnvPool
from opid_jax.errors import UserError
from opid_jax.evaluation import tables
from opid_jax.rl import opid_samples
from opid_jax.skills import routing
from opid_jax.skills.records import AnalysisResult, SkillSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
IDS = list(range(100, 110))  # ten ids


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize("side", prompt_length.SIDES)
@pytest.mark.parametrize("limit", [None, 10, 11])
def test_a_prompt_within_the_limit_is_unchanged(side, limit):
  assert prompt_length.fit(IDS, limit, side) == IDS
  assert prompt_length.fit((), 4, side) == []


def test_left_keeps_the_last_ids():
  assert prompt_length.fit(IDS, 4, "left") == [106, 107, 108, 109]
  assert prompt_length.fit(IDS, 1, "left") == [109]
  assert prompt_length.fit_all([IDS, IDS[:3]], 3, "left") == [[107, 108, 109], [100, 101, 102]]


def test_error_refuses_with_one_line_naming_length_limit_and_keys():
  with pytest.raises(PromptTooLong) as info:
    prompt_length.fit(IDS, 4, "error")
  assert isinstance(info.value, UserError)
  assert str(info.value) == (
    "a prompt of 10 tokens exceeds rollout.max_prompt_tokens=4; raise it, or set "
    "rollout.truncation_side='left' to cut long prompts from the left"
  )
  with pytest.raises(
    PromptTooLong,
    match=r"^a skill-augmented prompt of 10 tokens exceeds --max_prompt_tokens=9; "
    r"raise it, or pass --truncate_left",
  ):
    prompt_length.fit(IDS, 9, "error", prompt_length.CLI, what="skill-augmented prompt")
  with pytest.raises(PromptTooLong, match="exceeds this server's --max_prompt_tokens=9; shorten the messages"):
    prompt_length.fit_all([IDS[:9], IDS], 9, "error", prompt_length.SERVER)


def test_bad_side_and_bad_limit():
  with pytest.raises(ValueError, match="truncation side 'right'"):
    prompt_length.fit(IDS[:1], 4, "right")  # even a prompt within the limit
  with pytest.raises(UserError, match="rollout.max_prompt_tokens must be at least 1, not 0"):
    prompt_length.fit(IDS, 0, "left")


def test_tokenize_prompt_applies_the_rule(chatml_tokenizer):
  chat = prompts.to_chat_text(chatml_tokenizer, "hello there, a long enough prompt")
  ids = chatml_tokenizer(chat, add_special_tokens=False)["input_ids"]
  assert prompts.tokenize_prompt(chatml_tokenizer, chat, 5) == ids[-5:]
  assert prompts.tokenize_prompt(chatml_tokenizer, chat, len(ids), "error") == ids
  with pytest.raises(PromptTooLong, match=f"of {len(ids)} tokens exceeds rollout.max_prompt_tokens=5"):
    prompts.tokenize_prompt(chatml_tokenizer, chat, 5, "error")


# ---------------------------------------------------------------- rollout and evaluation (counting env)

LIMIT = 24


class RecordingPolicy:
  def __init__(self, tokenizer):
    self.tokenizer, self.prompts = tokenizer, []

  def __call__(self, prompt_ids):
    self.prompts.extend(prompt_ids)
    ids = self.tokenizer("<think>count</think><action>say 1</action>", add_special_tokens=False)["input_ids"]
    return [(ids, [-0.5] * len(ids)) for _ in prompt_ids]


@pytest.fixture(scope="module")
def counting_pool():
  with EnvPool(functools.partial(counting.CountingEnv, max_steps=3), num_envs=2, num_workers=1) as pool:
    yield pool


def test_rollout_left_gives_the_tail_of_the_full_prompt(counting_pool, chatml_tokenizer):
  policy = RecordingPolicy(chatml_tokenizer)
  trajectories = rollout.run_groups(
    counting_pool, policy, chatml_tokenizer, ["0", "4"], 1, rollout.alfworld_agent(), LIMIT, truncation_side="left"
  )
  steps = [s for t in trajectories for s in t.steps]
  assert steps and len(policy.prompts) == len(steps)
  for step in steps:
    full = chatml_tokenizer(step.prompt_text, add_special_tokens=False)["input_ids"]
    assert len(full) > LIMIT and step.prompt_ids == full[-LIMIT:]
  assert sorted(map(tuple, policy.prompts)) == sorted(tuple(s.prompt_ids) for s in steps)


def test_rollout_and_evaluation_error_refuse_before_the_policy_runs(counting_pool, chatml_tokenizer):
  policy = RecordingPolicy(chatml_tokenizer)
  with pytest.raises(PromptTooLong, match=r"exceeds rollout.max_prompt_tokens=24; .*truncation_side='left'"):
    rollout.run_groups(
      counting_pool, policy, chatml_tokenizer, ["0", "4"], 1, rollout.alfworld_agent(), LIMIT, truncation_side="error"
    )
  with pytest.raises(PromptTooLong, match="rollout.max_prompt_tokens=24"):
    tables.evaluate(counting_pool, policy, chatml_tokenizer, rollout.alfworld_agent(), ["1"], LIMIT, "error")
  assert policy.prompts == []
  # within the limit, "error" changes nothing
  trajectories = rollout.run_groups(
    counting_pool, policy, chatml_tokenizer, ["0"], 1, rollout.alfworld_agent(), 4096, truncation_side="error"
  )
  for step in trajectories[0].steps:
    assert step.prompt_ids == chatml_tokenizer(step.prompt_text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- skill-augmented prompts


def _one_step_trajectory(tokenizer) -> tuple[Trajectory, list[int]]:
  user = rollout.alfworld_agent().render(
    "put a clean cloth in cabinet.", "You arrive at sinkbasin 1.", ["clean cloth 1 with sinkbasin 1", "look"], [], 5
  )
  chat = prompts.to_chat_text(tokenizer, user)
  ids = prompts.tokenize_prompt(tokenizer, chat)
  step = Step(
    index=0,
    observation="You arrive at sinkbasin 1.",
    admissible_actions=[],
    prompt_text=chat,
    prompt_ids=ids,
    response_ids=[1],
    response_text="",
    action="look",
    valid=True,
    user_prompt_text=user,
  )
  return Trajectory(0, 7, "t", "put a clean cloth in cabinet.", "clean", steps=[step]), ids


ANALYSIS = [AnalysisResult(7, SkillSet("s", "Clean the cloth at the sinkbasin first.", {}))]


def test_skill_prompts_follow_the_side(chatml_tokenizer):
  traj, plain_ids = _one_step_trajectory(chatml_tokenizer)
  limit = len(plain_ids)  # the plain prompt fits exactly; the skill-augmented one does not
  skill = routing.RoutedSkill(ANALYSIS[0].skills.episode_skill)
  augmented = routing.inject_skill(traj.steps[0].user_prompt_text, skill)
  full = chatml_tokenizer(prompts.to_chat_text(chatml_tokenizer, augmented), add_special_tokens=False)["input_ids"]
  assert len(full) > limit

  def settings(side):
    return opid_samples.OpidSettings(
      lambda_skill=0.5, routing="episode_only", max_prompt_tokens=limit, truncation_side=side
    )

  assert opid_samples.skill_prompt_ids([traj], ANALYSIS, chatml_tokenizer, settings("left")) == [[full[-limit:]]]
  with pytest.raises(
    PromptTooLong, match=f"a skill-augmented prompt of {len(full)} tokens exceeds rollout.max_prompt_tokens={limit}"
  ):
    opid_samples.skill_prompt_ids([traj], ANALYSIS, chatml_tokenizer, settings("error"))


# ---------------------------------------------------------------- sampler and scorer


@pytest.fixture(scope="module")
def tiny():
  from tiny_models import tiny_model

  return tiny_model(seed=1)


def test_sampler_and_scorer_error_refuse(tiny):
  from opid_jax.generation.sampler import Sampler, SamplingParams
  from opid_jax.rl.scoring import Scorer

  long_prompt = list(range(1, 13))
  sampler = Sampler(tiny, [0], 0, prompt_buckets=(8,), batch_buckets=(1,))
  with pytest.raises(PromptTooLong, match="a prompt of 12 tokens exceeds rollout.max_prompt_tokens=8"):
    sampler.generate([long_prompt], SamplingParams(max_new_tokens=2))
  scorer = Scorer(tiny, 0, micro_batch=1, prompt_buckets=(8,), response_buckets=(4,))
  with pytest.raises(PromptTooLong, match="a prompt of 12 tokens exceeds rollout.max_prompt_tokens=8"):
    scorer.score([long_prompt], [[5, 6]])


def test_sampler_and_scorer_left_read_the_tail(tiny):
  import numpy as np

  from opid_jax.generation.sampler import Sampler, SamplingParams
  from opid_jax.rl.scoring import Scorer

  long_prompt = list(range(1, 13))
  sampler = Sampler(tiny, [0], 0, prompt_buckets=(8,), batch_buckets=(2,), truncate_left=True)
  out = sampler.generate([long_prompt, long_prompt[-8:]], SamplingParams(temperature=0.0, max_new_tokens=3))
  assert out.tokens[0] == out.tokens[1]
  scorer = Scorer(tiny, 0, micro_batch=2, prompt_buckets=(8,), response_buckets=(4,), truncate_left=True)
  lp = scorer.score([long_prompt, long_prompt[-8:]], [[5, 6], [5, 6]]).logprobs
  np.testing.assert_allclose(lp[0], lp[1], atol=1e-6)


# ---------------------------------------------------------------- the generate / score tools


def run_tool(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=300)


LONG_TEXT = "go to cabinet 1 " * 40


@pytest.mark.parametrize("tool", ["generate", "score"])
def test_tools_refuse_or_cut_a_long_prompt(model_dir, tool):
  extra = ["--response=<action>look</action>"] if tool == "score" else ["--max_new_tokens=2", "--greedy"]
  args = [f"opid_jax.{tool}", f"--model={model_dir}", f"--prompt={LONG_TEXT}", "--max_prompt_tokens=16", *extra]
  res = run_tool(*args)
  assert res.returncode == 2, (res.returncode, res.stderr)
  lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
  assert "Traceback" not in res.stderr and lines[-1].startswith("error: a prompt of "), res.stderr
  assert "tokens exceeds --max_prompt_tokens=16; raise it, or pass --truncate_left" in lines[-1]
  res = run_tool(*args, "--truncate_left")
  assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def servers(model_dir):
  from opid_jax.generation.server import build_server

  urls, running = {}, []
  for side in prompt_length.SIDES:
    httpd, batcher = build_server(
      model_dir, "127.0.0.1", 0, max_batch=1, max_prompt_tokens=16, default_max_tokens=1, truncation_side=side
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    urls[side] = f"http://127.0.0.1:{httpd.server_address[1]}/v1/chat/completions"
    running.append((httpd, batcher))
  yield urls
  for httpd, batcher in running:
    httpd.shutdown()
    httpd.server_close()
    batcher.close()


def test_server_refuses_with_a_400_error_object_or_cuts_on_the_left(servers):
  body = {"messages": [{"role": "user", "content": LONG_TEXT}], "max_tokens": 1}
  res = httpx.post(servers["error"], json=body, timeout=120)
  assert res.status_code == 400
  error = res.json()["error"]
  assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
  assert error["param"] == "messages"
  assert "exceeds this server's --max_prompt_tokens=16; shorten the messages" in error["message"]
  res = httpx.post(servers["left"], json=body, timeout=300)
  assert res.status_code == 200, res.text
  assert res.json()["usage"]["prompt_tokens"] == 16


# ---------------------------------------------------------------- training: the run's one error line


def test_training_with_error_side_ends_in_one_error_line(train_cmd, tmp_path):
  cmd = train_cmd(
    str(tmp_path / "run"), "--config.rollout.truncation_side=error", "--config.rollout.max_prompt_tokens=16"
  )
  res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
  lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
  assert "Traceback" not in res.stderr and lines[-1].startswith("error: a prompt of "), res.stderr[-3000:]
  assert "exceeds rollout.max_prompt_tokens=16; raise it, or set rollout.truncation_side='left'" in lines[-1]
