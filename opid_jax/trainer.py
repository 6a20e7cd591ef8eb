"""The OPID training loop: rollout -> analyze (background) -> score -> advantages -> update -> log ->
checkpoint -> periodic evaluation. Every random choice derives from (seed, iteration), so a run resumed from
a checkpoint continues exactly as if it had never stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from opid_jax import checkpoint as ckpt_lib
from opid_jax import config_validation, evaluation, metrics as metrics_lib
from opid_jax.agent import rollout
from opid_jax.envs import registry
from opid_jax.envs.pool import EnvPool, TaskStream
from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import loading, padding
from opid_jax.model.sharding import use_rules
from opid_jax.parallel import distributed, mesh as mesh_lib
from opid_jax.rl import batch as batch_lib
from opid_jax.rl import minibatch_step, opid_samples, update
from opid_jax.rl.scoring import Scorer
from opid_jax.skills.backends import make_backend
from opid_jax.trajectory_dump import dump_trajectories

log = logging.getLogger(__name__)


def make_policy(sampler: Sampler, sampling: SamplingParams, key: jax.Array, stats: dict | None = None):
  """The rollout's policy callable: one sampler call per turn, each with its own derived key. `stats`, when
  given, accumulates generation seconds and tokens (the rest of a rollout is env and prompt work)."""
  calls = [0]

  def policy(prompt_ids):
    start = time.perf_counter()
    out = sampler.generate(prompt_ids, sampling, key=jax.random.fold_in(key, calls[0]))
    calls[0] += 1
    if stats is not None:
      stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - start
      stats["prompt_tokens"] = stats.get("prompt_tokens", 0) + sum(len(p) for p in prompt_ids)
      stats["new_tokens"] = stats.get("new_tokens", 0) + sum(len(t) for t in out.tokens)
    return list(zip(out.tokens, out.logprobs))

  return policy


def make_analyzer(config):
  a = config.analyzer
  settings = opid_settings(config)
  if a.backend == "none" or not settings.skills_enabled:
    return None
  common = dict(gamma=a.gamma, max_step_skills=a.max_step_skills)
  if a.backend == "openai":
    return make_backend("openai", base_url=a.base_url, model=a.model, api_key_env=a.api_key_env or None,
                        concurrency=a.concurrency, timeout_s=a.timeout_s, max_api_retries=a.max_api_retries,
                        json_mode=a.json_mode, **common)
  if a.backend == "local":
    from opid_jax.generation.chat import make_chat_fn
    return make_backend("local", chat_fn=make_chat_fn(a.model, max_new_tokens=1024), **common)
  return make_backend(a.backend, **common)


def opid_settings(config) -> opid_samples.OpidSettings:
  o = config.opid
  return opid_samples.OpidSettings(
      lambda_skill=o.lambda_skill, routing=o.routing, adv_norm=o.adv_norm, group_stats=o.group_stats,
      invalid_penalty=o.invalid_penalty, use_reference=config.ppo.kl_coef > 0,
      max_prompt_tokens=config.rollout.max_prompt_tokens)


def loss_config(config) -> update.LossConfig:
  p = config.ppo
  return update.LossConfig(clip_low=p.clip_eps, clip_high=p.clip_eps_high, dual_clip=p.dual_clip,
                           kl_coef=p.kl_coef, kl_estimator=p.kl_estimator, kl_clamp=p.kl_clamp,
                           entropy_coef=p.entropy_coef, temperature=config.rollout.temperature)


@dataclasses.dataclass
class Run:
  """Everything an iteration needs, built once."""
  config: Any
  mesh: Any
  rules: tuple
  loaded: loading.LoadedModel
  graphdef: Any
  tx: Any
  state: update.TrainState
  ref_params: Any
  sampler: Sampler
  scorer: Scorer
  env: registry.EnvSetup
  pool: EnvPool
  stream: TaskStream
  analyzer: Any
  writer: metrics_lib.MetricsWriter
  checkpointer: ckpt_lib.Checkpointer
  workdir: str = ""
  start_iteration: int = 0
  last_rollout: tuple = ((), None)  # (trajectories, analyses) of the latest iteration, for the dumps


def build_run(config, workdir: str) -> Run:
  config_validation.validate(config)
  mesh = mesh_lib.make_mesh(dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor))
  rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in config.mesh.rules)
  config_validation.validate_data_parallel(config, mesh_lib.data_parallel_size(mesh, rules))
  env = registry.build(config.env, config.rollout)
  loaded = loading.load(config.model.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                        remat=config.model.remat,
                        shardings=lambda var: mesh_lib.variable_sharding(var, mesh, rules))
  graphdef, params = nnx.split(loaded.model)
  tx = update.optimizer_from_config(config.optim, config.train.steps)
  state = update.init_train_state(params, tx)
  ref_params = jax.tree.map(jnp.copy, params) if config.ppo.kl_coef > 0 else None
  truncate = config.rollout.truncation_side == "left"
  prompt_buckets = padding.buckets_up_to(config.rollout.max_prompt_tokens, config.train.prompt_buckets)
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=prompt_buckets,
                    truncate_left=truncate)
  scorer = Scorer(loaded.model, loaded.pad_id, micro_batch=config.train.score_micro_batch,
                  prompt_buckets=prompt_buckets, response_buckets=config.train.response_buckets,
                  truncate_left=truncate)
  # Each process plays its contiguous share of the task groups in its own env pool.
  share = distributed.process_share(config.rollout.tasks_per_batch, "rollout.tasks_per_batch")
  num_envs = (share.stop - share.start) * config.rollout.group_size
  pool = EnvPool(env.factory, num_envs=num_envs, num_workers=config.env.num_workers,
                 timeout_s=config.env.step_timeout_s)
  stream = TaskStream(env.train_tasks, seed=config.train.seed)
  checkpointer = ckpt_lib.Checkpointer(config.checkpoint.dir or os.path.join(workdir, "checkpoints"),
                                       keep=config.checkpoint.keep, save_every=config.checkpoint.save_every,
                                       async_save=config.checkpoint.async_save)
  writer = metrics_lib.MetricsWriter(workdir, enabled=distributed.is_lead())
  run = Run(config, mesh, rules, loaded, graphdef, tx, state, ref_params, sampler, scorer, env, pool, stream,
            make_analyzer(config), writer, checkpointer, workdir)
  _maybe_restore(run)
  return run


def _maybe_restore(run: Run) -> None:
  latest = run.checkpointer.latest_step()
  if latest is None:
    run.writer.truncate_from(0)  # rows of an earlier attempt that died before its first checkpoint
    return
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), run.state)
  step, state, host = run.checkpointer.restore(latest, abstract)
  run.state = state
  run.stream.load_state_dict(host["task_stream"])
  run.start_iteration = int(host["iteration"])
  run.writer.truncate_from(run.start_iteration + 1)
  _sync_params(run)
  log.warning("resumed from iteration %d", run.start_iteration)


def _sync_params(run: Run) -> None:
  run.sampler.set_params(run.state.params)
  run.scorer.set_params(run.state.params)


def iteration_key(config, iteration: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.train.seed), iteration)


def batch_layout(run: Run) -> minibatch_step.BatchLayout:
  c = run.config
  return minibatch_step.BatchLayout(run.mesh, run.rules, c.ppo.micro_batch_size, run.loaded.pad_id,
                                    run.scorer.prompt_buckets, c.train.response_buckets, c.train.bucket_micro_batches)


def run_iteration(run: Run, iteration: int, timer: metrics_lib.PhaseTimer) -> dict[str, float]:
  config, settings = run.config, opid_settings(run.config)
  r = config.rollout
  sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)
  tasks = run.stream.next_tasks(r.tasks_per_batch)  # the same list on every process
  share = distributed.process_share(r.tasks_per_batch, "rollout.tasks_per_batch")
  with timer.phase("rollout"):
    gen_stats: dict = {}
    policy = distributed.Lockstep(make_policy(run.sampler, sampling, iteration_key(config, iteration), gen_stats))
    trajectories = rollout.run_groups(run.pool, policy, run.loaded.tokenizer, tasks[share], r.group_size,
                                      run.env.agent, r.max_prompt_tokens,
                                      first_group_id=iteration * r.tasks_per_batch + share.start,
                                      first_traj_id=share.start * r.group_size)
    policy.finish()
  handle = run.analyzer.analyze_many_async(trajectories) if run.analyzer is not None else None
  if jax.process_count() > 1:
    # Scoring and the update see every trajectory, in the single-process order, on every process.
    trajectories = distributed.concat_across_processes(trajectories)
    handle = _GatheredAnalyses(handle) if handle is not None else None

  def score(prompts, responses, params):
    return run.scorer.score(prompts, responses, temperature=r.temperature, params=params).logprobs

  with timer.phase("score"):
    samples, adv_metrics = opid_samples.build_samples(
        trajectories, score=score, params=run.state.params, ref_params=run.ref_params,
        tokenizer=run.loaded.tokenizer, settings=settings, analysis_handle=handle)
  run.last_rollout = (trajectories, handle.result() if handle is not None else None)
  ppo_metrics: dict[str, list[float]] = {}
  with timer.phase("update"):
    for epoch in range(config.ppo.epochs):
      parts = batch_lib.shuffled_minibatches(samples, config.ppo.mini_batch_size,
                                             seed=config.train.seed * 100003 + iteration * 101 + epoch)
      for part in parts:
        run.state, m = minibatch_step.optimizer_step(run.state, part, batch_layout(run), graphdef=run.graphdef,
                                                     tx=run.tx, cfg=loss_config(config),
                                                     with_ref=settings.use_reference)
        for k, v in distributed.fetch(m).items():
          ppo_metrics.setdefault(k, []).append(float(v))
    _sync_params(run)
  metrics = evaluation.trajectory_metrics(trajectories)
  metrics.update(adv_metrics)
  metrics.update({k: float(np.mean(v)) for k, v in ppo_metrics.items()})
  metrics["loss"] = metrics.get("ppo/loss", float("nan"))
  metrics["optimizer_steps"] = int(run.state.step)
  metrics["time/rollout_generation"] = gen_stats.get("seconds", 0.0)  # within time/rollout; the rest is env work
  metrics["rollout/new_tokens"] = gen_stats.get("new_tokens", 0)
  metrics["rollout/prompt_tokens"] = gen_stats.get("prompt_tokens", 0)
  if handle is not None:
    stats = handle.stats.as_dict(prefix="analyzer/")
    if jax.process_count() > 1:
      stats = distributed.sum_across_processes(stats, take_max=("analyzer/seconds",))
    metrics.update(stats)
  return metrics


class _GatheredAnalyses:
  """An analysis handle whose result() holds the analyses of every process (each ran its own share)."""

  def __init__(self, handle):
    self._handle = handle
    self.stats = handle.stats

  def result(self, timeout: float | None = None):
    return distributed.concat_across_processes(self._handle.result(timeout))


def run_evaluation(run: Run, iteration: int) -> dict[str, float]:
  c = run.config
  sampling = SamplingParams(temperature=c.rollout.eval_temperature, top_p=c.rollout.top_p, top_k=c.rollout.top_k,
                            max_new_tokens=c.rollout.max_new_tokens)
  policy = distributed.Lockstep(
      make_policy(run.sampler, sampling, jax.random.fold_in(iteration_key(c, iteration), 1 << 20)))
  tasks = evaluation.first_per_split(run.env.eval_tasks, c.train.eval_tasks)
  tasks = tasks[distributed.process_range(len(tasks))]
  own_pool = run.env.eval_factory is not None or c.train.eval_envs > 0
  num_envs = max(1, min(len(tasks), c.train.eval_envs or run.pool.num_envs))
  pool = run.pool if not own_pool else EnvPool(run.env.eval_factory or run.env.factory, num_envs,
                                               c.env.num_workers, c.env.step_timeout_s)
  try:
    _, trajectories = evaluation.evaluate(pool, policy, run.loaded.tokenizer, run.env.agent, tasks,
                                          c.rollout.max_prompt_tokens)
    policy.finish()
  finally:
    if pool is not run.pool:
      pool.close()
  table = evaluation.per_task_type(distributed.concat_across_processes(trajectories))
  if jax.process_index() == 0:
    _write_eval_table(run.workdir, iteration, table)
  metrics = {f"eval/{k}": v for k, v in table["all"].items()}
  for name, row in table.items():
    if name.startswith("split:"):
      metrics.update({f"eval/{name[len('split:'):]}/{k}": v for k, v in row.items()})
  return metrics


def _write_eval_table(workdir: str, iteration: int, table: dict) -> None:
  from etils import epath
  folder = epath.Path(workdir) / "eval"
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"iter_{iteration:06d}.json").write_text(json.dumps(table, indent=2))
  (folder / f"iter_{iteration:06d}.md").write_text(evaluation.markdown_table(table) + "\n")


def host_state(run: Run, iteration: int) -> dict:
  return {"iteration": iteration, "task_stream": run.stream.state_dict(), "config": run.config.to_dict()}


def train(config, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training; returns the last iteration's metrics."""
  os.makedirs(workdir, exist_ok=True) if "://" not in workdir else None
  last: dict[str, float] = {}
  run = build_run(config, workdir)
  lead = jax.process_index() == 0
  finished = False
  try:
    with use_rules(run.mesh, run.rules), ckpt_lib.PreemptionGuard() as guard:
      if config.train.eval_at_start and run.start_iteration == 0:
        timer = metrics_lib.PhaseTimer()
        with timer.phase("eval"):
          metrics = run_evaluation(run, 0)
        run.writer.write(0, {**metrics, **timer.as_metrics()})
      bar = tqdm.tqdm(range(run.start_iteration, config.train.steps), desc="iterations", disable=not lead,
                      initial=run.start_iteration, total=config.train.steps, dynamic_ncols=True)
      timer = metrics_lib.PhaseTimer(on_phase=lambda name: bar.set_postfix_str(name))
      for iteration in bar:
        metrics = run_iteration(run, iteration, timer)
        done = iteration + 1
        if lead:
          dump_trajectories(workdir, done, *run.last_rollout)
        periodic = config.train.eval_every and done % config.train.eval_every == 0
        if periodic or (config.train.eval_at_end and done == config.train.steps):
          with timer.phase("eval"):
            metrics.update(run_evaluation(run, done))
        # Logged, evaluation included, before the checkpoint: a kill anywhere before the save is durable redoes this
        # iteration exactly on restart and drops this row, so no row or evaluation is ever lost. A row's
        # time/checkpoint is therefore the previous iteration's save.
        phase_seconds = timer.as_metrics()
        metrics.update(phase_seconds)
        metrics["time/step"] = sum(phase_seconds.values())
        run.writer.write(done, metrics)
        last = metrics
        with timer.phase("checkpoint"):
          run.checkpointer.save(done, run.state, host_state(run, done), force=done == config.train.steps)
        if distributed.any_process(guard.requested):  # checked last: a signal during logging counts too
          run.checkpointer.save(done, run.state, host_state(run, done), force=True)
          log.warning("stop requested: saved iteration %d, exiting", done)
          break
      else:
        finished = True
  finally:
    run.checkpointer.wait()
    run.checkpointer.close()
    run.writer.close()
    run.pool.close()
    if run.analyzer is not None:
      run.analyzer.close()
  if finished and lead:
    report_run(workdir)
  return last


