"""ALFWorld text games, played through TextWorld's PDDL backend with ALFRED object names.

Data layout (what `alfworld-download` or `scripts/unpack_alfworld.py` produce):
  DATA_DIR/json_2.1.1/<split>/<task_type>-<object>-<movable>-<receptacle>-<scene>/trial_*/game.tw-pddl
A task id is the game file's path relative to `DATA_DIR/json_2.1.1`, e.g.
  valid_seen/look_at_obj_in_light-AlarmClock-None-DeskLamp-323/trial_T20190909_044715_250790/game.tw-pddl
so ids stay valid when the data moves to another machine.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from typing import Any

from opid_jax.envs.base import Env, Hindsight, ResetResult, StepResult

TASK_TYPES = (
  "pick_and_place_simple",
  "look_at_obj_in_light",
  "pick_clean_then_place_in_recep",
  "pick_heat_then_place_in_recep",
  "pick_cool_then_place_in_recep",
  "pick_two_obj_and_place",
)
SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train")
GAME_FILE = "game.tw-pddl"
DATASET_FOLDER = "json_2.1.1"
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_TASK_PREFIX = "Your task is to: "


def games_root(data_dir: str) -> str:
  """The folder holding the splits; accepts either DATA_DIR or DATA_DIR/json_2.1.1."""
  nested = os.path.join(data_dir, DATASET_FOLDER)
  return nested if os.path.isdir(nested) else data_dir


def task_type_of(task_id: str) -> str:
  """The task type is the prefix of the game's folder name (`<task_type>-<object>-...`)."""
  parts = task_id.replace(os.sep, "/").split("/")
  return parts[-3].split("-")[0]


def list_games(
  data_dir: str, split: str, task_types: tuple[str, ...] = TASK_TYPES, require_solvable: bool = False
) -> list[str]:
  """Task ids of a split: sorted and free of duplicates, so evaluation lists are fixed.

  `require_solvable` also drops games whose file says `"solvable": false` (none in json_2.1.1; it
  costs one JSON parse per game).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown ALFWorld split {split!r}; expected one of {SPLITS}")
  root = games_root(data_dir)
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f"no ALFWorld split folder at {split_dir}")
  found = set()
  for folder in os.listdir(split_dir):
    if folder.split("-")[0] not in task_types:
      continue
    folder_dir = os.path.join(split_dir, folder)
    for trial in os.listdir(folder_dir):
      path = os.path.join(folder_dir, trial, GAME_FILE)
      if os.path.isfile(path) and (not require_solvable or _is_solvable(path)):
        found.add(f"{split}/{folder}/{trial}/{GAME_FILE}")
  return sorted(found)


def read_game_list(data_dir: str, path: str) -> list[str]:
  """Task ids from a text file, one per line (blank lines and `#` comments skipped), in the file's order. Every id
  must name a game under DATA_DIR and appear once: a list is a fixed experimental set, and a typo or a duplicate
  would silently change it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no ALFWorld game list at {path}")
  with open(path) as f:
    ids = [line.split("#", 1)[0].strip() for line in f]
  ids = [i for i in ids if i]
  if not ids:
    raise ValueError(f"the ALFWorld game list {path} names no game")
  repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
  if repeated:
    raise ValueError(f"the ALFWorld game list {path} names {repeated[0]} more than once")
  root = games_root(data_dir)
  missing = [i for i in ids if i.split("/")[0] not in SPLITS or not os.path.isfile(os.path.join(root, i))]
  if missing:
    raise ValueError(f"the ALFWorld game list {path} names {len(missing)} games not under {root}, e.g. {missing[0]}")
  return ids


def write_game_list(path: str, task_ids: list[str], header: str = "") -> None:
  """The inverse of read_game_list: `# header` lines, then one id per line."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.writelines(f"# {line}\n" for line in header.splitlines())
    f.writelines(f"{i}\n" for i in task_ids)


def _is_solvable(path: str) -> bool:
  with open(path) as f:
    return bool(json.load(f).get("solvable", True))


def clean_observation(text: str) -> str:
  """Drops TextWorld's welcome banner; the rest of the game text is kept as it is."""
  return text.replace(_BANNER, "").strip()


def task_from_intro(intro: str) -> str:
  start = intro.find(_TASK_PREFIX)
  if start == -1:
    return ""
  return intro[start + len(_TASK_PREFIX) :].strip()


