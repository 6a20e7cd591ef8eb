"""WebShop with the paper's settings: 16 goals x 8 rollouts, 15 steps, history 2, reward 10 on a perfect buy.

env.data_dir holds WebShop's items_shuffle / items_ins_v2 files (or a catalogue from
`python -m opid_jax.envs.webshop.catalogue --out=DIR`).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.path = "Qwen/Qwen2.5-3B-Instruct"
  c.rollout.update(
    tasks_per_batch=16,
    group_size=8,
    max_steps=15,
    history_window=2,
    max_prompt_tokens=4096,
    max_new_tokens=512,
    truncation_side="left",
    temperature=1.0,
    eval_temperature=0.4,
  )
  c.env.update(name="webshop", data_dir="data/webshop", num_workers=8)
  c.analyzer.max_step_skills = 5
  c.analyzer.update(backend="openai", max_completion_tokens=4096)
  c.opid.update(lambda_skill=0.001, routing="critical_first", invalid_penalty=0.1, adv_norm="mean")
  c.ppo.update(kl_coef=0.01, mini_batch_size=64, micro_batch_size=8, entropy_coef=0.001, dual_clip=3.0)
  c.optim.update(lr=1e-6)
  c.train.update(steps=150, eval_every=10, eval_tasks=500, prompt_buckets=(512, 1024, 2048, 4096))
  return c
