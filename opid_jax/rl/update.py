"""The optimizer and one jitted, sharded clipped-PPO step over a mini-batch of micro-batches."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from opid_jax.rl import algorithms
from opid_jax.rl.loss import nll_loss, ppo_loss
from opid_jax.rl.scoring import micro_batch_logprobs


class TrainState(NamedTuple):
  params: nnx.State
  opt_state: optax.OptState
  step: jax.Array


@dataclasses.dataclass(frozen=True)
class LossConfig:
  clip_low: float = 0.2
  clip_high: float = 0.2
  dual_clip: float = 0.0
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  kl_clamp: float = 10.0
  entropy_coef: float = 0.0
  temperature: float = 1.0
  chunk_size: int = 64
  with_entropy: bool = True
  objective: str = "ppo"  # ppo | nll (behaviour cloning on the response tokens; the PPO fields are unused)
  pg_weight: float = 1.0  # the clipped policy-gradient term's weight (0: OPSD, distillation only)
  distill: str = ""  # "" | "sdar" | "skill_sd": an extra term on the teacher log-probs of the micro-batch
  distill_coef: float = 0.0
  gate_beta: float = 5.0  # sdar's gate sharpness (0: a constant gate of 0.5)


def learning_rate_schedule(lr: float, warmup_steps: int, schedule: str, total_steps: int):
  decay_steps = max(total_steps - warmup_steps, 1)
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif schedule == "linear":
    main = optax.linear_schedule(lr, 0.0, decay_steps)
  else:
    raise ValueError(f"unknown schedule {schedule!r}")
  if warmup_steps <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main], [warmup_steps])


def _decay_mask(params):
  """Weight decay on matrices only: not on norm scales or biases."""

  def keep(path, _):
    name = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
    parent = str(path[-2].key) if len(path) > 1 and hasattr(path[-2], "key") else ""
    return not (name.endswith("_bias") or name == "scale" or parent == "scale")

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(
  *,
  lr: float,
  warmup_steps: int = 0,
  schedule: str = "constant",
  total_steps: int = 1,
  weight_decay: float = 0.0,
  grad_clip: float = 1.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
) -> optax.GradientTransformation:
  sched = learning_rate_schedule(lr, warmup_steps, schedule, total_steps)
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask))
  return optax.chain(*parts)


def optimizer_from_config(optim, total_steps: int) -> optax.GradientTransformation:
  """The optimizer a config's `optim` block describes, its schedule stretched over `total_steps` updates."""
  return make_optimizer(
    lr=optim.lr,
    warmup_steps=optim.warmup_steps,
    schedule=optim.schedule,
    total_steps=max(1, total_steps),
    weight_decay=optim.weight_decay,
    grad_clip=optim.grad_clip,
    b1=optim.b1,
    b2=optim.b2,
    eps=optim.eps,
  )


def init_train_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def micro_batch_loss(params, graphdef, micro, token_count, cfg: LossConfig):
  model = nnx.merge(graphdef, params)
  chunk = min(cfg.chunk_size, micro["response_ids"].shape[-1])
  logp, entropy = micro_batch_logprobs(
    model, micro, temperature=cfg.temperature, chunk_size=chunk, with_entropy=cfg.with_entropy or cfg.entropy_coef > 0
  )
  entropy = jax.lax.stop_gradient(entropy) if cfg.entropy_coef == 0 else entropy
  if cfg.objective == "nll":
    loss, metrics = nll_loss(logp, micro["response_mask"], token_count)
    if cfg.with_entropy:
      mask = micro["response_mask"].astype(jnp.float32)
      metrics["ppo/entropy"] = jnp.sum(entropy * mask) / jnp.maximum(token_count, 1.0)
    return loss, metrics
  loss, metrics = ppo_loss(
    logp,
    micro["old_logp"],
    micro["advantages"],
    micro["response_mask"],
    token_count,
    clip_low=cfg.clip_low,
    clip_high=cfg.clip_high,
    dual_clip=cfg.dual_clip,
    ref_logp=micro.get("ref_logp"),
    kl_coef=cfg.kl_coef,
    kl_estimator=cfg.kl_estimator,
    kl_clamp=cfg.kl_clamp,
    entropy=entropy if cfg.with_entropy or cfg.entropy_coef > 0 else None,
    entropy_coef=cfg.entropy_coef,
    pg_weight=cfg.pg_weight,
  )
  if cfg.distill:
    extra, extra_metrics = _distill_term(logp, micro, token_count, cfg)
    loss = loss + cfg.distill_coef * extra
    metrics = {**metrics, **extra_metrics, "ppo/loss": loss}
  return loss, metrics


def _distill_term(logp, micro, token_count, cfg: LossConfig):
  """SDAR's gated distillation or Skill-SD's importance-weighted reverse KL, on the tokens that have a teacher.
  The teacher log-probs are the scoring pass's (constants, as the reference implementations use them)."""
  mask = micro["response_mask"].astype(jnp.float32) * micro["teacher_mask"]
  teacher = micro["teacher_logp"]
  if cfg.distill == "sdar":
    return algorithms.sdar_loss(teacher, logp, mask, token_count, beta=cfg.gate_beta)
  if cfg.distill == "skill_sd":
    return algorithms.skill_sd_loss(logp, teacher, micro["old_logp"], mask, token_count)
  raise ValueError(f"unknown distill term {cfg.distill!r}")