def report_run(workdir: str) -> None:
  """The closing summary table (printed and saved) and the learning-curve plot, from metrics.jsonl."""
  from etils import epath
  from opid_jax import plot, summary
  rows = plot.read_run(workdir)
  table = summary.summary_table(rows)
  (epath.Path(workdir) / "summary.md").write_text(table + "\n")
  print("\n" + table, flush=True)
  if "://" not in workdir:
    plot.plot_runs([workdir], os.path.join(workdir, "curves.png"))


def write_config(config, workdir: str) -> None:
  from etils import epath
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))


def restore_latest_params(config, workdir: str, params, checkpoint_dir: str | None = None):
  """The policy parameters of the latest checkpoint in the workdir, or None when there is none."""
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir or os.path.join(workdir, "checkpoints"))
  try:
    latest = checkpointer.latest_step()
    if latest is None:
      return None, None
    tx = update.optimizer_from_config(config.optim, config.train.steps)
    state = jax.eval_shape(lambda p: update.init_train_state(p, tx), params)
    shardings = jax.tree.map(lambda x: x.sharding, update.TrainState(params, None, None))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), state)
    abstract = abstract._replace(params=jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract.params, shardings.params))
    _, restored, _ = checkpointer.restore(latest, abstract)
    return restored.params, latest
  finally:
    checkpointer.close()