def _memoize_pddl_translation(max_games: int = 64) -> None:
  """Makes fast-downward's PDDL -> SAS translation reuse its result within this process.

  TextWorld translates a game's problem twice on every load and every reset (pure Python, about
  2 s of a 2.5 s reset on the train games), although the result depends only on the PDDL text.
  The translated task is only read afterwards, so envs of one process can share it: the envs of a
  group (same game) and repeated resets then pay for it once.
  """
  import fast_downward

  if getattr(fast_downward.pddl2sas, "is_memoized", False):
    return
  original = fast_downward.pddl2sas

  @functools.lru_cache(maxsize=2 * max_games)
  def translate(*args: Any, **kwargs: Any) -> Any:
    argv = list(sys.argv)  # the translator overwrites sys.argv for its option parser
    try:
      return original(*args, **kwargs)
    finally:
      sys.argv = argv

  translate.is_memoized = True
  fast_downward.pddl2sas = translate


def _memoize_grammar_parsing(max_templates: int = 50_000) -> None:
  """Makes TextWorld's text grammar parse each template string once per process.

  Every step derives the text of ~100 admissible commands, and each derivation re-parses its
  template with tatsu (half of a step's time). The parse depends only on the string; callers
  mutate the symbols they get, so each caller receives a deep copy of the cached parse. Outputs
  are unchanged (same observations and command lists), steps take about half the time.
  """
  from textworld.envs.pddl import textgen

  if getattr(textgen._parse_and_convert, "is_memoized", False):
    return
  parse = functools.lru_cache(maxsize=max_templates)(textgen._parse_and_convert)

  def parse_copy(*args: Any, **kwargs: Any) -> Any:
    return copy.deepcopy(parse(*args, **kwargs))

  parse_copy.is_memoized = True
  textgen._parse_and_convert = parse_copy


def _start_textworld_env(memoize: bool) -> Any:
  # Imported here so that listing games and building prompts never needs textworld.
  import textworld
  from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
  from textworld.envs.pddl import PddlEnv

  if memoize:
    _memoize_pddl_translation()
    _memoize_grammar_parsing()
  infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["walkthrough"])
  return AlfredDemangler(PddlEnv(infos), shuffle=False)


class AlfworldEnv(Env):
  """One ALFWorld game at a time; reward `win_reward` on the winning step, episode ends on a win
  or after `max_steps` steps."""

  def __init__(
    self,
    data_dir: str,
    max_steps: int = 30,
    win_reward: float = 10.0,
    hide_help: bool = True,
    memoize_textworld: bool = True,
  ):
    self.data_dir = data_dir
    self.max_steps = max_steps
    self.win_reward = win_reward
    self.hide_help = hide_help  # `help` only prints the command list; the prompt already has it
    self.memoize_textworld = memoize_textworld  # process-wide once on (see _memoize_*)
    self._game = None  # textworld env, built on first reset (it loads a private planner library)
    self._loaded_task_id = ""
    self._walkthrough: tuple[str, ...] = ()
    self._steps = 0
    self._done = True

  def _admissible(self, state: Any) -> list[str]:
    commands = list(state["admissible_commands"] or [])
    return [c for c in commands if not (self.hide_help and c == "help")]

  def reset(self, task_id: str) -> ResetResult:
    if self._game is None:
      self._game = _start_textworld_env(self.memoize_textworld)
    if task_id != self._loaded_task_id:
      path = os.path.join(games_root(self.data_dir), task_id)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"no ALFWorld game at {path}")
      self._loaded_task_id = ""
      self._game.load(path)
      self._loaded_task_id = task_id
    state = self._game.reset()
    self._walkthrough = tuple(state["extra.walkthrough"] or ())
    self._steps = 0
    self._done = False
    observation = clean_observation(state.feedback)
    return ResetResult(
      observation=observation,
      task=task_from_intro(observation),
      task_type=task_type_of(task_id),
      admissible_actions=self._admissible(state),
      info={"task_id": task_id},
    )

  def step(self, action: str) -> StepResult:
    if self._done:
      raise RuntimeError("step() called on a finished ALFWorld episode; call reset() first")
    state, _, _ = self._game.step(action)
    self._steps += 1
    won = bool(state["won"])
    truncated = not won and self._steps >= self.max_steps
    self._done = won or truncated
    return StepResult(
      observation=clean_observation(state.feedback),
      reward=self.win_reward if won else 0.0,
      done=self._done,
      won=won,
      admissible_actions=self._admissible(state),
      info={"truncated": truncated, "steps": self._steps},
    )

  def hindsight(self) -> Hindsight:
    return Hindsight(expert_actions=self._walkthrough)

  def close(self) -> None:
    if self._game is not None:
      self._game.close()
      self._game = None
      self._loaded_task_id = ""
