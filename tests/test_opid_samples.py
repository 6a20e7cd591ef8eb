"""A real rollout of a tiny random model on the counting env, then OPID scoring and advantages."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import make_hf_model, save_tiny_tokenizer

from opid_jax.agent import prompts as prompt_lib, rollout
from opid_jax.envs import counting
from opid_jax.envs.pool import EnvPool
from opid_jax.generation.policy import make_policy
from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import loading
from opid_jax.rl import advantages as adv, batch as batch_lib, opid_samples, update
from opid_jax.rl.scoring import Scorer
from opid_jax.skills.backends import make_backend

MAX_NEW = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("policy"))
  save_tiny_tokenizer(out)
  make_hf_model("qwen3", out, seed=3)
  loaded = loading.load(out)
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=(256,))
  scorer = Scorer(loaded.model, loaded.pad_id, micro_batch=4, prompt_buckets=(256, 1024), response_buckets=(16,))
  with EnvPool(functools.partial(counting.CountingEnv, max_steps=3), num_envs=4, num_workers=1) as pool:
    policy = make_policy(sampler, SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW), jax.random.PRNGKey(0))
    trajs = rollout.run_groups(pool, policy, loaded.tokenizer, ["0", "4"], 2, rollout.alfworld_agent(2, 3), 256)
  return loaded, scorer, trajs


def test_rollout_records_well_formed_steps(setup):
  loaded, _, trajs = setup
  assert [t.group_id for t in trajs] == [0, 0, 1, 1] and len({t.traj_id for t in trajs}) == 4
  for t in trajs:
    assert 1 <= t.length <= 3 and t.task.startswith("count from")
    for s in t.steps:
      assert s.prompt_ids == prompt_lib.tokenize_prompt(loaded.tokenizer, s.prompt_text, 256)
      assert 1 <= len(s.response_ids) <= MAX_NEW and len(s.sampled_logprobs) == len(s.response_ids)
      assert all(lp <= 0 for lp in s.sampled_logprobs)
      if len(s.response_ids) < MAX_NEW:  # stopped early: the end-of-turn token is kept
        assert s.response_ids[-1] in loaded.stop_ids
      assert prompt_lib.TASK_ANCHOR in opid_samples.user_prompt_of(t, s)


def counting_score(scorer, calls):
  def score(prompts, responses, params, units=None):
    calls.append(len(prompts))
    return scorer.score(prompts, responses, params=params, units=units).logprobs

  return score


def test_lambda_zero_skips_the_skill_pass_and_equals_grpo(setup):
  loaded, scorer, trajs = setup
  calls = []
  settings = opid_samples.OpidSettings(lambda_skill=0.0)
  samples, metrics = opid_samples.build_samples(
    trajs,
    score=counting_score(scorer, calls),
    params=scorer.params,
    ref_params=None,
    tokenizer=loaded.tokenizer,
    settings=settings,
    analysis_handle=None,
  )
  assert calls == [sum(t.length for t in trajs)]  # the old log-probs only
  steps = opid_samples.flatten_steps(trajs)
  scores = adv.step_scores(np.array([t.episode_return for t, _ in steps]), np.array([s.valid for _, s in steps]), 0.1)
  grpo = adv.group_advantages(scores, np.array([t.group_id for t, _ in steps]), np.array([t.traj_id for t, _ in steps]))
  for sample, a in zip(samples, grpo):
    np.testing.assert_allclose(sample.advantages, np.full(len(sample.response_ids), a), rtol=1e-6)
  assert metrics["adv/skill_coverage"] == 0.0


def test_skill_pass_scores_the_same_tokens_after_augmented_prompts(setup):
  loaded, scorer, trajs = setup
  analyzer = make_backend("expert", max_step_skills=2)
  calls = []
  settings = opid_samples.OpidSettings(lambda_skill=0.5, routing="critical_first")
  samples, metrics = opid_samples.build_samples(
    trajs,
    score=counting_score(scorer, calls),
    params=scorer.params,
    ref_params=None,
    tokenizer=loaded.tokenizer,
    settings=settings,
    analysis_handle=analyzer.analyze_many_async(trajs),
  )
  n = sum(t.length for t in trajs)
  assert calls == [2 * n]  # one pass: every step is routed a skill (expert skills exist for every trajectory)
  base, _ = opid_samples.build_samples(
    trajs,
    score=counting_score(scorer, []),
    params=scorer.params,
    ref_params=None,
    tokenizer=loaded.tokenizer,
    settings=opid_samples.OpidSettings(lambda_skill=0.0),
  )
  skill_ids = opid_samples.skill_prompt_ids(trajs, analyzer.analyze_many(trajs), loaded.tokenizer, settings)
  assert all(len(ids) == 1 for ids in skill_ids)
  lp_skill = scorer.score([ids[0] for ids in skill_ids], [s.response_ids for s in samples]).logprobs
  for s, b, ls in zip(samples, base, lp_skill):
    np.testing.assert_allclose(s.advantages, b.advantages + 0.5 * (ls - s.old_logp), atol=1e-5)
  assert metrics["adv/skill_coverage"] == 1.0 and 0 < metrics["adv/skill_share"] <= 1


def test_first_update_sees_ratio_one(setup):
  loaded, scorer, trajs = setup
  samples, _ = opid_samples.build_samples(
    trajs,
    score=counting_score(scorer, []),
    params=scorer.params,
    ref_params=None,
    tokenizer=loaded.tokenizer,
    settings=opid_samples.OpidSettings(lambda_skill=0.0),
  )
  graphdef, params = nnx.split(loaded.model)
  tx = update.make_optimizer(lr=1e-3)
  mb = batch_lib.minibatches(
    samples,
    mini_batch_size=len(samples) + 3,
    micro_batch_size=len(samples) + 3,
    seed=0,
    pad_id=loaded.pad_id,
    prompt_buckets=(256,),
    response_buckets=(16,),
  )
  assert len(mb) == 1
  _, m = update.train_step(
    update.init_train_state(jax.tree.map(lambda x: x.copy(), params), tx),
    mb[0],
    graphdef=graphdef,
    tx=tx,
    cfg=update.LossConfig(),
  )
  assert float(m["ppo/approx_kl"]) < 1e-8 and float(m["ppo/clip_frac"]) == 0.0
