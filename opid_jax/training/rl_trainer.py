"""The OPID training loop: rollout -> analyze (background) -> score -> advantages -> update -> log ->
checkpoint -> periodic eval_tables. Every random choice derives from (seed, iteration), so a run resumed from
a checkpoint continues exactly as if it had never stopped."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from opid_jax.agent import env_setup
from opid_jax.agent.pipelined_rollout import play_groups
from opid_jax.batching import packing, padding
from opid_jax.envs.pool import EnvPool, TaskStream
from opid_jax.evaluation import tables as eval_tables
from opid_jax.generation.policy import Generation, build_generation, generation_metrics
from opid_jax.generation.sampler import SamplingParams
from opid_jax.parallel import distributed, mesh as mesh_lib
from opid_jax.rl import algorithms, batch as batch_lib, minibatch_step, opid_samples, update
from opid_jax.rl.scoring import Packing, Scorer
from opid_jax.skills.backends import make_backend
from opid_jax.skills.bank import SkillBank
from opid_jax.training import algo_rows, config_checks, flops as flops_lib, metrics as metrics_lib, scaffold
from opid_jax.training.trajectory_dump import dump_trajectories

log = logging.getLogger(__name__)


def make_analyzer(config):
  a = config.analyzer
  if not algo_rows.needs_analyzer(config):
    return None
  common = dict(gamma=a.gamma, max_step_skills=a.max_step_skills, max_completion_tokens=a.max_completion_tokens)
  if a.backend == "openai":
    return make_backend(
      "openai",
      base_url=a.base_url,
      model=a.model,
      api_key_env=a.api_key_env or None,
      concurrency=a.concurrency,
      timeout_s=a.timeout_s,
      max_api_retries=a.max_api_retries,
      json_mode=a.json_mode,
      **common,
    )
  if a.backend == "local":
    from opid_jax.generation.chat import make_chat_fn

    return make_backend("local", chat_fn=make_chat_fn(a.model, max_new_tokens=a.max_completion_tokens), **common)
  return make_backend(a.backend, **common)


def opid_settings(config) -> opid_samples.OpidSettings:
  o, row = config.opid, algo_rows.row_of(config)
  return opid_samples.OpidSettings(
    lambda_skill=algo_rows.lambda_skill(config),
    routing=o.routing,
    adv_norm=o.adv_norm,
    group_stats=o.group_stats,
    invalid_penalty=o.invalid_penalty,
    use_reference=config.ppo.kl_coef > 0,
    max_prompt_tokens=config.rollout.max_prompt_tokens,
    truncation_side=config.rollout.truncation_side,
    teacher=row.teacher,
    step_weight=algo_rows.step_weight(config),
    gamma=config.algo.gamma,
    rlsd_eps=config.algo.rlsd_eps,
  )


def iteration_settings(config, iteration: int) -> opid_samples.OpidSettings:
  """The settings of one iteration: RLSD's reweighting share decays with the iteration index."""
  settings = opid_settings(config)
  if not algo_rows.row_of(config).rlsd:
    return settings
  lam = algorithms.rlsd_lambda(iteration, config.algo.rlsd_lambda, config.algo.rlsd_warmdown)
  return dataclasses.replace(settings, rlsd_lambda=lam)


def loss_config(config) -> update.LossConfig:
  p = config.ppo
  return update.LossConfig(
    clip_low=p.clip_eps,
    clip_high=p.clip_eps_high,
    dual_clip=p.dual_clip,
    kl_coef=p.kl_coef,
    kl_estimator=p.kl_estimator,
    kl_clamp=p.kl_clamp,
    entropy_coef=p.entropy_coef,
    temperature=config.rollout.temperature,
    pg_weight=algo_rows.row_of(config).pg_weight,
    distill=algo_rows.row_of(config).distill,
    distill_coef=algo_rows.distill_coef(config),
    gate_beta=algo_rows.gate_beta(config),
  )


