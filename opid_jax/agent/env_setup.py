"""Builds an environment family from the config's `env` block: a picklable env factory, the task lists,
and how the agent talks to it (host-side, no JAX)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

from opid_jax.agent import rollout
from opid_jax.envs.base import Env
from opid_jax.errors import UserError


@dataclasses.dataclass
class EnvSetup:
  factory: Callable[[], Env]
  train_tasks: list[str]
  eval_tasks: list[str]
  agent: rollout.AgentSpec
  eval_factory: Callable[[], Env] | None = None  # when evaluation tasks need another env (None: factory)


def _require_path(path: str, what: str, hint: str) -> str:
  if not path or not os.path.exists(path):
    raise UserError(f"{what} not found at {path!r} ({hint})")
  return path


def _counting(env_cfg, rollout_cfg) -> EnvSetup:
  from opid_jax.envs import counting

  tasks = counting.task_ids(64)
  return EnvSetup(
    functools.partial(counting.CountingEnv, max_steps=rollout_cfg.max_steps),
    tasks[:48],
    tasks[48:],
    _alfworld_agent(rollout_cfg),
  )


def _alfworld_agent(rollout_cfg) -> rollout.AgentSpec:
  return rollout.alfworld_agent(rollout_cfg.history_window, rollout_cfg.max_steps, rollout_cfg.response_format)


def _only_think_action(env_cfg, rollout_cfg) -> None:
  if rollout_cfg.response_format != "think_action":
    raise UserError(
      f"rollout.response_format={rollout_cfg.response_format!r} is for ALFWorld (and the counting env); "
      f"env.name={env_cfg.name} uses think_action"
    )


def _alfworld(env_cfg, rollout_cfg) -> EnvSetup:
  from opid_jax.envs import alfworld

  _require_path(env_cfg.data_dir, "ALFWorld data", "run `make data` or `alfworld-download`, then set env.data_dir")
  try:
    if env_cfg.train_games:
      train = alfworld.read_game_list(env_cfg.data_dir, env_cfg.train_games)
    else:
      train = alfworld.list_games(env_cfg.data_dir, env_cfg.train_split)
    if env_cfg.eval_games:
      evals = alfworld.read_game_list(env_cfg.data_dir, env_cfg.eval_games)
    else:
      splits = env_cfg.eval_split.split(",")
      evals = [g for split in splits for g in alfworld.list_games(env_cfg.data_dir, split.strip())]
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from None
  factory = functools.partial(alfworld.AlfworldEnv, data_dir=env_cfg.data_dir, max_steps=rollout_cfg.max_steps)
  return EnvSetup(factory, train, evals, _alfworld_agent(rollout_cfg))


def _search_qa(env_cfg, rollout_cfg) -> EnvSetup:
  from opid_jax.envs import search_qa

  _only_think_action(env_cfg, rollout_cfg)
  train_path = _require_path(env_cfg.train_questions, "training questions", "set env.train_questions")
  eval_path = _require_path(env_cfg.eval_questions, "evaluation questions", "set env.eval_questions")
  factory = functools.partial(
    search_qa.SearchQAEnv,
    questions_path=train_path,
    retriever_url=env_cfg.retriever_url,
    topk=env_cfg.topk,
    max_turns=rollout_cfg.max_steps,
  )
  eval_factory = functools.partial(
    search_qa.SearchQAEnv,
    questions_path=eval_path,
    retriever_url=env_cfg.retriever_url,
    topk=env_cfg.topk,
    max_turns=rollout_cfg.max_steps,
  )
  return EnvSetup(
    factory,
    search_qa.list_questions(train_path),
    search_qa.list_questions(eval_path),
    rollout.search_agent(rollout_cfg.history_window, rollout_cfg.max_steps),
    eval_factory,
  )


def _webshop(env_cfg, rollout_cfg) -> EnvSetup:
  from opid_jax.envs.webshop import env as webshop, world as webshop_world

  _only_think_action(env_cfg, rollout_cfg)
  try:
    world = webshop_world.load_world(env_cfg.data_dir)
  except FileNotFoundError as e:
    raise UserError(str(e).splitlines()[0]) from None
  factory = functools.partial(webshop.WebShopEnv, data_dir=env_cfg.data_dir, max_steps=rollout_cfg.max_steps)
  return EnvSetup(
    factory,
    world.task_ids("train"),
    world.task_ids("test"),
    rollout.webshop_agent(rollout_cfg.history_window, rollout_cfg.max_steps),
  )


_BUILDERS = {"counting": _counting, "alfworld": _alfworld, "search_qa": _search_qa, "webshop": _webshop}


def build(env_cfg, rollout_cfg) -> EnvSetup:
  return _BUILDERS[env_cfg.name](env_cfg, rollout_cfg)
