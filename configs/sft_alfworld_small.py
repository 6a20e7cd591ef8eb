"""Behaviour cloning of a small from-scratch Qwen3 policy on ALFWorld expert walkthroughs (issue #9's warm start).

  python -m opid_jax.sft --config=configs/sft_alfworld_small.py --workdir=runs/sft_small

With `model.path` empty the run first builds the policy: a byte-level BPE tokenizer trained on the texts of the
SFT examples and a random Qwen3 model of `small_policy`'s shape, saved in WORKDIR/init_policy. The examples are
replayed once from the real games (cached as JSON lines in `data.cache`). The trained policy is exported to
WORKDIR/policy, which RL configs take as `model.path`.
"""

import ml_collections

from configs import base


def get_config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(path="", dtype="float32", param_dtype="float32", remat=False, attention="auto")
  )
  c.small_policy = ml_collections.ConfigDict(
    dict(
      vocab_size=1024,
      hidden_size=192,
      num_layers=4,
      num_heads=3,
      num_kv_heads=1,
      head_dim=64,
      intermediate_size=576,
      seed=0,
    )
  )
  c.mesh = base.get_config().mesh
  c.data = ml_collections.ConfigDict(
    dict(
      data_dir="data/alfworld",
      split="train",
      num_games=800,  # games of the split (a seeded sample) whose walkthroughs are replayed
      heldout_games=40,  # the last games of that sample: held-out NLL, never trained on
      seed=0,
      cache="",  # empty: WORKDIR/expert_steps.jsonl
      num_workers=2,
      history_window=1,
      max_prompt_tokens=1024,
      skill_share_episode=0.2,  # share of examples whose prompt carries the episode skill (the walkthrough)
      skill_share_step=0.2,  # share that carries the step skill ("Do '<expert action>' now")
    )
  )
  c.optim = ml_collections.ConfigDict(
    dict(lr=2e-3, warmup_steps=30, schedule="cosine", weight_decay=0.01, grad_clip=1.0, b1=0.9, b2=0.95, eps=1e-8)
  )
  c.train = ml_collections.ConfigDict(
    dict(
      steps=300,
      batch_size=32,
      micro_batch_size=8,
      seed=0,
      eval_every=100,
      bucket_micro_batches=True,
      prompt_buckets=(256, 384, 512, 768, 1024),
      response_buckets=(32,),
    )
  )
  c.checkpoint = ml_collections.ConfigDict(dict(save_every=50, keep=2, async_save=True))
  return c