@dataclasses.dataclass(kw_only=True)
class Run:
  """Everything an iteration needs, built once."""

  config: Any
  model: scaffold.Trainable  # mesh, rules, loaded model, optimizer, train state
  ref_params: Any
  generation: Generation  # the sampler, and the continuous engine when rollout.engine says so
  scorer: Scorer
  env: env_setup.EnvSetup
  pool: EnvPool
  stream: TaskStream
  analyzer: Any
  writer: metrics_lib.MetricsWriter
  checkpointer: Any
  workdir: str = ""
  start_iteration: int = 0
  bank: SkillBank | None = None  # Skill-GRPO: episode skills by task type for the student's rollout prompts


@dataclasses.dataclass(frozen=True)
class Rollout:
  """An iteration's trajectories, (when an analyzer ran) their analyses in the same order, and its step samples."""

  trajectories: tuple = ()
  analyses: Any = None
  samples: tuple = ()


def build_run(config, workdir: str) -> Run:
  config_checks.validate(config)
  model = scaffold.build_trainable(config, config.model.path)
  config_checks.validate_data_parallel(config, mesh_lib.data_parallel_size(model.mesh, model.rules))
  env = env_setup.build(config.env, config.rollout)
  loaded, params = model.loaded, model.state.params
  ref_params = jax.tree.map(jnp.copy, params) if config.ppo.kl_coef > 0 else None
  truncate = config.rollout.truncation_side == "left"
  prompt_buckets = padding.buckets_up_to(config.rollout.max_prompt_tokens, config.train.prompt_buckets)
  scorer = Scorer(
    loaded.model,
    loaded.pad_id,
    micro_batch=config.train.score_micro_batch,
    prompt_buckets=prompt_buckets,
    response_buckets=config.train.response_buckets,
    truncate_left=truncate,
    packing=score_packing(config, model),
    graphdef=scaffold.graphdef_in_dtype(loaded.model, config.model.score_dtype),
  )
  # Each process plays its contiguous share of the task groups in its own env pool.
  share = distributed.process_share(config.rollout.tasks_per_batch, "rollout.tasks_per_batch")
  num_envs = (share.stop - share.start) * config.rollout.group_size
  pool = EnvPool(
    env.factory, num_envs=num_envs, num_workers=config.env.num_workers, timeout_s=config.env.step_timeout_s
  )
  run = Run(
    config=config,
    model=model,
    ref_params=ref_params,
    generation=build_generation(loaded, config.rollout, prompt_buckets, num_envs),
    scorer=scorer,
    env=env,
    pool=pool,
    stream=TaskStream(env.train_tasks, seed=config.train.seed),
    analyzer=make_analyzer(config),
    writer=metrics_lib.MetricsWriter(workdir, enabled=distributed.is_lead()),
    checkpointer=scaffold.make_checkpointer(config, workdir),
    workdir=workdir,
    bank=SkillBank() if algo_rows.row_of(config).student_skills else None,
  )
  start, model.state, host = scaffold.restore_or_start(run.checkpointer, run.writer, model.state, "iteration")
  if host is not None:
    run.stream.load_state_dict(host["task_stream"])
    if run.bank is not None:
      run.bank = SkillBank(host.get("skill_bank"))
    run.start_iteration = start
    _sync_params(run)
  return run


def pack_length(config) -> int:
  """train.pack_length, or (0) the power of two that holds the longest step; 0 when packing is off."""
  if not config.train.packing:
    return 0
  longest = config.rollout.max_prompt_tokens + config.rollout.max_new_tokens
  return config.train.pack_length or packing.row_length_for(longest)


def score_packing(config, model: scaffold.Trainable) -> Packing | None:
  if not config.train.packing:
    return None
  dp = mesh_lib.data_parallel_size(model.mesh, model.rules)
  return Packing(pack_length(config), config.train.score_micro_batch_tokens, row_multiple=dp)


def _sync_params(run: Run) -> None:
  run.generation.set_params(run.model.state.params)
  run.scorer.set_params(run.model.state.params)


def iteration_key(config, iteration: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.train.seed), iteration)


