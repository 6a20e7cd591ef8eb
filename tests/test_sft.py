"""SFT (behaviour cloning on expert walkthroughs): the loss, response-only masking, a falling loss on a fixed
batch, the from-scratch policy, and an exact resume after a stop, on real ALFWorld games."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import sft_alfworld_small
from opid_jax.errors import UserError
from opid_jax.model import hf_io, loading
from opid_jax.rl import batch as batch_lib, update
from opid_jax.rl.loss import nll_loss
from opid_jax.rl.scoring import Scorer
from opid_jax.sft import data as sft_data, trainer as sft_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_sft_config(data_dir: str, cache: str):
  c = sft_alfworld_small.get_config()
  c.small_policy.update(
    vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64
  )
  c.data.update(
    data_dir=data_dir,
    split="valid_seen",
    num_games=4,
    heldout_games=1,
    cache=cache,
    skill_share_episode=0.3,
    skill_share_step=0.3,
  )
  c.optim.update(lr=3e-3, warmup_steps=1)
  c.train.update(
    steps=4, batch_size=4, micro_batch_size=2, eval_every=2, prompt_buckets=(512, 1024, 2048), response_buckets=(32, 64)
  )
  c.data.max_prompt_tokens = 2048
  c.checkpoint.update(save_every=1, keep=10, async_save=False)
  return c


@pytest.fixture(scope="module")
def expert_cache(alfworld_games, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("sft_cache") / "steps.jsonl")
  steps = sft_data.load_or_build(path, alfworld_games, "valid_seen", 4, 0)
  assert len(steps) >= 8
  return path


@pytest.fixture(scope="module")
def finished_run(alfworld_games, expert_cache, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sft_run"))
  config = tiny_sft_config(alfworld_games, expert_cache)
  last = sft_trainer.train_sft(config, workdir)
  return config, workdir, last


def test_nll_loss_against_hand_computed_numbers():
  logp = np.array([[-1.0, -2.0, -3.0], [-0.5, -7.0, -9.0]], np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  loss, metrics = nll_loss(logp, mask, token_count=3.0)
  assert float(loss) == pytest.approx((1.0 + 2.0 + 0.5) / 3.0)
  # The denominator is the mini-batch count, so two micro-batches add up to the mini-batch mean.
  half_a, _ = nll_loss(logp[:1], mask[:1], token_count=3.0)
  half_b, _ = nll_loss(logp[1:], mask[1:], token_count=3.0)
  assert float(half_a + half_b) == pytest.approx(float(loss))
  assert float(metrics["sft/nll"]) == pytest.approx(float(loss))


def test_expert_steps_replay_real_games(alfworld_games, expert_cache):
  steps = sft_data.load_or_build(expert_cache, alfworld_games, "valid_seen", 4, 0)
  by_game: dict[str, list] = {}
  for s in steps:
    by_game.setdefault(s.task_id, []).append(s)
  for game in by_game.values():
    assert [s.index for s in game] == list(range(len(game)))
    assert [s.expert_action for s in game] == list(game[0].plan)  # the whole walkthrough, which won
    for s in game:
      assert s.expert_action in s.admissible_actions
      assert [h.action for h in s.history] == list(s.plan[: s.index])


def test_skill_kinds_follow_the_shares():
  share = sft_data.SkillShare(episode=0.25, step=0.5)
  kinds = sft_data.skill_kinds(4000, share, np.random.RandomState(0))
  assert kinds == sft_data.skill_kinds(4000, share, np.random.RandomState(0))
  counts = {k: kinds.count(k) / len(kinds) for k in ("episode", "step", "none")}
  assert counts["episode"] == pytest.approx(0.25, abs=0.03)
  assert counts["step"] == pytest.approx(0.5, abs=0.03)
  with pytest.raises(UserError):
    sft_data.SkillShare(episode=0.7, step=0.5)


def test_examples_carry_the_expert_skill_texts(alfworld_games, expert_cache):
  step = sft_data.load_or_build(expert_cache, alfworld_games, "valid_seen", 4, 0)[1]
  plain = sft_data.example_prompt(step, "none", 1)
  episode = sft_data.example_prompt(step, "episode", 1)
  with_step = sft_data.example_prompt(step, "step", 1)
  assert plain.startswith("You are an expert household agent") and step.observation in plain
  assert "Episode skill" not in plain and "Step skill" not in plain
  assert " -> ".join(step.plan) in episode and "Step skill" not in episode
  assert f"Do '{step.expert_action}' now" in with_step and "Episode skill" not in with_step


def test_from_scratch_policy_and_response_only_loss(finished_run):
  config, workdir, _ = finished_run
  loaded = loading.load(os.path.join(workdir, "init_policy"))
  tok = loaded.tokenizer
  assert loaded.config.model_type == "qwen3" and loaded.config.vocab_size == len(tok.get_vocab())
  assert tok.convert_ids_to_tokens(loaded.stop_ids) == ["<|im_end|>"]
  text = "You arrive at countertop 1. <action>take mug 2 from countertop 1</action>"
  assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text

  steps = sft_data.load_or_build(config.data.cache, config.data.data_dir, "valid_seen", 4, 0)[:4]
  maker = sft_trainer.ExampleMaker(tok, loaded.stop_ids[0], 1, 2048)
  samples = maker.samples(steps, ["none", "episode", "step", "none"])
  for s, step in zip(samples, steps):
    expected = f"<think>I take the next step of my plan.</think><action>{step.expert_action}</action><|im_end|>"
    assert tok.decode(s.response_ids) == expected
  (mb,) = batch_lib.minibatches(
    samples,
    mini_batch_size=4,
    micro_batch_size=2,
    seed=0,
    pad_id=loaded.pad_id,
    prompt_buckets=(512, 1024, 2048),
    response_buckets=(32, 64),
  )
  assert mb["response_mask"].sum() == sum(len(s.response_ids) for s in samples)
  graphdef, params = nnx.split(loaded.model)
  token_count = float(mb["response_mask"].sum())
  cfg = update.LossConfig(objective="nll", with_entropy=False)
  total = sum(
    float(update.micro_batch_loss(params, graphdef, jax.tree.map(lambda x: x[i], mb), token_count, cfg)[0])
    for i in range(2)
  )
  # The same number through an independent path: the scorer's per-token log-probs of the response tokens only.
  scorer = Scorer(
    loaded.model, loaded.pad_id, micro_batch=2, prompt_buckets=(512, 1024, 2048), response_buckets=(32, 64)
  )
  logps = scorer.score([s.prompt_ids for s in samples], [s.response_ids for s in samples]).logprobs
  expected = -sum(float(lp.sum()) for lp in logps) / token_count
  assert total == pytest.approx(expected, rel=1e-5)


def test_loss_falls_on_a_small_fixed_batch(finished_run):
  config, workdir, _ = finished_run
  loaded = loading.load(os.path.join(workdir, "init_policy"))
  steps = sft_data.load_or_build(config.data.cache, config.data.data_dir, "valid_seen", 4, 0)[:4]
  maker = sft_trainer.ExampleMaker(loaded.tokenizer, loaded.stop_ids[0], 1, 2048)
  (mb,) = batch_lib.minibatches(
    maker.samples(steps, ["none"] * 4),
    mini_batch_size=4,
    micro_batch_size=2,
    seed=0,
    pad_id=loaded.pad_id,
    prompt_buckets=(512, 1024, 2048),
    response_buckets=(32, 64),
  )
  graphdef, params = nnx.split(loaded.model)
  tx = update.make_optimizer(lr=1e-2)
  state = update.init_train_state(params, tx)
  cfg = update.LossConfig(objective="nll", with_entropy=False)
  losses = []
  for _ in range(8):
    state, m = update.train_step(state, mb, graphdef=graphdef, tx=tx, cfg=cfg)
    losses.append(float(m["ppo/loss"]))
  assert losses[-1] < 0.6 * losses[0], losses


def test_run_writes_policy_metrics_and_heldout_nll(finished_run):
  config, workdir, last = finished_run
  assert os.path.exists(os.path.join(workdir, "policy", "model.safetensors"))
  loaded = loading.load(os.path.join(workdir, "policy"))  # the exported policy loads as an HF folder
  assert loaded.config.num_layers == 1
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["sft/nll"]) for r in rows)
  for kind in ("none", "episode", "step"):
    assert np.isfinite(rows[1][f"heldout/nll_{kind}"]) and np.isfinite(last[f"heldout/nll_{kind}"])
  assert "heldout/nll_none" not in rows[0]
  summary = json.load(open(os.path.join(workdir, "sft_summary.json")))
  assert summary["steps"] == 4 and summary["heldout_examples"] > 0


def test_resumed_run_continues_exactly(finished_run):
  config, workdir, _ = finished_run
  resumed = workdir + "_resumed"
  shutil.copytree(workdir, resumed)
  for step in (3, 4):  # as if the run had stopped right after saving step 2
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(step)))
  shutil.rmtree(os.path.join(resumed, "policy"))
  sft_trainer.train_sft(config, resumed)
  original = dict(hf_io.iter_safetensors(os.path.join(workdir, "policy", "model.safetensors")))
  again = dict(hf_io.iter_safetensors(os.path.join(resumed, "policy", "model.safetensors")))
  assert original.keys() == again.keys()
  for name in original:
    np.testing.assert_array_equal(original[name], again[name])
  rows = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
  first = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert [r["sft/nll"] for r in rows] == [r["sft/nll"] for r in first]


def test_cli_bad_input_is_one_line(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  cmd = [
    sys.executable,
    "-m",
    "opid_jax.sft",
    "--config=configs/sft_alfworld_small.py",
    f"--workdir={tmp_path}",
    "--config.data.data_dir=/nonexistent/alfworld",
  ]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith("error: ALFWorld data not found")
  bad_key = subprocess.run(
    cmd[:-1] + ["--config.data.skill_shaer=0.5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert bad_key.returncode == 2 and bad_key.stderr.strip().startswith("error:")
