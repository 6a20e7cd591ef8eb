"""Every shipped config loads, validates, and carries the paper's settings; the GRPO special case."""

import importlib
import os
import subprocess
import sys

import pytest

from opid_jax.errors import UserError
from opid_jax.sft import trainer as sft_trainer
from opid_jax.training import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize(
  "name", ["base", "alfworld", "alfworld_small", "demo", "demo_smollm2", "search_qa", "webshop", "smoke"]
)
def test_configs_validate(name, monkeypatch):
  c = load(name)
  if not c.model.path:
    c.model.path = "some/model"
  if c.analyzer.backend == "openai":  # the paper's configs need an endpoint: one error line without it
    with pytest.raises(UserError, match="--config.analyzer.backend=expert"):
      config_checks.validate(c)
    monkeypatch.setenv("OPID_KEY", "k")
    c.analyzer.update(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="OPID_KEY")
  config_checks.validate(c)


def test_paper_settings():
  a, s, w = load("alfworld"), load("search_qa"), load("webshop")
  assert (a.rollout.max_steps, a.rollout.history_window, a.rollout.tasks_per_batch, a.rollout.group_size) == (
    30,
    5,
    16,
    8,
  )
  assert (s.rollout.max_steps, s.rollout.history_window, s.rollout.tasks_per_batch) == (4, 4, 128)
  assert (w.rollout.max_steps, w.rollout.history_window) == (15, 2)
  assert a.opid.invalid_penalty == 0.1 and s.opid.invalid_penalty == 0.01
  assert a.ppo.kl_coef == 0.01 and s.ppo.kl_coef == 0.001
  assert a.analyzer.max_step_skills == 5 and s.analyzer.max_step_skills == 5
  assert a.opid.lambda_skill == 0.001 and a.optim.lr == 1e-6 and a.ppo.clip_eps == 0.2
  assert a.rollout.eval_temperature == 0.4 and a.rollout.max_prompt_tokens == 2048


def test_data_parallel_divisibility_names_the_numbers():
  c = load("smoke")
  with pytest.raises(UserError, match="micro_batch_size=4 is not divisible by the data-parallel size 8"):
    config_checks.validate_data_parallel(c, 8)
  config_checks.validate_data_parallel(c, 2)


def with_overrides(c, overrides):
  for key, value in overrides.items():
    block, field = key.split(".")
    c[block][field] = value
  return c


def smoke(overrides):
  c = load("smoke")
  c.model.path = "some/model"
  return with_overrides(c, overrides)


@pytest.mark.parametrize(
  "overrides,needle",
  [
    ({"rollout.group_size": 1}, "rollout.group_size=1 must be >= 2"),
    ({"ppo.epochs": 0}, "ppo.epochs=0 must be >= 1"),
    ({"ppo.mini_batch_size": 0}, "ppo.mini_batch_size=0 must be >= 1"),
    ({"ppo.clip_eps": 0.0}, "ppo.clip_eps=0.0 must be in (0.0, 1.0]"),
    ({"ppo.kl_clamp": 0.0}, "ppo.kl_clamp=0.0 must be > 0.0"),
    ({"optim.lr": 0.0}, "optim.lr=0.0 must be in (0.0, 1.0]"),
    ({"optim.b1": 1.0}, "optim.b1=1.0 must be in [0.0, 1.0)"),
    ({"optim.b2": 1.0}, "optim.b2=1.0 must be in [0.0, 1.0)"),
    ({"optim.eps": 0.0}, "optim.eps=0.0 must be > 0.0"),
    (
      {"optim.schedule": "cosine"},
      "optim.schedule='cosine' decays over train.steps=2 optimizer updates, but an iteration can make up to 2",
    ),
    ({"train.steps": 0}, "train.steps=0 must be >= 1"),
    ({"opid.lambda_skill": -0.1}, "opid.lambda_skill=-0.1 must be >= 0.0"),
    (
      {"opid.routing": "step_only", "analyzer.max_step_skills": 0},
      "analyzer.max_step_skills=0 with opid.routing=step_only injects no skill",
    ),
    ({"env.step_timeout_s": 0.0}, "env.step_timeout_s=0.0 must be > 0.0"),
    ({"env.train_games": "games.txt"}, "env.train_games lists ALFWorld games but env.name=counting"),
    ({"analyzer.concurrency": 0}, "analyzer.concurrency=0 must be >= 1"),
    ({"analyzer.timeout_s": 0.0}, "analyzer.timeout_s=0.0 must be > 0.0"),
  ],
)
def test_values_that_disable_learning_are_refused(overrides, needle):
  with pytest.raises(UserError) as err:
    config_checks.validate(smoke(overrides))
  assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
  "overrides",
  [
    {"opid.lambda_skill": 0.0},  # plain GRPO
    {"opid.routing": "none"},
    {"analyzer.backend": "none"},
    {"opid.lambda_skill": 0.0, "opid.routing": "step_only", "analyzer.max_step_skills": 0},
    {"optim.grad_clip": 0.0},  # no clipping
    {"ppo.kl_coef": 0.0},
    {"ppo.mini_batch_size": 64},  # more than an iteration's samples: one update on all of them
    {"optim.schedule": "cosine", "ppo.mini_batch_size": 12},  # one update per iteration: the schedule fits
  ],
)
def test_deliberate_settings_are_accepted(overrides):
  config_checks.validate(smoke(overrides))


def test_group_size_one_is_one_error_line_from_the_cli(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  cmd = [
    sys.executable,
    "-m",
    "opid_jax.train",
    "--config=configs/smoke.py",
    f"--workdir={tmp_path}",
    "--config.model.path=some/model",
    "--config.rollout.group_size=1",
  ]
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert res.returncode == 2, res.stderr[-2000:]
  assert [l for l in res.stderr.splitlines() if l.strip()][-1].startswith("error: rollout.group_size=1 must be >= 2")


def sft_config(data_dir, overrides=None):
  c = load("sft_alfworld_small")
  c.data.data_dir = str(data_dir)
  return with_overrides(c, overrides or {})


def test_sft_config_validates(tmp_path):
  sft_trainer.validate(sft_config(tmp_path))


@pytest.mark.parametrize(
  "overrides,needle",
  [
    ({"optim.lr": -1e-3}, "optim.lr=-0.001 must be in (0.0, 1.0]"),
    ({"optim.b2": 1.0}, "optim.b2=1.0 must be in [0.0, 1.0)"),
    ({"data.heldout_games": 800}, "data.heldout_games=800 must be in [0, data.num_games=800)"),
    ({"data.num_games": 0}, "data.num_games=0 must be >= 1"),
    ({"train.steps": 0}, "train.steps=0 must be >= 1"),
  ],
)
def test_sft_values_that_disable_learning_are_refused(tmp_path, overrides, needle):
  with pytest.raises(UserError) as err:
    sft_trainer.validate(sft_config(tmp_path, overrides))
  assert needle in str(err.value)
