"""WebShop through the agent side: the prompt, the pool (a group of 8 envs on one goal sees one goal), and a
scripted expert episode that buys the target through rollout."""

import functools

import pytest

from opid_jax.agent import prompts, rollout
from opid_jax.envs.pool import EnvPool
from opid_jax.envs.webshop import catalogue as webshop_catalogue, env as webshop


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("webshop"))
  webshop_catalogue.write_catalogue(out, n=300, seed=0)
  return out


def test_prompt_structure():
  text = prompts.render_webshop_prompt(
    "find a red mug under 20 dollars", "WebShop [SEP] Search", ["search[<your query>]"], [], 2
  )
  lines = text.splitlines()
  assert lines[1] == "Your task is to: find a red mug under 20 dollars"
  assert lines[-1].startswith("Now it's your turn") and "'search[<your query>]'" in text


def test_a_group_on_one_goal_sees_one_goal(catalogue):
  factory = functools.partial(webshop.WebShopEnv, data_dir=catalogue)
  with EnvPool(factory, num_envs=8, num_workers=2) as pool:
    resets = pool.reset([(i, "3") for i in range(8)])
    hindsight = pool.hindsight(list(range(8)))
  assert len({r.task for r in resets}) == 1 and len({r.observation for r in resets}) == 1
  assert len({h.expert_actions for h in hindsight}) == 1 and hindsight[0].expert_actions


def test_scripted_expert_buys_through_rollout(catalogue, chatml_tokenizer):
  factory = functools.partial(webshop.WebShopEnv, data_dir=catalogue)
  env = factory()
  env.reset("520")
  plan = list(env.hindsight().expert_actions)
  tok = chatml_tokenizer
  step = [0]

  def policy(prompt_ids):
    action = plan[min(step[0], len(plan) - 1)]
    step[0] += 1
    return [
      (tok(f"<think>follow the plan</think><action>{action}</action>", add_special_tokens=False)["input_ids"], [0.0])
      for _ in prompt_ids
    ]

  with EnvPool(factory, num_envs=1, num_workers=1) as pool:
    [traj] = rollout.run_groups(pool, policy, tok, ["520"], 1, rollout.webshop_agent(2, 15), None)
  assert traj.won and traj.episode_return == webshop.SUCCESS_REWARD
  assert all(s.valid for s in traj.steps) and traj.steps[0].user_prompt_text.startswith("You are an expert")