def batch_layout(run: Run) -> minibatch_step.BatchLayout:
  c = run.config
  return minibatch_step.BatchLayout(
    run.model.mesh,
    run.model.rules,
    c.ppo.micro_batch_size,
    run.model.loaded.pad_id,
    run.scorer.prompt_buckets,
    c.train.response_buckets,
    c.train.bucket_micro_batches,
    pack_length=pack_length(c),
    micro_batch_tokens=c.ppo.micro_batch_tokens,
  )


def run_iteration(run: Run, iteration: int, timer: metrics_lib.PhaseTimer) -> tuple[dict[str, float], Rollout]:
  """One iteration: rollout, analysis (in the background), scoring into step samples, PPO updates."""
  config, settings = run.config, iteration_settings(run.config, iteration)
  with timer.phase("rollout"):
    trajectories, gen_stats = _play(run, iteration)
  handle = run.analyzer.analyze_many_async(trajectories) if run.analyzer is not None else None
  if jax.process_count() > 1:
    # Scoring and the update see every trajectory, in the single-process order, on every process.
    trajectories = distributed.concat_across_processes(trajectories)
    handle = _GatheredAnalyses(handle) if handle is not None else None

  score_outputs, score_pairs = [], []

  def score(prompts, responses, params, units=None):
    out = run.scorer.score(prompts, responses, temperature=config.rollout.temperature, params=params, units=units)
    score_outputs.append(out)
    score_pairs.extend((len(p), len(r)) for p, r in zip(prompts, responses))
    return out.logprobs

  with timer.phase("score"):
    samples, adv_metrics = opid_samples.build_samples(
      trajectories,
      score=score,
      params=run.model.state.params,
      ref_params=run.ref_params,
      tokenizer=run.model.loaded.tokenizer,
      settings=settings,
      analysis_handle=handle,
    )
  record = Rollout(tuple(trajectories), handle.result() if handle is not None else None, tuple(samples))
  if run.bank is not None:
    run.bank.update(trajectories, record.analyses)
  processed = sum(o.processed_tokens for o in score_outputs)
  if processed:
    adv_metrics["perf/pad_share_score"] = 1.0 - sum(o.real_tokens for o in score_outputs) / processed
  if settings.skills_enabled and config.train.packing:
    # No-skill and skill prompts of a step longer together than a packed row are scored in different rows.
    adv_metrics["perf/split_skill_pairs"] = sum(o.split_units for o in score_outputs)
  with timer.phase("update"):
    ppo_metrics = _update(run, samples, iteration, settings.use_reference)
  metrics = {**eval_tables.trajectory_metrics(trajectories), **adv_metrics, **ppo_metrics}
  metrics.update(_perf_metrics(run, trajectories, score_pairs, samples, timer))
  metrics["loss"] = metrics.get("ppo/loss", float("nan"))
  metrics["optimizer_steps"] = int(run.model.state.step)
  metrics["time/rollout_generation"] = gen_stats.get("seconds", 0.0)  # within time/rollout; the rest is env work
  metrics["rollout/new_tokens"] = gen_stats.get("new_tokens", 0)
  metrics["rollout/prompt_tokens"] = gen_stats.get("prompt_tokens", 0)
  metrics.update(generation_metrics(gen_stats))
  if handle is not None:
    stats = handle.stats.as_dict(prefix="analyzer/")
    if jax.process_count() > 1:
      stats = distributed.sum_across_processes(stats, take_max=("analyzer/seconds",))
    metrics.update(stats)
  return metrics, record


