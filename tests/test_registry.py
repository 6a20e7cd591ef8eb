"""Each env family builds from a config block, and bad data paths give one-line errors."""

import pytest
from shared_data import shared_path

from configs import base
from opid_jax.agent import env_setup
from opid_jax.envs.webshop import catalogue as webshop_catalogue
from opid_jax.errors import UserError


def blocks(**env):
  c = base.get_config()
  c.env.update(**env)
  return c.env, c.rollout


def test_alfworld(alfworld_games):
  setup = env_setup.build(
    *blocks(name="alfworld", data_dir=alfworld_games, train_split="valid_seen", eval_split="valid_unseen")
  )
  assert len(setup.train_tasks) == 140 and len(setup.eval_tasks) == 134
  assert setup.agent.max_steps == 30 and setup.agent.history_length == 5


def test_search_qa():
  nq = shared_path("search_qa", "qa", "nq_test.jsonl")
  setup = env_setup.build(*blocks(name="search_qa", train_questions=nq, eval_questions=nq))
  assert len(setup.train_tasks) == 1000 and setup.eval_factory is not None


def test_webshop(tmp_path):
  webshop_catalogue.write_catalogue(str(tmp_path), n=200, seed=1)
  setup = env_setup.build(*blocks(name="webshop", data_dir=str(tmp_path)))
  assert setup.eval_tasks and setup.train_tasks and setup.eval_tasks[0] == "0"
  assert setup.factory().reset(setup.train_tasks[0]).admissible_actions


@pytest.mark.parametrize(
  "env,needle",
  [
    (dict(name="alfworld", data_dir="/nonexistent/alfworld"), "ALFWorld data not found"),
    (dict(name="search_qa", train_questions="/nonexistent.jsonl"), "training questions not found"),
    (dict(name="webshop", data_dir="/nonexistent/webshop"), "/nonexistent/webshop"),
  ],
)
def test_missing_data_is_one_line(env, needle):
  with pytest.raises(UserError, match=needle) as e:
    env_setup.build(*blocks(**env))
  assert "\n" not in str(e.value)
