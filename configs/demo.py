"""The embedded default: an agent that acts. OPID on real ALFWorld games, offline, on a laptop CPU in minutes.

  make demo     # = python -m opid_jax.train --config=configs/demo.py --workdir=runs/demo

The policy is the 1.9M-parameter ALFWorld policy that behaviour cloning trained from scratch for the CPU study
(results/cpu_study/sft/policy, committed; 14 % greedy success on valid_seen): it already plays the game in the
rollout format, so groups hold some wins and some losses and both parts of OPID's advantage are non-zero.
Skills come from the `expert` analyzer (written from the game's walkthrough: a privileged teacher, not the
paper's LLM analyzer). Four iterations of 4 tasks x 4 rollouts, then greedy evaluation on the same 24 valid_seen
games before and after (the summary gives each evaluation's binomial standard error: a few minutes of RL on a
2M-parameter policy moves success by less than that; this shows the machinery on a policy that acts, not the
paper's result). The SmolLM2-135M version is `make demo-smollm2` (configs/demo_smollm2.py).
"""

from configs import base

SFT_POLICY = "results/cpu_study/sft/policy"


def get_config():
  c = base.get_config()
  c.model.update(path=SFT_POLICY, dtype="float32", param_dtype="float32", remat=False)
  c.rollout.update(
    tasks_per_batch=4,
    group_size=4,
    max_steps=15,
    history_window=1,
    max_new_tokens=32,
    max_prompt_tokens=1024,
    truncation_side="left",
    temperature=0.7,
    eval_temperature=0.0,
  )
  c.env.update(name="alfworld", data_dir="data/alfworld", train_split="train", eval_split="valid_seen", num_workers=2)
  c.analyzer.update(backend="expert", max_step_skills=5)
  c.opid.update(lambda_skill=0.1, routing="critical_first", invalid_penalty=0.1)
  c.ppo.update(kl_coef=0.0, mini_batch_size=64, micro_batch_size=8, entropy_coef=0.0, dual_clip=0.0)  # as the study ran
  c.optim.update(lr=3e-5, weight_decay=0.0)
  c.train.update(
    steps=4,
    eval_every=0,
    eval_tasks=24,
    eval_envs=24,
    eval_at_start=True,
    eval_at_end=True,
    score_micro_batch=16,
    prompt_buckets=(256, 384, 512, 768, 1024),
    response_buckets=(32,),
  )
  c.checkpoint.update(save_every=2, keep=2)
  return c
