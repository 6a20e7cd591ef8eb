"""Study v2's fixed game lists (results/cpu_study_v2.md, "Common"): pure functions of the ALFWorld split listings
(sorted task ids) and the sizes below, so anyone can regenerate and check the committed files.

  screen.txt       50 train games per task type, outside the SFT games              (screening, stage S)
  e1_heldout.txt   200 train games of E1's types, outside the SFT and screening games (never trained on)
  e1_train.txt     every other train game of E1's types                              (E1's training games)
  e1_eval.txt      e1_heldout + the valid_seen and valid_unseen games of E1's types  (E1's evaluation)
  e2_pool.txt      1,000 train games outside the SFT games, seeded order             (E2's held-out pool)
  e2_train.txt     every other train game                                            (E2's training games)
  e2_eval.txt      valid_seen + valid_unseen + the pool's first N games (N: cpu_study_v2.heldout_size)
"""

from __future__ import annotations

import dataclasses

from opid_jax.envs.alfworld import TASK_TYPES, task_type_of
from opid_jax.sft.data import choose_games


@dataclasses.dataclass(frozen=True)
class Sizes:
  sft_games: int = 800  # configs/sft_alfworld_small.py data.num_games (its data.seed is SEEDS["sft"])
  screen_per_type: int = 50
  screen_max_share: float = 0.02  # a type joins E1 with at most this share of successes in its screening games
  e1_heldout: int = 200
  e2_pool: int = 1000
  e2_heldout_min: int = 500  # E2's held-out games: from this many, in steps of e2_heldout_step, up to e2_pool
  e2_heldout_step: int = 100
  valid_per_type: int = 0  # valid games of each task type in e1_eval and e2_eval (0: all of them)


FULL = Sizes()
SHORT = Sizes(
  sft_games=40, screen_per_type=1, e1_heldout=3, e2_pool=6, valid_per_type=1
)  # for the valid splits of CI's data
SEEDS = {"sft": 0, "screen": 0, "e1_heldout": 1, "e2_pool": 2}


def sft_games(train: list[str], sizes: Sizes) -> set[str]:
  """The games whose walkthroughs trained the SFT start (sft.data.select_games with the SFT config's values)."""
  return set(choose_games(train, sizes.sft_games, SEEDS["sft"]))


def of_types(games: list[str], types) -> list[str]:
  return [g for g in games if task_type_of(g) in types]


def screen_list(train: list[str], sizes: Sizes) -> list[str]:
  sft = sft_games(train, sizes)
  fresh = [g for g in train if g not in sft]
  return [g for t in TASK_TYPES for g in choose_games(of_types(fresh, (t,)), sizes.screen_per_type, SEEDS["screen"])]


def e1_types(screen_outcomes: dict[str, dict], sizes: Sizes) -> list[str]:
  """Task types with at most screen_max_share successes among their screening games (in TASK_TYPES order)."""
  chosen = []
  for t in TASK_TYPES:
    won = [g["won"] for task_id, g in screen_outcomes.items() if task_type_of(task_id) == t]
    if won and sum(won) <= sizes.screen_max_share * len(won) + 1e-9:
      chosen.append(t)
  return chosen


def e1_lists(
  train: list[str], valid: list[str], types: list[str], screen: list[str], sizes: Sizes
) -> dict[str, list[str]]:
  excluded = sft_games(train, sizes) | set(screen)
  candidates = [g for g in of_types(train, types) if g not in excluded]
  heldout = choose_games(candidates, sizes.e1_heldout, SEEDS["e1_heldout"])
  kept = set(heldout)
  return {
    "e1_heldout": heldout,
    "e1_train": [g for g in of_types(train, types) if g not in kept],
    "e1_eval": heldout + valid_games(valid, types, sizes),
  }


def valid_games(valid: list[str], types, sizes: Sizes) -> list[str]:
  """The valid splits' games of `types` (with valid_per_type, the first that many of each type)."""
  return [g for t in types for g in of_types(valid, (t,))[: sizes.valid_per_type or None]]


def e2_lists(train: list[str], sizes: Sizes) -> dict[str, list[str]]:
  sft = sft_games(train, sizes)
  pool = choose_games([g for g in train if g not in sft], sizes.e2_pool, SEEDS["e2_pool"])
  kept = set(pool)
  return {"e2_pool": pool, "e2_train": [g for g in train if g not in kept]}


def e2_eval(valid: list[str], pool: list[str], heldout: int, sizes: Sizes) -> list[str]:
  return valid_games(valid, TASK_TYPES, sizes) + pool[:heldout]