def _perf_metrics(run: Run, trajectories, score_pairs, samples, timer: metrics_lib.PhaseTimer) -> dict[str, float]:
  """Model FLOP/s (and MFU on a known accelerator) of each phase, from the real, unpadded tokens."""
  cfg = run.model.loaded.config
  steps = [(len(s.prompt_ids), len(s.response_ids)) for t in trajectories for s in t.steps]
  flops = {
    "rollout": flops_lib.phase_flops(cfg, steps, "rollout"),
    "score": flops_lib.phase_flops(cfg, score_pairs, "score"),
    "update": run.config.ppo.epochs
    * flops_lib.phase_flops(cfg, [(len(s.prompt_ids), len(s.response_ids)) for s in samples], "update"),
  }
  seconds = {phase: timer.seconds(phase) for phase in flops}
  return flops_lib.perf_metrics(flops, seconds, jax.devices()[0].device_kind, jax.device_count())


def _play(run: Run, iteration: int) -> tuple[list, dict]:
  """This process's share of the iteration's task groups, played to the end; (trajectories, generation stats)."""
  r = run.config.rollout
  sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)
  tasks = run.stream.next_tasks(r.tasks_per_batch)  # the same list on every process
  share = distributed.process_share(r.tasks_per_batch, "rollout.tasks_per_batch")
  gen_stats: dict = {}
  policy = run.generation.generator(sampling, iteration_key(run.config, iteration), gen_stats)
  trajectories = play_groups(
    run.pool,
    policy,
    run.model.loaded.tokenizer,
    tasks[share],
    r.group_size,
    student_agent(run),
    max_prompt_tokens=r.max_prompt_tokens,
    first_group_id=iteration * r.tasks_per_batch + share.start,
    first_traj_id=share.start * r.group_size,
    truncation_side=r.truncation_side,
  )
  policy.finish()
  return trajectories, gen_stats


def _update(run: Run, samples, iteration: int, with_ref: bool) -> dict[str, float]:
  """ppo.epochs shuffled passes over the step samples, one optimizer step per mini-batch; mean metrics."""
  config = run.config
  ppo_metrics: dict[str, list[float]] = {}
  for epoch in range(config.ppo.epochs):
    seed = config.train.seed * 100003 + iteration * 101 + epoch
    for part in batch_lib.shuffled_minibatches(samples, config.ppo.mini_batch_size, seed=seed):
      run.model.state, m = minibatch_step.optimizer_step(
        run.model.state,
        part,
        batch_layout(run),
        graphdef=run.model.graphdef,
        tx=run.model.tx,
        cfg=loss_config(config),
        with_ref=with_ref,
      )
      for k, v in distributed.fetch(m).items():
        ppo_metrics.setdefault(k, []).append(float(v))
  _sync_params(run)
  return {k: float(np.mean(v)) for k, v in ppo_metrics.items()}


class _GatheredAnalyses:
  """An analysis handle whose result() holds the analyses of every process (each ran its own share)."""

  def __init__(self, handle):
    self._handle = handle
    self.stats = handle.stats

  def result(self, timeout: float | None = None):
    return distributed.concat_across_processes(self._handle.result(timeout))


def run_evaluation(run: Run, iteration: int) -> dict[str, float]:
  """Greedy-or-sampled evaluation without skills (`eval/*`); under Skill-GRPO also with the bank's skills in the
  prompts (`eval_skills/*`, the paper's starred rows)."""
  metrics = _evaluate(run, iteration, run.env.agent, "eval", f"iter_{iteration:06d}")
  if run.bank is not None:
    metrics.update(_evaluate(run, iteration, student_agent(run), "eval_skills", f"iter_{iteration:06d}_skills"))
  return metrics


