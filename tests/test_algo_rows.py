"""`algo.name`: every comparison row runs an iteration; wrong combinations are one error line; Skill-GRPO's bank."""

import numpy as np
import pytest

from configs import demo, smoke
from opid_jax.errors import UserError
from opid_jax.skills.bank import SkillBank
from opid_jax.skills.records import SkillSet
from opid_jax.training import algo_rows, config_checks, rl_trainer

TEACHER_ROWS = [name for name, row in algo_rows.ROWS.items() if row.teacher and not row.opid_term]
ROW_METRIC = {"sdar": "sdar/gate_mean", "opsd": "sdar/gate_mean", "grpo_opsd": "sdar/gate_mean"}
ROW_METRIC["skill_sd"] = "skill_sd/k3_mean"


def row_config(base, name: str, **train):
  c = base.get_config()
  c.algo.name = name
  if name in TEACHER_ROWS:
    c.opid.lambda_skill = 0.0
  c.train.update(steps=1, **train)
  return c


@pytest.mark.parametrize("name", sorted(algo_rows.ROWS))
def test_every_row_runs_an_iteration_on_the_counting_env(name, model_dir, tmp_path):
  c = row_config(smoke, name)
  c.model.path = model_dir
  if name == "skill_grpo":  # the bank fills after the first iteration; the second plays with its skills
    c.train.update(steps=2, eval_at_end=True, eval_tasks=2)
  metrics = rl_trainer.train(c, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["samples"] > 0
  if name in ROW_METRIC:
    assert ROW_METRIC[name] in metrics and np.isfinite(metrics[ROW_METRIC[name]])
  if name == "opsd":  # distillation only: the policy-gradient term is weighted 0 (KL and entropy terms stay)
    want = c.algo.sdar_coef * metrics["sdar/loss"] + c.ppo.kl_coef * metrics["ppo/kl_ref"]
    want -= c.ppo.entropy_coef * metrics["ppo/entropy"]
    assert metrics["ppo/loss"] == pytest.approx(want, abs=1e-6)
  if name == "skill_grpo":
    assert "eval_skills/success" in metrics and "eval/success" in metrics
  assert metrics["adv/skill_coverage"] == (1.0 if name in TEACHER_ROWS + ["opid"] else 0.0)
  assert ("perf/split_skill_pairs" in metrics) == (name in TEACHER_ROWS + ["opid"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gigpo", "skill_grpo"])  # step groups of real observations; a bank of real skills
def test_rows_run_an_iteration_on_real_alfworld_games(name, model_dir, alfworld_games, tmp_path):
  c = row_config(demo, name, eval_at_start=False, eval_at_end=False)  # the iteration only: no evaluation
  c.model.update(path=model_dir, remat=False)
  c.env.update(data_dir=alfworld_games, train_split="valid_seen", eval_split="valid_unseen", num_workers=1)
  c.rollout.update(tasks_per_batch=2, group_size=2, max_steps=4, max_new_tokens=8, max_prompt_tokens=1024)
  c.ppo.update(mini_batch_size=16, micro_batch_size=8)
  if name == "skill_grpo":
    c.train.steps = 2
  metrics = rl_trainer.train(c, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["samples"] > 0


@pytest.mark.parametrize(
  "overrides, needle",
  [
    (dict(name="rlsd"), "set --config.opid.lambda_skill=0"),
    (dict(name="sdar"), "set --config.opid.lambda_skill=0"),
    (dict(name="skill_grpo", backend="none"), "needs skills"),
    (dict(name="rlsd", lam=0.0, backend="none"), "needs skills"),
    (dict(name="skill_sd", lam=0.0, routing="additive"), "one teacher prompt per step"),
    (dict(name="rlsd", lam=0.0, routing="none"), "needs a routed skill"),
    (dict(name="ppo"), "algo.name='ppo' is not one of"),
  ],
)
def test_wrong_combinations_are_one_error_line(overrides, needle):
  c = smoke.get_config()
  c.model.path = "x"
  c.algo.name = overrides["name"]
  c.analyzer.backend = overrides.get("backend", "expert")
  c.opid.lambda_skill = overrides.get("lam", 0.001)
  c.opid.routing = overrides.get("routing", "critical_first")
  with pytest.raises(UserError, match=needle) as err:
    config_checks.validate(c)
  assert "\n" not in str(err.value)


def test_row_settings():
  c = smoke.get_config()
  assert algo_rows.step_weight(c) == 0.0 and algo_rows.lambda_skill(c) == c.opid.lambda_skill
  c.algo.name = "gigpo"
  assert algo_rows.step_weight(c) == 1.0 and algo_rows.lambda_skill(c) == 0.0
  c.algo.step_weight = 0.5
  assert algo_rows.step_weight(c) == 0.5
  c.algo.name = "grpo_opsd"
  assert algo_rows.gate_beta(c) == 0.0 and algo_rows.distill_coef(c) == 0.01
  c.algo.name = "skill_sd"
  assert algo_rows.distill_coef(c) == 0.001
  c.algo.name = "rlsd"
  c.algo.update(rlsd_lambda=0.5, rlsd_warmdown=100)
  assert rl_trainer.iteration_settings(c, 50).rlsd_lambda == pytest.approx(0.25)
  assert rl_trainer.iteration_settings(c, 150).rlsd_lambda == 0.0


class _Traj:
  def __init__(self, traj_id, task_type, won):
    self.traj_id, self.task_type, self.won = traj_id, task_type, won


class _Analysis:
  def __init__(self, traj_id, skill):
    self.traj_id, self.skills, self.has_skill = traj_id, SkillSet("s", skill, {}), bool(skill)


def test_skill_bank_prefers_a_won_trajectory_and_keeps_old_types():
  bank = SkillBank({"cool": "old cool skill"})
  trajs = [_Traj(0, "heat", False), _Traj(1, "heat", True), _Traj(2, "heat", False), _Traj(3, "clean", False)]
  bank.update(trajs, [_Analysis(0, "a"), _Analysis(1, "won"), _Analysis(2, "later"), _Analysis(3, "")])
  assert bank.skills == {"cool": "old cool skill", "heat": "won"}
  text = "Your task is to: heat an egg.\nNow it's your turn."
  assert "[won]" in bank.student_prompt(text, "heat") and bank.student_prompt(text, "clean") == text
  assert SkillBank(bank.state_dict()).skills == bank.skills
