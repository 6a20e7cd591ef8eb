"""Behaviour cloning on expert walkthrough steps, through the RL code: the same model loading and sharding,
padding buckets (`rl/batch.py`), jitted donated update (`rl/update.py`, objective "nll": loss on response
tokens only), Orbax checkpoints and metrics writer.

Every batch is a pure function of (seed, step): epoch e shuffles the examples with seed + e and draws which
examples carry a skill, so a run resumed from a checkpoint sees exactly the batches it would have seen.
At the end the policy is exported as an HF folder (`WORKDIR/policy`), ready to be RL's `model.path`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np
from flax import nnx

from opid_jax.batching import padding
from opid_jax.errors import UserError
from opid_jax.model import hf_io
from opid_jax.parallel import distributed
from opid_jax.rl import batch as batch_lib, minibatch_step, update
from opid_jax.rl.scoring import Scorer
from opid_jax.sft import data as sft_data, small_policy
from opid_jax.skills.probe import end_of_turn_id
from opid_jax.training import metrics as metrics_lib, scaffold

log = logging.getLogger(__name__)
SKILL_KINDS = ("none", "episode", "step")


def prepare_policy(config, workdir: str, steps) -> str:
  """`model.path`, or (when empty) a from-scratch policy in WORKDIR/init_policy whose tokenizer is trained on
  the texts of the SFT examples."""
  if config.model.path:
    return config.model.path
  out = os.path.join(workdir, "init_policy")
  if not os.path.exists(os.path.join(out, "model.safetensors")):
    p = config.small_policy
    texts = sft_data.corpus_texts(steps, config.data.history_window)
    tokenizer = small_policy.train_tokenizer(texts, p.vocab_size)
    cfg = small_policy.qwen3_config(
      tokenizer,
      hidden_size=p.hidden_size,
      num_layers=p.num_layers,
      num_heads=p.num_heads,
      num_kv_heads=p.num_kv_heads,
      head_dim=p.head_dim,
      intermediate_size=p.intermediate_size,
    )
    count = small_policy.write_policy(out, tokenizer, cfg, seed=p.seed)
    print(
      f"sft: new policy with {count / 1e6:.2f}M parameters and a {cfg.vocab_size}-token tokenizer at {out}", flush=True
    )
  return out


def split_heldout(steps, heldout_games: int):
  """(train steps, held-out steps): the last `heldout_games` games' steps are held out."""
  games = list(dict.fromkeys(s.task_id for s in steps))
  held = set(games[len(games) - heldout_games :]) if heldout_games > 0 else set()
  return [s for s in steps if s.task_id not in held], [s for s in steps if s.task_id in held]


@dataclasses.dataclass
class ExampleMaker:
  tokenizer: Any
  end_of_turn_id: int
  history_window: int
  max_prompt_tokens: int

  def samples(self, steps, kinds) -> list[batch_lib.StepSample]:
    out = []
    for step, kind in zip(steps, kinds):
      p, r = sft_data.tokenize_example(
        self.tokenizer, step, kind, self.history_window, self.end_of_turn_id, self.max_prompt_tokens
      )
      zeros = np.zeros(len(r), np.float32)
      out.append(batch_lib.StepSample(p, r, old_logp=zeros, advantages=zeros))
    return out


class EpochBatches:
  """Batch `step` of the run: epoch = step // batches_per_epoch; shuffling and skill draws seeded by epoch."""

  def __init__(self, steps, maker: ExampleMaker, share: sft_data.SkillShare, batch_size: int, seed: int):
    if len(steps) < batch_size:
      raise UserError(f"only {len(steps)} training examples for train.batch_size={batch_size}")
    self.steps, self.maker, self.share, self.batch_size, self.seed = steps, maker, share, batch_size, seed
    self.per_epoch = len(steps) // batch_size  # the remainder of each shuffled epoch is dropped
    self._epoch, self._samples, self._kinds = -1, [], []

  def _load(self, epoch: int) -> None:
    rng = np.random.RandomState(self.seed * 7919 + epoch)
    order = rng.permutation(len(self.steps))
    kinds = sft_data.skill_kinds(len(order), self.share, rng)
    chosen = [self.steps[i] for i in order[: self.per_epoch * self.batch_size]]
    self._samples = self.maker.samples(chosen, kinds)
    self._kinds = kinds[: len(chosen)]
    self._epoch = epoch

  def batch(self, step: int) -> tuple[list[batch_lib.StepSample], list[str]]:
    epoch, index = divmod(step, self.per_epoch)
    if epoch != self._epoch:
      self._load(epoch)
    rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
    return self._samples[rows], self._kinds[rows]


def heldout_metrics(scorer: Scorer, maker: ExampleMaker, steps, params) -> dict[str, float]:
  """Mean per-token NLL of the expert response on held-out steps, with each kind of skill in the prompt (how
  much a skill helps is what tells whether the policy reads skills)."""
  metrics = {}
  for kind in SKILL_KINDS:
    samples = maker.samples(steps, [kind] * len(steps))
    logps = scorer.score([s.prompt_ids for s in samples], [s.response_ids for s in samples], params=params).logprobs
    tokens = sum(len(lp) for lp in logps)
    metrics[f"heldout/nll_{kind}"] = float(-sum(float(lp.sum()) for lp in logps) / max(tokens, 1))
  return metrics