def _evaluate(run: Run, iteration: int, agent, prefix: str, table_name: str) -> dict[str, float]:
  c = run.config
  sampling = SamplingParams(
    temperature=c.rollout.eval_temperature,
    top_p=c.rollout.top_p,
    top_k=c.rollout.top_k,
    max_new_tokens=c.rollout.max_new_tokens,
  )
  policy = run.generation.generator(sampling, jax.random.fold_in(iteration_key(c, iteration), 1 << 20))
  tasks = eval_tables.first_per_split(run.env.eval_tasks, c.train.eval_tasks)
  tasks = tasks[distributed.process_range(len(tasks))]
  own_pool = run.env.eval_factory is not None or c.train.eval_envs > 0
  num_envs = max(1, min(len(tasks), c.train.eval_envs or run.pool.num_envs))
  pool = (
    run.pool
    if not own_pool
    else EnvPool(run.env.eval_factory or run.env.factory, num_envs, c.env.num_workers, c.env.step_timeout_s)
  )
  try:
    _, trajectories = eval_tables.evaluate(
      pool,
      policy,
      run.model.loaded.tokenizer,
      agent,
      tasks,
      c.rollout.max_prompt_tokens,
      c.rollout.truncation_side,
      progress=distributed.is_lead(),
    )
    policy.finish()
  finally:
    if pool is not run.pool:
      pool.close()
  trajectories = distributed.concat_across_processes(trajectories)
  table = eval_tables.per_task_type(trajectories)
  if jax.process_index() == 0:
    eval_tables.write_table(os.path.join(run.workdir, "eval"), table_name, table, trajectories=trajectories)
  metrics = {f"{prefix}/{k}": v for k, v in table["all"].items()}
  for name, row in table.items():
    if name.startswith("split:"):
      metrics.update({f"{prefix}/{name[len('split:') :]}/{k}": v for k, v in row.items()})
  return metrics


def host_state(run: Run, iteration: int) -> dict:
  state = {"iteration": iteration, "task_stream": run.stream.state_dict(), "config": run.config.to_dict()}
  if run.bank is not None:
    state["skill_bank"] = run.bank.state_dict()
  return state


def student_agent(run: Run):
  """The agent the student plays: under Skill-GRPO its prompts carry the skill bank's episode skill."""
  if run.bank is None:
    return run.env.agent
  return dataclasses.replace(run.env.agent, student_prompt=run.bank.student_prompt)


def train(config, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training; returns the last iteration's metrics."""
  os.makedirs(workdir, exist_ok=True) if "://" not in workdir else None
  run = build_run(config, workdir)
  lead = jax.process_index() == 0
  t = config.train
  routing_mode = config.opid.routing if opid_settings(config).skills_enabled else "none"

  def initial_evaluation():
    if t.eval_at_start and run.start_iteration == 0:
      timer = metrics_lib.PhaseTimer()
      with timer.phase("eval"):
        metrics = run_evaluation(run, 0)
      run.writer.write(0, {**metrics, **timer.as_metrics()})

  def iteration(step: int, timer: metrics_lib.PhaseTimer) -> dict[str, float]:
    metrics, record = run_iteration(run, step, timer)
    done = step + 1
    if lead:
      dump_trajectories(workdir, done, record.trajectories, record.analyses, record.samples, routing_mode=routing_mode)
    if (t.eval_every and done % t.eval_every == 0) or (t.eval_at_end and done == t.steps):
      with timer.phase("eval"):
        metrics.update(run_evaluation(run, done))
    return metrics

  try:
    last, finished = scaffold.checkpointed_loop(
      run.model,
      start=run.start_iteration,
      steps=t.steps,
      step_fn=iteration,
      checkpointer=run.checkpointer,
      writer=run.writer,
      host_state=lambda done: host_state(run, done),
      desc="iterations",
      unit="iteration",
      on_start=initial_evaluation,
    )
  finally:
    run.pool.close()
    if run.analyzer is not None:
      run.analyzer.close()
  if finished and lead:
    report_run(workdir)
  return last


def report_run(workdir: str) -> None:
  """The closing summary table (printed and saved) and the learning-curve plot, from metrics.jsonl."""
  from etils import epath

  from opid_jax.training import curves, story, summary

  rows = curves.read_run(workdir)
  text = summary.summary_table(rows)
  dump = story.last_dump(workdir)
  examples = story.example_steps_markdown(dump[1], dump[0]) if dump else ""
  if examples:
    text += "\n\n" + examples
  (epath.Path(workdir) / "summary.md").write_text(text + "\n")
  print("\n" + text, flush=True)
  if "://" not in workdir:
    curves.plot_runs([workdir], os.path.join(workdir, "curves.png"))
