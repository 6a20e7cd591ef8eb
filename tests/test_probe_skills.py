"""The skill-signal probe (`python -m opid_jax.probe_skills`) on real ALFWorld games and a tiny random model."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from opid_jax.agent.prompts import HistoryEntry, render_alfworld_prompt, to_chat_text, tokenize_prompt
from opid_jax.envs import alfworld
from opid_jax.envs.pool import EnvPool
from opid_jax.sft.expert_replay import ExpertStep, replay_walkthroughs
from opid_jax.skills import probe as skill_probe
from opid_jax.skills.expert_backend import next_action_skill, workflow_skill
from opid_jax.skills.routing import NO_SKILL, RoutedSkill, inject_skill

ENV = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
SPLIT = "valid_seen"
N_GAMES = 2
SHIFT_FIELDS = {"expert", "other", "margin_gain"}
KIND_FIELDS = {
  "steps",
  "expert_shift",
  "other_shift",
  "margin_gain",
  "expert_preferred_without",
  "expert_preferred_with",
}


def run_probe(*args):
  return subprocess.run(
    [sys.executable, "-m", "opid_jax.probe_skills", *args], capture_output=True, text=True, env=ENV, timeout=300
  )


@pytest.fixture(scope="module")
def model_dir(tiny_policy_dir):
  return tiny_policy_dir("qwen3", 3)


@pytest.fixture(scope="module")
def replayed(alfworld_games):
  """The expert steps of the first N_GAMES games of the split, replayed here (not by the CLI)."""
  task_ids = alfworld.list_games(alfworld_games, SPLIT)[:N_GAMES]
  factory = functools.partial(alfworld.AlfworldEnv, data_dir=alfworld_games, max_steps=60)
  with EnvPool(factory, num_envs=N_GAMES, num_workers=2) as pool:
    games, dropped = replay_walkthroughs(pool, task_ids)
  assert not dropped and len(games) == N_GAMES
  return games


@pytest.fixture(scope="module")
def cli_report(model_dir, alfworld_games, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("probe_out") / "probe.json")
  res = run_probe(
    f"--model={model_dir}",
    f"--games={alfworld_games}",
    f"--n={N_GAMES}",
    f"--split={SPLIT}",
    "--seed=0",
    f"--json={out}",
  )
  assert res.returncode == 0, res.stderr
  with open(out) as f:
    return res.stdout, json.load(f)


def _step(index: int, admissible, expert: str, task_id: str = "valid_seen/x/trial/game.tw-pddl") -> ExpertStep:
  return ExpertStep(
    task_id,
    "put a mug in sink.",
    "pick_and_place_simple",
    index,
    "You see a mug 1.",
    tuple(admissible),
    (),
    expert,
    (expert,),
  )


# --- pure pieces -----------------------------------------------------------------------------------------


def test_action_response_format():
  assert skill_probe.SFT_THINK == "I take the next step of my plan."
  assert skill_probe.action_response("go to desk 1") == (
    "<think>I take the next step of my plan.</think><action>go to desk 1</action>"
  )


def test_other_action_is_never_the_expert_action_and_is_deterministic():
  admissible = ["go to desk 1", "Go to  desk 1", "go to bed 1", "look", "inventory", "open drawer 1"]
  picks = {}
  for seed in (0, 1):
    for index in range(100):
      step = _step(index, admissible, "go to desk 1", task_id=f"valid_seen/game{index % 7}/t/game.tw-pddl")
      other = skill_probe.other_action(step, seed)
      assert other in admissible and " ".join(other.lower().split()) != "go to desk 1"
      assert skill_probe.other_action(step, seed) == other  # same answer every time
      assert skill_probe.other_action(dataclasses.replace(step, history=(HistoryEntry("o", "a"),)), seed) == other
      picks[(seed, index)] = other
  assert len(set(picks.values())) == 4  # every other action gets picked somewhere
  assert any(picks[(0, i)] != picks[(1, i)] for i in range(100))  # the seed matters
  assert skill_probe.other_action(_step(0, ["go to desk 1", "GO TO DESK 1"], "go to desk 1"), 0) is None


def test_steps_without_another_action_are_skipped():
  games = [[_step(0, ["look"], "look"), _step(1, ["look", "inventory"], "look")]]
  items, skipped = skill_probe.build_items(games, seed=0, history_length=1)
  assert skipped == 1 and [(i.step.index, i.other) for i in items] == [(1, "inventory")]
  assert set(items[0].prompts) == {"plain", "episode", "step"}
  assert items[0].prompts["plain"] != items[0].prompts["episode"] != items[0].prompts["step"]


def test_end_of_turn_id_prefers_the_token_the_template_writes(chatml_tokenizer):
  vocab = chatml_tokenizer.get_vocab()
  im_end, eot = vocab["<|im_end|>"], vocab["<|endoftext|>"]
  stops = sorted([im_end, eot])
  assert stops[0] == eot  # a plain stop_ids[0] would close the turn with <|endoftext|>
  assert skill_probe.end_of_turn_id(chatml_tokenizer, stops) == im_end
  base = copy.deepcopy(chatml_tokenizer)  # a base model: EOS <|endoftext|>, the template still writes <|im_end|>
  base.eos_token = "<|endoftext|>"
  assert skill_probe.end_of_turn_id(base, stops) == im_end
  assert skill_probe.end_of_turn_id(base, [eot]) == eot


# --- end to end on real games -----------------------------------------------------------------------------


def test_cli_runs_end_to_end_on_real_games(cli_report, replayed):
  stdout, report = cli_report
  assert "2 games replayed, 0 dropped" in stdout
  assert any(line.startswith("episode ") for line in stdout.splitlines())
  assert any(line.startswith("step ") for line in stdout.splitlines())
  assert report["games_requested"] == N_GAMES and report["games_replayed"] == N_GAMES
  assert report["games_dropped"] == [] and report["split"] == SPLIT
  steps = [s for game in replayed for s in game]
  assert report["steps"] + report["steps_skipped"] == len(steps) and report["steps"] > 0
  records = report["records"]
  assert len(records) == report["steps"]
  probed = [s for s in steps if skill_probe.other_action(s, 0) is not None]
  for record, step in zip(records, probed):
    # The CLI replayed the same steps in the same order, and picked the same other action in another process.
    assert (record["task_id"], record["step"], record["expert_action"]) == (
      step.task_id,
      step.index,
      step.expert_action,
    )
    assert record["other_action"] == skill_probe.other_action(step, 0) != step.expert_action
    assert set(record["logprob"]) == {"plain", "episode", "step"}
    for variant in record["logprob"].values():
      assert set(variant) == {"expert", "other"}
      assert all(math.isfinite(v) and v < 0 for v in variant.values())
    for kind in ("episode", "step"):
      shift, lp = record["shift"][kind], record["logprob"]
      assert set(shift) == SHIFT_FIELDS
      assert shift["expert"] == pytest.approx(lp[kind]["expert"] - lp["plain"]["expert"], abs=1e-9)
      assert shift["other"] == pytest.approx(lp[kind]["other"] - lp["plain"]["other"], abs=1e-9)
      assert shift["margin_gain"] == pytest.approx(shift["expert"] - shift["other"], abs=1e-9)
  assert set(report["kinds"]) == {"episode", "step"}
  for kind, summary in report["kinds"].items():
    assert set(summary) == KIND_FIELDS and summary["steps"] == len(records)
    assert all(math.isfinite(v) for v in summary.values())
    assert summary["margin_gain"] == pytest.approx(np.mean([r["shift"][kind]["margin_gain"] for r in records]))
    assert summary["expert_shift"] == pytest.approx(np.mean([r["shift"][kind]["expert"] for r in records]))
    # Real skills change the prompt, so the scores move (the control for the skill-free test below).
    assert any(r["shift"][kind]["expert"] != 0.0 for r in records)


def _reference_sum(model, prompt_ids, response_ids) -> float:
  ids = torch.tensor([prompt_ids + response_ids])
  with torch.no_grad():
    logp = torch.log_softmax(model(ids).logits[0, len(prompt_ids) - 1 : -1].double(), -1)
  return float(logp[torch.arange(len(response_ids)), torch.tensor(response_ids)].sum())


def test_scores_are_the_rollout_prompt_and_sft_response_under_pytorch(cli_report, replayed, model_dir):
  """Rebuilds two steps' prompts from the rollout renderer and the expert analyzer's skill texts, and checks
  the probe's summed log-probs against the PyTorch model."""
  import transformers

  _, report = cli_report
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  assert report["end_of_turn_id"] == im_end
  steps = {(s.task_id, s.index): s for game in replayed for s in game}
  for record in (report["records"][0], report["records"][-1]):
    step = steps[(record["task_id"], record["step"])]
    plain = render_alfworld_prompt(step.task, step.observation, step.admissible_actions, step.history, 1)
    texts = {
      "plain": plain,
      "episode": inject_skill(plain, RoutedSkill(episode_skill=workflow_skill(step.plan))),
      "step": inject_skill(plain, RoutedSkill(step_skill=next_action_skill(step.expert_action))),
    }
    for variant, text in texts.items():
      prompt_ids = tokenize_prompt(tokenizer, to_chat_text(tokenizer, text), 2048)
      for name, action in (("expert", step.expert_action), ("other", record["other_action"])):
        response = f"<think>I take the next step of my plan.</think><action>{action}</action>"
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [im_end]
        want = _reference_sum(model, prompt_ids, response_ids)
        assert record["logprob"][variant][name] == pytest.approx(want, abs=2e-3), (variant, name)


