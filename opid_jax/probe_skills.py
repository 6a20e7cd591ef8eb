"""Skill-signal probe: does a model read skills at all? Run it before spending accelerator hours.

  python -m opid_jax.probe_skills --model=PATH --games=DIR [--n=20] [--split=valid_seen] [--seed=0]
      [--history=1] [--json=OUT]

Replays the expert walkthroughs of the first N games of an ALFWorld split (DIR is the data folder holding
json_2.1.1/, or json_2.1.1/ itself). At each step it scores the expert response and another admissible action
(the SFT response format) after the plain rollout prompt and after the prompt with the episode skill, then with
the step skill, that the `expert` analyzer writes, and prints per skill kind the mean shift of each summed
log-prob (with skill minus without) and their difference, the margin gain. A model that reads skills shows a
clearly positive margin gain; one near zero means the skill text barely moves it. --json writes the same numbers
and every step's record. See `opid_jax.skills.probe` for the computation.
"""

import functools
import json
import math
import os
import sys

from absl import app, flags

from opid_jax.cli import parse_flags_or_exit, quiet_libraries
from opid_jax.errors import UserError, exit_on_user_error

flags.DEFINE_string("model", None, "HF folder, hub id, or .gguf file.", required=True)
flags.DEFINE_string("games", None, "ALFWorld data folder (holding json_2.1.1/, or that folder itself).", required=True)
flags.DEFINE_integer("n", 20, "Probe the first N games of the split (the split's sorted game list).")
flags.DEFINE_string("split", "valid_seen", "ALFWorld split.")
flags.DEFINE_integer("seed", 0, "Seed of the choice of the other admissible action at each step.")
flags.DEFINE_integer("history", 1, "Earlier (observation, action) pairs shown in the prompt.")
flags.DEFINE_string("json", None, "Also write the summary and every step's record to this JSON file.")
flags.DEFINE_string("dtype", "float32", "Compute dtype (float32 or bfloat16).")
flags.DEFINE_integer("max_prompt_tokens", 2048, "Prompts are cut on the left to this many tokens.")
flags.DEFINE_integer("micro_batch", 8, "Rows per scoring call.")
flags.DEFINE_integer("num_envs", 8, "Games replayed at once.")
flags.DEFINE_integer("num_workers", 2, "Env worker processes.")
FLAGS = flags.FLAGS


def _task_ids(data_dir: str, split: str, n: int) -> list[str]:
  """The first n games of the split's sorted list."""
  from opid_jax.envs import alfworld

  if not os.path.isdir(data_dir):
    raise UserError(f"ALFWorld games folder {data_dir!r} does not exist")
  try:
    games = alfworld.list_games(data_dir, split)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from None
  if not games:
    raise UserError(f"no ALFWorld games in split {split!r} under {data_dir}")
  return games[:n]


def _replay(data_dir: str, task_ids: list[str]):
  from opid_jax.envs import alfworld
  from opid_jax.envs.pool import EnvPool
  from opid_jax.sft.expert_replay import replay_walkthroughs

  factory = functools.partial(alfworld.AlfworldEnv, data_dir=data_dir, max_steps=60)
  with EnvPool(factory, num_envs=min(FLAGS.num_envs, len(task_ids)), num_workers=FLAGS.num_workers) as pool:
    return replay_walkthroughs(pool, task_ids)


def _check_flags() -> None:
  if FLAGS.n < 1:
    raise UserError(f"--n must be at least 1 (got {FLAGS.n})")
  if FLAGS.history < 0:
    raise UserError(f"--history must be 0 or more (got {FLAGS.history})")
  if FLAGS.max_prompt_tokens < 1 or FLAGS.micro_batch < 1 or FLAGS.num_envs < 1 or FLAGS.num_workers < 1:
    raise UserError("--max_prompt_tokens, --micro_batch, --num_envs and --num_workers must be at least 1")


def _finite_or_none(value):
  return None if isinstance(value, float) and not math.isfinite(value) else value


@exit_on_user_error
def main(argv):
  del argv
  quiet_libraries()
  _check_flags()
  from opid_jax.model import loading
  from opid_jax.skills import probe as skill_probe

  task_ids = _task_ids(FLAGS.games, FLAGS.split, FLAGS.n)
  loaded = loading.load(FLAGS.model, dtype=FLAGS.dtype)
  games, dropped = _replay(FLAGS.games, task_ids)
  end_id = skill_probe.end_of_turn_id(loaded.tokenizer, loaded.stop_ids)
  items, skipped = skill_probe.build_items(games, FLAGS.seed, FLAGS.history)
  if not items:
    raise UserError(
      f"nothing to probe: {len(dropped)} of {len(task_ids)} walkthroughs did not win and "
      f"{skipped} steps had no other admissible action"
    )
  score = skill_probe.scorer_sums(
    loaded.model,
    loaded.pad_id,
    skill_probe.longest_response(items, loaded.tokenizer, end_id),
    FLAGS.max_prompt_tokens,
    FLAGS.micro_batch,
  )
  records = skill_probe.probe(items, loaded.tokenizer, end_id, score, FLAGS.max_prompt_tokens)
  summary = skill_probe.summarize(records)

  print(
    f"model {FLAGS.model}; {FLAGS.split}: {len(games)} games replayed, {len(dropped)} dropped "
    f"(walkthrough did not win); {len(records)} steps probed, {skipped} skipped (no other admissible "
    f"action); history {FLAGS.history}, seed {FLAGS.seed}"
  )
  print(
    "shifts: mean change of the summed response log-prob (nats) when the skill is added; "
    "margin gain = expert shift - other shift"
  )
  print(skill_probe.format_table(summary))
  if FLAGS.json:
    report = {
      "model": FLAGS.model,
      "split": FLAGS.split,
      "games_requested": len(task_ids),
      "games_replayed": len(games),
      "games_dropped": dropped,
      "steps": len(records),
      "steps_skipped": skipped,
      "history": FLAGS.history,
      "seed": FLAGS.seed,
      "end_of_turn_id": end_id,
      "think": skill_probe.SFT_THINK,
      "kinds": {k: {f: _finite_or_none(v) for f, v in s.items()} for k, s in summary.items()},
      "records": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, "w") as f:
      json.dump(report, f, indent=1, allow_nan=False)
    print(f"wrote {FLAGS.json}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
