"""`python -m opid_jax.evaluate`'s work: the latest checkpoint of a run (or the plain model) plays a fixed task list
with no analyzer and no skills; the table lands in WORKDIR/eval_<split>.json and .md."""

from __future__ import annotations

import os

import jax
from etils import epath
from flax import nnx

from opid_jax.agent import env_setup
from opid_jax.batching import padding
from opid_jax.checkpoint import run_files
from opid_jax.envs.pool import EnvPool
from opid_jax.evaluation import tables
from opid_jax.generation.policy import build_generation
from opid_jax.generation.sampler import SamplingParams
from opid_jax.model import loading


def evaluate_run(config, workdir: str, num_tasks: int = 0) -> tuple[dict, str]:
  """Evaluates the latest checkpoint (or the plain model); returns (table, path of the files without suffix)."""
  env = env_setup.build(config.env, config.rollout)
  loaded = loading.load(
    config.model.path,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    attention=config.model.attention,
  )
  _, params = nnx.split(loaded.model)
  restored, step = run_files.restore_latest_params(workdir, params, config.checkpoint.dir or None)
  if restored is not None:
    nnx.update(loaded.model, restored)
  r = config.rollout
  prompt_buckets = padding.buckets_up_to(r.max_prompt_tokens, config.train.prompt_buckets)
  sampling = SamplingParams(
    temperature=r.eval_temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens
  )
  tasks = tables.first_per_split(env.eval_tasks, num_tasks)
  num_envs = max(1, min(len(tasks), config.train.eval_envs or r.tasks_per_batch * r.group_size))
  generation = build_generation(loaded, r, prompt_buckets, num_envs)
  policy = generation.generator(sampling, jax.random.PRNGKey(config.train.seed))
  with EnvPool(
    env.eval_factory or env.factory,
    num_envs=num_envs,
    num_workers=config.env.num_workers,
    timeout_s=config.env.step_timeout_s,
  ) as pool:
    table, trajectories = tables.evaluate(
      pool, policy, loaded.tokenizer, env.agent, tasks, r.max_prompt_tokens, r.truncation_side, progress=True
    )
  games = config.env.eval_games
  split = os.path.splitext(os.path.basename(games))[0] if games else config.env.eval_split
  name = f"eval_{split.replace(',', '+')}"
  report = {
    "checkpoint_iteration": step,
    "model": config.model.path,
    "split": split,
    "games": games,
    "tasks": len(tasks),
    "temperature": r.eval_temperature,
    "table": table,
  }
  base = epath.Path(workdir) / name
  tables.write_table(workdir, name, table, report=report, trajectories=trajectories)
  return table, str(base)