def accumulate_gradients(params, graphdef, batch, cfg: LossConfig):
  """Sum of micro-batch gradients and metrics; batch arrays are [num_micro, micro, ...]."""
  token_count = jnp.sum(batch["response_mask"]).astype(jnp.float32)
  grad_fn = jax.value_and_grad(micro_batch_loss, has_aux=True)

  def body(acc, micro):
    (_, metrics), grads = grad_fn(params, graphdef, micro, token_count, cfg)
    acc_grads, acc_metrics = acc
    return (jax.tree.map(jnp.add, acc_grads, grads), jax.tree.map(jnp.add, acc_metrics, metrics)), None

  first = jax.tree.map(lambda x: x[0], batch)
  metric_shapes = jax.eval_shape(lambda: micro_batch_loss(params, graphdef, first, token_count, cfg)[1])
  zeros = (jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))
  (grads, metrics), _ = jax.lax.scan(body, zeros, batch)
  metrics["ppo/tokens"] = token_count
  return grads, metrics


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "cfg"), donate_argnames=("state",))
def train_step(state: TrainState, batch, *, graphdef, tx: optax.GradientTransformation, cfg: LossConfig):
  grads, metrics = accumulate_gradients(state.params, graphdef, batch, cfg)
  metrics["ppo/grad_norm"] = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(params, opt_state, state.step + 1), metrics


# The length-bucketed path: micro-batches of different shapes (each padded to its own bucket), gradients summed
# by one jitted call per micro-batch, then one jitted optimizer update. Same result as `train_step` on the same
# mini-batch (the loss is a token sum over the mini-batch's token count), with less padding.


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"), donate_argnames=("acc",))
def accumulate_micro_batch(acc, params, micro, token_count, *, graphdef, cfg: LossConfig):
  (_, metrics), grads = jax.value_and_grad(micro_batch_loss, has_aux=True)(params, graphdef, micro, token_count, cfg)
  return jax.tree.map(jnp.add, acc, (grads, metrics))


@functools.partial(jax.jit, static_argnames=("tx",), donate_argnames=("state",))
def apply_gradients(state: TrainState, grads, *, tx: optax.GradientTransformation):
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), grad_norm


_METRIC_SHAPES: dict = {}  # (graphdef, cfg, micro-batch keys) -> the loss metrics' shapes (traced once)


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return sharding


@functools.lru_cache(maxsize=64)
def _zeros_fn(param_shardings: tuple, param_tree, metric_shapes: tuple, metric_tree):
  """A jitted maker of the zero accumulator, laid out like the parameters (gradients) and replicated (metrics):
  made on the devices, so no host scalar is sent and no zero is copied across devices."""

  def zeros(params):
    grads = jax.tree.map(jnp.zeros_like, params)
    return grads, jax.tree.unflatten(metric_tree, [jnp.zeros(s.shape, s.dtype) for s in metric_shapes])

  replicated = _replicated(param_shardings[0])
  out_shardings = (
    jax.tree.unflatten(param_tree, param_shardings),
    jax.tree.unflatten(metric_tree, [replicated] * len(metric_shapes)),
  )
  return jax.jit(zeros, out_shardings=out_shardings)


def _zero_accumulator(params, graphdef, micro, cfg: LossConfig):
  key = (graphdef, cfg, tuple(sorted(micro)))
  if key not in _METRIC_SHAPES:
    _METRIC_SHAPES[key] = jax.eval_shape(
      lambda p, m: micro_batch_loss(p, graphdef, m, jnp.float32(1.0), cfg)[1], params, micro
    )
  leaves, param_tree = jax.tree.flatten(params)
  metric_shapes, metric_tree = jax.tree.flatten(_METRIC_SHAPES[key])
  make = _zeros_fn(
    tuple(x.sharding for x in leaves),
    param_tree,
    tuple(jax.ShapeDtypeStruct(s.shape, s.dtype) for s in metric_shapes),
    metric_tree,
  )
  return make(params)


@jax.jit
def _token_total(masks: tuple):
  return sum(jnp.sum(m).astype(jnp.float32) for m in masks)


def train_step_micro_batches(state: TrainState, micros: Sequence[dict], *, graphdef, tx, cfg: LossConfig):
  """One optimizer step over a mini-batch given as micro-batches that may differ in shape."""
  token_count = _token_total(tuple(m["response_mask"] for m in micros))
  acc = _zero_accumulator(state.params, graphdef, micros[0], cfg)
  for micro in micros:
    acc = accumulate_micro_batch(acc, state.params, micro, token_count, graphdef=graphdef, cfg=cfg)
  grads, metrics = acc
  state, grad_norm = apply_gradients(state, grads, tx=tx)
  metrics["ppo/tokens"] = token_count
  metrics["ppo/grad_norm"] = grad_norm
  return state, metrics
