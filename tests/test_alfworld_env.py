"""ALFWorld on the real games: fixed task lists, env semantics, expert replays through the pool."""

from __future__ import annotations

import collections
import functools
import random

import pytest

from opid_jax.envs import alfworld
from opid_jax.envs.alfworld import AlfworldEnv, list_games, task_type_of
from opid_jax.envs.pool import EnvPool, failure_of

LOOK_AT_GAME = "valid_seen/look_at_obj_in_light-AlarmClock-None-DeskLamp-323/trial_T20190909_044715_250790/game.tw-pddl"


def sample_per_type(task_ids, per_type):
  by_type = collections.defaultdict(list)
  for task_id in task_ids:
    by_type[task_type_of(task_id)].append(task_id)
  return [t for task_type in alfworld.TASK_TYPES for t in by_type[task_type][:per_type]]


def test_evaluation_lists_are_fixed_and_complete(alfworld_games):
  seen = list_games(alfworld_games, "valid_seen")
  unseen = list_games(alfworld_games, "valid_unseen")
  assert (len(seen), len(unseen)) == (140, 134)
  assert seen == sorted(set(seen)) and unseen == sorted(set(unseen))
  assert seen == list_games(alfworld_games, "valid_seen")
  assert {task_type_of(t) for t in seen} == set(alfworld.TASK_TYPES)
  assert LOOK_AT_GAME in seen
  only_heat = list_games(alfworld_games, "valid_seen", task_types=("pick_heat_then_place_in_recep",))
  assert len(only_heat) == 16
  assert list_games(alfworld_games + "/json_2.1.1", "valid_seen") == seen
  with pytest.raises(ValueError):
    list_games(alfworld_games, "test")


def test_reset_step_and_hindsight(alfworld_games):
  env = AlfworldEnv(alfworld_games)
  reset = env.reset(LOOK_AT_GAME)
  assert reset.task == "look at alarmclock under the desklamp."
  assert reset.task_type == "look_at_obj_in_light"
  assert reset.observation.startswith("You are in the middle of a room.")
  assert reset.observation.endswith("Your task is to: look at alarmclock under the desklamp.")
  assert "go to desk 1" in reset.admissible_actions and "help" not in reset.admissible_actions
  assert env.hindsight().expert_actions == ("go to desk 1", "use desklamp 1", "take alarmclock 2 from desk 1")

  nothing = env.step("dance with the desklamp")
  assert (nothing.observation, nothing.reward, nothing.done) == ("Nothing happens.", 0.0, False)
  arrive = env.step("go to desk 1")
  assert arrive.observation.startswith("You arrive at desk 1.") and not arrive.done
  env.step("use desklamp 1")
  win = env.step("take alarmclock 2 from desk 1")
  assert (win.reward, win.done, win.won, win.info["truncated"]) == (10.0, True, True, False)
  with pytest.raises(RuntimeError):
    env.step("look")
  env.close()


def test_episode_ends_after_max_steps(alfworld_games):
  env = AlfworldEnv(alfworld_games, max_steps=3)
  env.reset(LOOK_AT_GAME)
  results = [env.step("look") for _ in range(3)]
  assert [r.done for r in results] == [False, False, True]
  assert results[-1].info["truncated"] and not results[-1].won and results[-1].reward == 0.0
  again = env.reset(LOOK_AT_GAME)  # same game again: state starts over
  assert again.task == "look at alarmclock under the desklamp."
  assert not env.step("look").done
  env.close()


