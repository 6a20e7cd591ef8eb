"""ALFWorld with the paper's settings (method.md section 2): 16 tasks x 8 rollouts, 30 steps, history 5."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.path = "Qwen/Qwen2.5-3B-Instruct"
  c.rollout.update(
    tasks_per_batch=16,
    group_size=8,
    max_steps=30,
    history_window=5,
    max_prompt_tokens=2048,
    max_new_tokens=512,
    truncation_side="left",
    temperature=1.0,
    eval_temperature=0.4,
  )
  # The paper's Table 1 is in distribution (valid_seen), its Fig. 5 is valid_unseen: both, as fixed full lists.
  c.env.update(
    name="alfworld", data_dir="data/alfworld", train_split="train", eval_split="valid_seen,valid_unseen", num_workers=8
  )
  c.analyzer.max_step_skills = 5
  c.opid.update(lambda_skill=0.001, routing="critical_first", invalid_penalty=0.1)
  c.ppo.update(kl_coef=0.01, mini_batch_size=256, micro_batch_size=16, entropy_coef=0.001, dual_clip=3.0)
  c.optim.update(lr=1e-6, grad_clip=1.0)
  c.analyzer.update(backend="openai", max_completion_tokens=4096)
  c.train.update(steps=150, eval_every=5, eval_tasks=0)
  return c
