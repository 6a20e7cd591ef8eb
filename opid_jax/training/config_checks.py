"""Checks a run config before anything is compiled; every problem is one line naming the field."""

from __future__ import annotations

import os

from opid_jax.agent.rollout import RESPONSE_FORMATS
from opid_jax.batching import packing
from opid_jax.errors import UserError
from opid_jax.generation.policy import ENGINES
from opid_jax.model import attention
from opid_jax.rl.advantages import ADV_NORMS, GROUP_STATS
from opid_jax.rl.loss import KL_ESTIMATORS
from opid_jax.skills.backends import BACKENDS as ANALYZER_BACKENDS
from opid_jax.skills.routing import ROUTING_MODES
from opid_jax.training import algo_rows

DTYPES = ("float32", "bfloat16")
ENV_NAMES = ("alfworld", "search_qa", "webshop", "counting")
SCHEDULES = ("constant", "cosine", "linear")
TRUNCATION_SIDES = ("left", "error")


def _one_of(name, value, allowed):
  if value not in allowed:
    raise UserError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _at_least(name, value, low):
  if value < low:
    raise UserError(f"{name}={value} must be >= {low}")


def _above(name, value, low):
  if value <= low:
    raise UserError(f"{name}={value} must be > {low}")


def _in_range(name, value, low, high, low_open=False, high_open=False):
  bad = (value <= low if low_open else value < low) or (value >= high if high_open else value > high)
  if bad:
    raise UserError(f"{name}={value} must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def validate_optim(q) -> None:
  """The `optim` block, shared by RL and SFT: values AdamW would turn into no learning (or NaN)."""
  _in_range("optim.lr", q.lr, 0.0, 1.0, low_open=True)
  _one_of("optim.schedule", q.schedule, SCHEDULES)
  _at_least("optim.warmup_steps", q.warmup_steps, 0)
  _at_least("optim.grad_clip", q.grad_clip, 0.0)  # 0 turns clipping off
  _at_least("optim.weight_decay", q.weight_decay, 0.0)
  # b = 1 freezes Adam's moment at its zero start (and its bias correction divides by 0).
  _in_range("optim.b1", q.b1, 0.0, 1.0, high_open=True)
  _in_range("optim.b2", q.b2, 0.0, 1.0, high_open=True)
  _above("optim.eps", q.eps, 0.0)


def updates_per_iteration(c) -> int:
  """The most optimizer updates one RL iteration can make: ppo.epochs passes over at most
  tasks_per_batch x group_size x max_steps step samples, one update per mini-batch."""
  r = c.rollout
  return c.ppo.epochs * -(-r.tasks_per_batch * r.group_size * r.max_steps // c.ppo.mini_batch_size)


def validate(c) -> None:
  """Every block of an RL config; the first problem raises one UserError naming the field."""
  _one_of("model.dtype", c.model.dtype, DTYPES)
  _one_of("model.param_dtype", c.model.param_dtype, DTYPES)
  if not c.model.path:
    raise UserError("model.path is empty: give an HF folder, a hub id, or a .gguf file")
  _one_of("model.attention", c.model.attention, attention.IMPLEMENTATIONS)
  _one_of("model.score_dtype", c.model.score_dtype, ("",) + DTYPES)
  algo_rows.validate(c)
  _validate_rollout(c.rollout)
  _one_of("env.name", c.env.name, ENV_NAMES)
  _at_least("env.num_workers", c.env.num_workers, 1)
  _above("env.step_timeout_s", c.env.step_timeout_s, 0.0)
  for key in ("train_games", "eval_games"):
    if c.env.get(key) and c.env.name != "alfworld":
      raise UserError(f"env.{key} lists ALFWorld games but env.name={c.env.name}; leave it empty")
  _validate_analyzer(c.analyzer, algo_rows.needs_analyzer(c))
  _validate_opid(c.opid, c.analyzer)
  _validate_ppo(c.ppo)
  validate_optim(c.optim)
  _validate_train(c)


def _validate_rollout(r) -> None:
  _at_least("rollout.tasks_per_batch", r.tasks_per_batch, 1)
  if r.group_size < 2:
    raise UserError(
      f"rollout.group_size={r.group_size} must be >= 2: GRPO centres each return on its task's group, "
      f"so a group of one trajectory gets an episode advantage of 0"
    )
  _in_range("rollout.temperature", r.temperature, 0.0, 10.0, low_open=True)
  _in_range("rollout.top_p", r.top_p, 0.0, 1.0, low_open=True)
  _at_least("rollout.top_k", r.top_k, 0)
  _at_least("rollout.max_new_tokens", r.max_new_tokens, 1)
  _at_least("rollout.max_prompt_tokens", r.max_prompt_tokens, 8)
  _one_of("rollout.truncation_side", r.truncation_side, TRUNCATION_SIDES)
  _at_least("rollout.history_window", r.history_window, 0)
  _at_least("rollout.max_steps", r.max_steps, 1)
  _in_range("rollout.eval_temperature", r.eval_temperature, 0.0, 10.0)
  _one_of("rollout.response_format", r.response_format, RESPONSE_FORMATS)
  _one_of("rollout.engine", r.engine, ENGINES)
  _at_least("rollout.slots", r.slots, 0)
  _at_least("rollout.decode_steps", r.decode_steps, 1)


def _validate_analyzer(a, uses_analyzer: bool) -> None:
  _one_of("analyzer.backend", a.backend, ANALYZER_BACKENDS)
  endpoint = a.base_url and a.model and a.api_key_env and os.environ.get(a.api_key_env)
  if a.backend == "openai" and uses_analyzer and not endpoint:
    raise UserError(
      "analyzer.backend=openai (the paper's LLM analyzer) needs --config.analyzer.base_url, --config.analyzer.model "
      "and --config.analyzer.api_key_env (the NAME of a set environment variable holding the key); offline, "
      "--config.analyzer.backend=expert writes skills from the game's walkthrough (a privileged teacher, not OPID)"
    )
  if a.backend == "local" and not a.model:
    raise UserError("analyzer.backend=local needs analyzer.model (a model path for the JAX sampler)")
  _at_least("analyzer.max_step_skills", a.max_step_skills, 0)
  _in_range("analyzer.gamma", a.gamma, 0.0, 1.0)
  _at_least("analyzer.concurrency", a.concurrency, 1)
  _above("analyzer.timeout_s", a.timeout_s, 0.0)
  _at_least("analyzer.max_api_retries", a.max_api_retries, 0)


def _validate_opid(o, a) -> None:
  _one_of("opid.routing", o.routing, ROUTING_MODES)
  _one_of("opid.adv_norm", o.adv_norm, ADV_NORMS)
  _one_of("opid.group_stats", o.group_stats, GROUP_STATS)
  _at_least("opid.lambda_skill", o.lambda_skill, 0.0)
  _at_least("opid.invalid_penalty", o.invalid_penalty, 0.0)
  if o.lambda_skill > 0 and o.routing == "step_only" and a.backend != "none" and a.max_step_skills == 0:
    raise UserError(
      "analyzer.max_step_skills=0 with opid.routing=step_only injects no skill: the skill advantage "
      "is 0 (set opid.lambda_skill=0 for plain GRPO)"
    )


def _validate_ppo(p) -> None:
  _in_range("ppo.clip_eps", p.clip_eps, 0.0, 1.0, low_open=True)
  _in_range("ppo.clip_eps_high", p.clip_eps_high, 0.0, 10.0, low_open=True)
  if p.dual_clip != 0 and p.dual_clip <= 1:
    raise UserError(f"ppo.dual_clip={p.dual_clip} must be 0 (off) or > 1")
  _at_least("ppo.epochs", p.epochs, 1)
  _at_least("ppo.micro_batch_size", p.micro_batch_size, 1)
  _at_least("ppo.mini_batch_size", p.mini_batch_size, 1)
  if p.mini_batch_size % p.micro_batch_size:
    raise UserError(
      f"ppo.mini_batch_size={p.mini_batch_size} is not a multiple of ppo.micro_batch_size={p.micro_batch_size}"
    )
  _one_of("ppo.kl_estimator", p.kl_estimator, KL_ESTIMATORS)
  _at_least("ppo.kl_coef", p.kl_coef, 0.0)
  _above("ppo.kl_clamp", p.kl_clamp, 0.0)  # the KL term is clipped to [-kl_clamp, kl_clamp]
  _at_least("ppo.entropy_coef", p.entropy_coef, 0.0)


def _validate_train(c) -> None:
  r = c.rollout
  _at_least("train.steps", c.train.steps, 1)
  # scaffold.build_trainable stretches the schedule over train.steps updates, as if an iteration made one.
  updates = updates_per_iteration(c)
  if c.optim.schedule != "constant" and updates > 1:
    raise UserError(
      f"optim.schedule={c.optim.schedule!r} decays over train.steps={c.train.steps} optimizer updates, "
      f"but an iteration can make up to {updates} (ppo.epochs x mini-batches): the learning rate would "
      f"reach 0 early; use optim.schedule=constant"
    )
  _at_least("train.eval_every", c.train.eval_every, 0)
  _at_least("train.eval_tasks", c.train.eval_tasks, 0)
  _at_least("train.eval_envs", c.train.eval_envs, 0)
  _at_least("train.score_micro_batch", c.train.score_micro_batch, 1)
  _validate_packing(c)
  _at_least("checkpoint.keep", c.checkpoint.keep, 1)
  _at_least("checkpoint.save_every", c.checkpoint.save_every, 1)
  if max(c.train.prompt_buckets) < r.max_prompt_tokens:
    raise UserError(
      f"train.prompt_buckets (largest {max(c.train.prompt_buckets)}) must reach "
      f"rollout.max_prompt_tokens={r.max_prompt_tokens}"
    )
  if max(c.train.response_buckets) < r.max_new_tokens:
    raise UserError(
      f"train.response_buckets (largest {max(c.train.response_buckets)}) must reach "
      f"rollout.max_new_tokens={r.max_new_tokens}"
    )


def _validate_packing(c) -> None:
  _at_least("train.pack_length", c.train.pack_length, 0)
  _at_least("train.score_micro_batch_tokens", c.train.score_micro_batch_tokens, 1)
  _at_least("ppo.micro_batch_tokens", c.ppo.micro_batch_tokens, 1)
  longest = c.rollout.max_prompt_tokens + c.rollout.max_new_tokens
  if c.train.packing and 0 < c.train.pack_length < longest:
    raise UserError(
      f"train.pack_length={c.train.pack_length} cannot hold a step of rollout.max_prompt_tokens + "
      f"rollout.max_new_tokens = {longest} tokens; raise it (or 0: {packing.row_length_for(longest)})"
    )


def validate_data_parallel(c, data_parallel_size: int) -> None:
  """Batch sizes must split evenly over the data-parallel devices."""
  for name in ("micro_batch_size",):
    value = c.ppo[name]
    if value % data_parallel_size:
      raise UserError(
        f"ppo.{name}={value} is not divisible by the data-parallel size {data_parallel_size} (mesh data x fsdp)"
      )
  if c.train.score_micro_batch % data_parallel_size:
    raise UserError(
      f"train.score_micro_batch={c.train.score_micro_batch} is not divisible by the "
      f"data-parallel size {data_parallel_size}"
    )
