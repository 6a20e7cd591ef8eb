"""Every shipped config loads, validates, and carries the paper's settings; the GRPO special case."""

import importlib

import numpy as np
import pytest

from opid_jax import config_validation
from opid_jax.errors import UserError


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", ["base", "alfworld", "search_qa", "webshop", "smoke"])
def test_configs_validate(name):
  c = load(name)
  if not c.model.path:
    c.model.path = "some/model"
  config_validation.validate(c)


def test_paper_settings():
  a, s, w = load("alfworld"), load("search_qa"), load("webshop")
  assert (a.rollout.max_steps, a.rollout.history_window, a.rollout.tasks_per_batch, a.rollout.group_size) == (30, 5, 16, 8)
  assert (s.rollout.max_steps, s.rollout.history_window, s.rollout.tasks_per_batch) == (4, 4, 128)
  assert (w.rollout.max_steps, w.rollout.history_window) == (15, 2)
  assert a.opid.invalid_penalty == 0.1 and s.opid.invalid_penalty == 0.01
  assert a.ppo.kl_coef == 0.01 and s.ppo.kl_coef == 0.001
  assert a.analyzer.max_step_skills == 5 and s.analyzer.max_step_skills == 2
  assert a.opid.lambda_skill == 0.001 and a.optim.lr == 1e-6 and a.ppo.clip_eps == 0.2
  assert a.rollout.eval_temperature == 0.4 and a.rollout.max_prompt_tokens == 2048


def test_data_parallel_divisibility_names_the_numbers():
  c = load("smoke")
  with pytest.raises(UserError, match="micro_batch_size=4 is not divisible by the data-parallel size 8"):
    config_validation.validate_data_parallel(c, 8)
  config_validation.validate_data_parallel(c, 2)
