"""OPID on real ALFWorld games with the small from-scratch policy of configs/sft_alfworld_small.py (issue #9's
CPU-scale study; benchmarks/cpu_study.py runs it for every variant and seed).

  python -m opid_jax.train --config=configs/alfworld_small.py --workdir=runs/opid_small \
      --config.model.path=runs/cpu_study/sft/policy [--config.opid.routing=episode_only]

Sized for 2 CPU cores: 4 tasks x 4 rollouts per iteration, 16 iterations, 20 steps, one history entry, 32 new
tokens; greedy evaluation on the full valid_seen (140) and valid_unseen (134) lists after the 16 iterations (the
SFT start is evaluated once, shared by every run; 274 games take ~8-14 minutes here, as long as 8 iterations).
Rollouts sample at temperature 0.7 (not the paper's 1.0): a 2M-parameter policy trained from scratch spreads
probability over many malformed action strings, and at 1.0 nearly every step of its rollouts was an invalid or
hallucinated action.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(path="runs/cpu_study/sft/policy", dtype="float32", param_dtype="float32", remat=False)
  c.rollout.update(
    tasks_per_batch=4,
    group_size=4,
    max_steps=20,
    history_window=1,
    max_new_tokens=32,
    max_prompt_tokens=1024,
    truncation_side="left",
    temperature=0.7,
    eval_temperature=0.0,
  )
  c.env.update(
    name="alfworld", data_dir="data/alfworld", train_split="train", eval_split="valid_seen,valid_unseen", num_workers=2
  )
  c.analyzer.update(backend="expert", max_step_skills=5)
  c.opid.update(lambda_skill=0.05, routing="critical_first", invalid_penalty=0.1)
  c.ppo.update(kl_coef=0.0, mini_batch_size=64, micro_batch_size=8, entropy_coef=0.0, dual_clip=0.0)  # as the study ran
  c.optim.update(lr=3e-5, weight_decay=0.0)
  c.train.update(
    steps=16,
    eval_every=16,
    eval_tasks=0,
    eval_envs=48,
    score_micro_batch=16,
    prompt_buckets=(256, 384, 512, 768, 1024),
    response_buckets=(32, 64),
  )
  c.checkpoint.update(save_every=4, keep=2)
  return c