def test_expert_walkthroughs_win_all_task_types_through_the_pool(alfworld_games):
  games = sample_per_type(list_games(alfworld_games, "valid_unseen"), per_type=2)
  assert {task_type_of(g) for g in games} == set(alfworld.TASK_TYPES)
  factory = functools.partial(AlfworldEnv, alfworld_games)
  with EnvPool(factory, num_envs=len(games), num_workers=2, timeout_s=120) as pool:
    resets = pool.reset(list(enumerate(games)))
    assert not any(failure_of(r) for r in resets)
    assert [r.task_type for r in resets] == [task_type_of(g) for g in games]
    plans = [list(h.expert_actions) for h in pool.hindsight(range(len(games)))]
    assert all(plans)
    finished = {}
    for turn in range(max(len(p) for p in plans)):
      playing = [i for i in range(len(games)) if i not in finished]
      results = pool.step([(i, plans[i][turn]) for i in playing])
      for i, result in zip(playing, results):
        assert not failure_of(result)
        assert result.done == (turn == len(plans[i]) - 1), (games[i], turn)
        if result.done:
          finished[i] = result
    assert all(r.won and r.reward == 10.0 for r in finished.values())
    assert pool.restarts == 0


def test_memoized_textworld_plays_exactly_like_plain_textworld(alfworld_games):
  game = list_games(alfworld_games, "valid_unseen")[0]
  transcripts = []
  for memoize in (True, False):
    factory = functools.partial(AlfworldEnv, alfworld_games, memoize_textworld=memoize)
    with EnvPool(factory, num_envs=1, num_workers=1) as pool:  # a fresh process each
      reset = pool.reset([(0, game)])[0]
      transcript = [(reset.observation, reset.admissible_actions)]
      rng = random.Random(0)
      for _ in range(8):
        result = pool.step([(0, rng.choice(transcript[-1][1]))])[0]
        transcript.append((result.observation, result.admissible_actions))
    transcripts.append(transcript)
  assert transcripts[0] == transcripts[1]


def test_game_lists_round_trip_and_refuse_typos_and_repeats(alfworld_games, tmp_path):
  games = list_games(alfworld_games, "valid_unseen")[:3] + list_games(alfworld_games, "valid_seen")[:2]
  path = str(tmp_path / "games.txt")
  alfworld.write_game_list(path, games, header="five games\nfrom two splits")
  assert open(path).read().startswith("# five games\n# from two splits\n")
  assert alfworld.read_game_list(alfworld_games, path) == games  # the file's order, comments skipped
  for lines, problem in (
    ([games[0], games[0]], "more than once"),
    ([games[0], games[0].replace("trial_", "trail_")], "not under"),
    (["test/" + games[0].split("/", 1)[1]], "not under"),
    (["# nothing but a comment"], "names no game"),
  ):
    with open(path, "w") as f:
      f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=problem):
      alfworld.read_game_list(alfworld_games, path)
  with pytest.raises(FileNotFoundError):
    alfworld.read_game_list(alfworld_games, str(tmp_path / "absent.txt"))


def test_env_setup_takes_game_lists_instead_of_splits(alfworld_games, tmp_path):
  import ml_collections

  from configs import base
  from opid_jax.agent import env_setup
  from opid_jax.errors import UserError

  c = base.get_config()
  seen = list_games(alfworld_games, "valid_seen")
  train_path, eval_path = str(tmp_path / "train.txt"), str(tmp_path / "eval.txt")
  alfworld.write_game_list(train_path, seen[:4])
  alfworld.write_game_list(eval_path, seen[4:6] + list_games(alfworld_games, "valid_unseen")[:1])
  env_cfg = ml_collections.ConfigDict({**c.env.to_dict(), "data_dir": alfworld_games, "train_split": "valid_seen"})
  assert env_setup.build(env_cfg, c.rollout).train_tasks == seen
  env_cfg.update(train_games=train_path, eval_games=eval_path)
  setup = env_setup.build(env_cfg, c.rollout)
  assert setup.train_tasks == seen[:4] and len(setup.eval_tasks) == 3 and setup.eval_tasks[:2] == seen[4:6]
  env_cfg.eval_games = str(tmp_path / "absent.txt")
  with pytest.raises(UserError, match="no ALFWorld game list"):
    env_setup.build(env_cfg, c.rollout)
