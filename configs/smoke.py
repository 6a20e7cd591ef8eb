"""A seconds-long run of the whole loop on the counting env: for tests and a first look (CPU).

python -m opid_jax.train --config=configs/smoke.py --workdir=/tmp/smoke --config.model.path=DIR
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.path = ""  # set on the command line: any small HF folder or .gguf file
  c.model.dtype = "float32"
  c.model.remat = False
  c.mesh.data = -1
  c.rollout.update(
    tasks_per_batch=2, group_size=2, max_new_tokens=8, max_prompt_tokens=256, history_window=1, max_steps=3
  )
  c.env.update(name="counting", num_workers=1, step_timeout_s=60.0)
  c.analyzer.update(backend="expert", max_step_skills=2)
  c.ppo.update(mini_batch_size=8, micro_batch_size=4)
  c.optim.update(lr=1e-3)
  c.train.update(steps=2, score_micro_batch=4, prompt_buckets=(128, 256), response_buckets=(8,), eval_tasks=4)
  c.checkpoint.update(save_every=1, keep=5)
  return c
