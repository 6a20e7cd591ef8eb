"""Every knob of an OPID run, with the paper's ALFWorld-scale defaults (method.md).

Benchmarks override a few fields in their own files; users override any field on the command line:
  python -m opid_jax.train --config=configs/alfworld.py --config.opid.routing=step_only
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(
    dict(
      path="Qwen/Qwen2.5-3B-Instruct",  # HF folder, hub id, or .gguf file
      dtype="bfloat16",  # compute dtype
      param_dtype="float32",
      remat=True,  # recompute each layer's activations in the backward pass
      attention="auto",  # xla | chunked | cudnn (GPU) | splash (TPU) | auto (per backend; model/attention.py)
      # Compute dtype of the scoring passes (old, reference, skill; empty: as `dtype`). float32 by default: in bf16,
      # SmolLM2-135M's skill signal |logp_skill - logp_old| carried 17.5 % rounding error (benchmarks/signal_noise.py)
      score_dtype="float32",
    )
  )

  # Device mesh: -1 fills with the remaining devices. Logical axis -> mesh axes rules shard the model.
  c.mesh = ml_collections.ConfigDict(
    dict(
      data=-1,
      fsdp=1,
      tensor=1,
      rules=(
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("mlp", "tensor"),
        ("q_heads", "tensor"),
        ("kv_heads", "tensor"),
      ),
    )
  )

  c.rollout = ml_collections.ConfigDict(
    dict(
      tasks_per_batch=16,  # B groups per iteration
      group_size=8,  # N rollouts per task
      temperature=1.0,
      top_p=1.0,
      top_k=0,
      max_new_tokens=512,
      max_prompt_tokens=2048,
      truncation_side="left",  # "left" keeps the end of long prompts; "error" refuses them
      history_window=5,
      max_steps=30,
      eval_temperature=0.4,
      response_format="think_action",  # think_action (<think>..</think><action>..</action>) | action (ALFWorld)
      # static: each turn, one batch over every running episode, decoded until its longest response ends.
      # continuous: slots decode side by side; an episode's action goes to its env the moment its response ends.
      engine="static",
      slots=0,  # continuous: sequences decoded at once (0: one per env of the rollout pool)
      decode_steps=8,  # continuous: tokens per slot per device call (the host syncs once per call)
    )
  )

  c.env = ml_collections.ConfigDict(
    dict(
      name="alfworld",  # alfworld | search_qa | webshop | counting (a tiny text env for smoke tests)
      data_dir="data/alfworld",
      train_split="train",
      eval_split="valid_unseen",  # ALFWorld: one split or several joined by commas (rows per split)
      train_games="",  # ALFWorld: a file of task ids, one per line, used instead of train_split's games
      eval_games="",  # ALFWorld: the same for evaluation (rows per split the ids name), instead of eval_split
      num_workers=4,
      step_timeout_s=120.0,
      retriever_url="http://127.0.0.1:8000/retrieve",  # search_qa: a Search-R1 /retrieve server
      topk=3,
      train_questions="",  # search_qa: jsonl with id, question, golden_answers
      eval_questions="",
    )
  )

  c.analyzer = ml_collections.ConfigDict(
    dict(
      backend="openai",  # openai (the paper's LLM analyzer) | local | expert (privileged: the walkthrough) | none
      base_url="",
      model="",
      api_key_env="",  # the NAME of the environment variable holding the key; never the key itself
      concurrency=16,
      timeout_s=120.0,
      max_api_retries=5,
      json_mode=False,
      gamma=0.95,
      max_step_skills=5,  # the request asks for at most min(max_step_skills, T) critical steps
      max_completion_tokens=4096,  # the analyzer reply's token cap (sent as max_tokens)
    )
  )

  c.opid = ml_collections.ConfigDict(
    dict(
      lambda_skill=0.001,
      routing="critical_first",  # critical_first | episode_only | step_only | superimpose | none
      adv_norm="mean_std",  # mean_std | mean
      group_stats="steps",  # steps (every step sample) | trajectories (one value per trajectory)
      invalid_penalty=0.1,
    )
  )

  # The paper's comparison rows and GiGPO as one switch (training/algo_rows.py, docs in the README's paper_rows).
  c.algo = ml_collections.ConfigDict(
    dict(
      name="opid",  # opid | grpo | gigpo | skill_grpo | sdar | opsd | grpo_opsd | rlsd | skill_sd
      step_weight=-1.0,  # GiGPO's step-level term A += w * A_step on any row; -1: the row's default (gigpo 1, else 0)
      gamma=0.95,  # GiGPO: discount of the per-step returns inside step groups
      sdar_coef=0.01,  # sdar, opsd, grpo_opsd: weight of the distillation loss
      sdar_beta=5.0,  # sdar, opsd: gate sharpness (grpo_opsd uses 0: a constant gate of 0.5)
      rlsd_lambda=0.5,  # rlsd: the reweighting's initial share, decayed linearly to 0
      rlsd_warmdown=100,  # rlsd: iterations of that decay (0: constant)
      rlsd_eps=0.2,  # rlsd: clip of the per-token weight to [1 - eps, 1 + eps]
      skill_sd_coef=0.001,  # skill_sd: weight of the importance-weighted reverse-KL
    )
  )

  c.ppo = ml_collections.ConfigDict(
    dict(
      clip_eps=0.2,
      clip_eps_high=0.2,
      dual_clip=3.0,  # the dual-clip constant c > 1 (as the official scripts); 0 disables
      epochs=1,
      mini_batch_size=64,  # step samples per optimizer update
      micro_batch_size=8,  # step samples per forward/backward pass without packing (gradients accumulate exactly)
      micro_batch_tokens=8192,  # with train.packing: token slots per forward/backward pass
      kl_coef=0.01,
      kl_estimator="k3",  # k1 | k2 | k3
      kl_clamp=10.0,
      entropy_coef=0.001,  # the entropy bonus of the official ALFWorld and WebShop scripts
    )
  )

  c.optim = ml_collections.ConfigDict(
    dict(
      lr=1e-6,
      warmup_steps=0,
      schedule="constant",  # constant | cosine | linear
      weight_decay=0.01,
      grad_clip=1.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
    )
  )

  c.train = ml_collections.ConfigDict(
    dict(
      steps=150,
      seed=0,
      eval_every=0,  # 0 disables periodic evaluation
      eval_tasks=32,  # the first N tasks of each evaluation split (a fixed list); 0: all of them
      eval_envs=0,  # envs played at once during evaluation (0: the training pool's; more: bigger generation batches)
      eval_at_start=False,  # evaluate the initial policy before the first iteration (logged at step 0)
      eval_at_end=False,  # evaluate after the last iteration
      packing=True,  # pack step samples into rows of pack_length tokens for scoring and the update
      pack_length=0,  # tokens per packed row, >= max_prompt_tokens + max_new_tokens; 0: that sum's next power of 2
      score_micro_batch_tokens=16384,  # with packing: token slots per scoring pass
      score_micro_batch=8,  # without packing: samples per scoring pass
      bucket_micro_batches=True,  # without packing: pad each update micro-batch to its own length bucket (False: one shape per step)
      prompt_buckets=(256, 512, 1024, 2048),
      response_buckets=(64, 128, 256, 512),
    )
  )

  c.checkpoint = ml_collections.ConfigDict(
    dict(
      dir="",  # empty: WORKDIR/checkpoints
      save_every=10,
      keep=3,
      async_save=True,
    )
  )
  return c