def test_skill_free_prompts_shift_exactly_zero(replayed, model_dir):
  from opid_jax.model import loading

  loaded = loading.load(model_dir)
  end_id = skill_probe.end_of_turn_id(loaded.tokenizer, loaded.stop_ids)
  no_skill = lambda step: {"episode": NO_SKILL, "step": NO_SKILL}
  items, skipped = skill_probe.build_items(replayed, seed=0, history_length=1, skills_fn=no_skill)
  assert items and skipped == 0
  assert all(item.prompts["episode"] == item.prompts["step"] == item.prompts["plain"] for item in items)
  score = skill_probe.scorer_sums(
    loaded.model, loaded.pad_id, skill_probe.longest_response(items, loaded.tokenizer, end_id), 2048
  )
  records = skill_probe.probe(items, loaded.tokenizer, end_id, score, 2048)
  for record in records:
    assert all(math.isfinite(v) for variant in record["logprob"].values() for v in variant.values())
    assert record["logprob"]["plain"]["expert"] != record["logprob"]["plain"]["other"]
    for kind in ("episode", "step"):
      assert record["shift"][kind] == {"expert": 0.0, "other": 0.0, "margin_gain": 0.0}
  summary = skill_probe.summarize(records)
  for kind in ("episode", "step"):
    assert summary[kind]["expert_shift"] == summary[kind]["other_shift"] == summary[kind]["margin_gain"] == 0.0
    assert summary[kind]["expert_preferred_with"] == summary[kind]["expert_preferred_without"]
  assert "episode" in skill_probe.format_table(summary)


# --- one-line errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing_games", "bad_split", "missing_model", "bad_n"])
def test_bad_input_is_one_error_line(case, model_dir, alfworld_games, tmp_path):
  args = {
    "missing_games": ([f"--model={model_dir}", f"--games={tmp_path}/nope"], "does not exist"),
    "bad_split": ([f"--model={model_dir}", f"--games={alfworld_games}", "--split=train"], "train"),
    "missing_model": ([f"--model={tmp_path}/no_model", f"--games={alfworld_games}"], "does not exist"),
    "bad_n": ([f"--model={model_dir}", f"--games={alfworld_games}", "--n=0"], "--n"),
  }
  argv, needle = args[case]
  res = run_probe(*argv)
  assert res.returncode == 2, (res.returncode, res.stderr)
  lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
  assert lines[-1].startswith("error: ") and needle in lines[-1] and "Traceback" not in res.stderr, res.stderr