def train_sft(config, workdir: str) -> dict[str, float]:
  """Runs (or resumes) SFT; returns the last logged metrics. Writes WORKDIR/policy at the end."""
  os.makedirs(workdir, exist_ok=True)
  d, t = config.data, config.train
  cache = d.cache or os.path.join(workdir, "expert_steps.jsonl")
  steps = sft_data.load_or_build(cache, d.data_dir, d.split, d.num_games, d.seed, d.num_workers)
  train_steps, held_steps = split_heldout(steps, d.heldout_games)
  model = scaffold.build_trainable(config, prepare_policy(config, workdir, steps))
  loaded = model.loaded
  prompt_buckets = padding.buckets_up_to(d.max_prompt_tokens, t.prompt_buckets)
  maker = ExampleMaker(
    loaded.tokenizer, end_of_turn_id(loaded.tokenizer, loaded.stop_ids), d.history_window, d.max_prompt_tokens
  )
  share = sft_data.SkillShare(d.skill_share_episode, d.skill_share_step)
  batches = EpochBatches(train_steps, maker, share, t.batch_size, t.seed)
  scorer = Scorer(
    loaded.model,
    loaded.pad_id,
    micro_batch=t.micro_batch_size,
    prompt_buckets=prompt_buckets,
    response_buckets=t.response_buckets,
    truncate_left=True,
  )
  loss_cfg = update.LossConfig(objective="nll", with_entropy=False)
  layout = minibatch_step.BatchLayout(
    model.mesh,
    model.rules,
    t.micro_batch_size,
    loaded.pad_id,
    prompt_buckets,
    t.response_buckets,
    t.bucket_micro_batches,
  )
  checkpointer = scaffold.make_checkpointer(config, workdir)
  writer = metrics_lib.MetricsWriter(workdir, enabled=distributed.is_lead())
  start, model.state, _ = scaffold.restore_or_start(checkpointer, writer, model.state)
  print(
    f"sft: {len(train_steps)} training examples ({batches.per_epoch} batches per epoch), {len(held_steps)} held out",
    flush=True,
  )

  def sft_step(step: int, timer: metrics_lib.PhaseTimer) -> dict[str, float]:
    samples, kinds = batches.batch(step)
    with timer.phase("update"):
      model.state, m = minibatch_step.optimizer_step(
        model.state, samples, layout, graphdef=model.graphdef, tx=model.tx, cfg=loss_cfg
      )
      m = {k.replace("ppo/", "sft/"): float(v) for k, v in distributed.fetch(m).items()}
    metrics = {
      "loss": m["sft/loss"],
      **m,
      "sft/epoch": step / batches.per_epoch,
      "sft/skill_share": float(np.mean([k != "none" for k in kinds])),
    }
    done = step + 1
    if held_steps and t.eval_every and (done % t.eval_every == 0 or done == t.steps):
      with timer.phase("eval"):
        metrics.update(heldout_metrics(scorer, maker, held_steps, model.state.params))
    return metrics

  last, finished = scaffold.checkpointed_loop(
    model,
    start=start,
    steps=t.steps,
    step_fn=sft_step,
    checkpointer=checkpointer,
    writer=writer,
    host_state=lambda done: {"step": done, "config": config.to_dict()},
    desc="sft",
  )
  if finished and distributed.is_lead():
    summary = {"steps": t.steps, "train_examples": len(train_steps), "heldout_examples": len(held_steps), "last": last}
    _export_policy(model, workdir, summary)
  return last


def _export_policy(model: scaffold.Trainable, workdir: str, summary: dict) -> None:
  """The trained policy as an HF folder (WORKDIR/policy, ready to be RL's model.path) and WORKDIR/sft_summary.json."""
  loaded = model.loaded
  nnx.update(loaded.model, model.state.params)
  out = os.path.join(workdir, "policy")
  hf_io.export_hf(
    loaded.model, out, tokenizer=loaded.tokenizer, generation_config={"eos_token_id": list(loaded.stop_ids)}
  )
  with open(os.path.join(workdir, "sft_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"sft: policy written to {out}", flush=True)


def validate(config) -> None:
  """One-line errors for an SFT config, before anything is built."""
  from opid_jax.training.config_checks import DTYPES, _at_least, _one_of, validate_optim

  _one_of("model.dtype", config.model.dtype, DTYPES)
  _one_of("model.param_dtype", config.model.param_dtype, DTYPES)
  validate_optim(config.optim)
  t, d = config.train, config.data
  for name in ("steps", "batch_size", "micro_batch_size"):
    _at_least(f"train.{name}", t[name], 1)
  if t.batch_size % t.micro_batch_size:
    raise UserError(f"train.batch_size={t.batch_size} is not a multiple of train.micro_batch_size={t.micro_batch_size}")
  _at_least("train.eval_every", t.eval_every, 0)
  _at_least("checkpoint.keep", config.checkpoint.keep, 1)
  _at_least("checkpoint.save_every", config.checkpoint.save_every, 1)
  _at_least("data.num_games", d.num_games, 1)
  if not 0 <= d.heldout_games < d.num_games:
    raise UserError(
      f"data.heldout_games={d.heldout_games} must be in [0, data.num_games={d.num_games}): "
      f"held-out games are never trained on"
    )
  _at_least("data.num_workers", d.num_workers, 1)
  _at_least("data.history_window", d.history_window, 0)
  _at_least("data.max_prompt_tokens", d.max_prompt_tokens, 8)
  sft_data.SkillShare(d.skill_share_episode, d.skill_share_step)
  if not os.path.isdir(d.data_dir):
    raise UserError(f"ALFWorld data not found at {d.data_dir!r} (run `make data`, then set data.data_dir)")