def evaluate_run(config, workdir: str, num_tasks: int = 0) -> tuple[dict, str]:
  """Evaluates the latest checkpoint (or the plain model); writes eval_<split>.json/.md in the workdir."""
  env = registry.build(config.env, config.rollout)
  loaded = loading.load(config.model.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
  _, params = nnx.split(loaded.model)
  restored, step = restore_latest_params(config, workdir, params, config.checkpoint.dir or None)
  if restored is not None:
    nnx.update(loaded.model, restored)
  prompt_buckets = padding.buckets_up_to(config.rollout.max_prompt_tokens, config.train.prompt_buckets)
  sampler = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=prompt_buckets,
                    truncate_left=config.rollout.truncation_side == "left")
  r = config.rollout
  sampling = SamplingParams(temperature=r.eval_temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)
  policy = make_policy(sampler, sampling, jax.random.PRNGKey(config.train.seed))
  tasks = evaluation.first_per_split(env.eval_tasks, num_tasks)
  num_envs = max(1, min(len(tasks), config.train.eval_envs or r.tasks_per_batch * r.group_size))
  with EnvPool(env.eval_factory or env.factory, num_envs=num_envs, num_workers=config.env.num_workers,
               timeout_s=config.env.step_timeout_s) as pool:
    table, _ = evaluation.evaluate(pool, policy, loaded.tokenizer, env.agent, tasks, r.max_prompt_tokens)
  from etils import epath
  out = epath.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  base = out / f"eval_{config.env.eval_split.replace(',', '+')}"
  report = {"checkpoint_iteration": step, "model": config.model.path, "split": config.env.eval_split,
            "tasks": len(tasks), "temperature": r.eval_temperature, "table": table}
  (base.parent / (base.name + ".json")).write_text(json.dumps(report, indent=2))
  (base.parent / (base.name + ".md")).write_text(evaluation.markdown_table(table) + "\n")
  return table, str(base)
