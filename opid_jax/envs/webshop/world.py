"""One loaded WebShop: products, purchase prices, the shuffled goal list and the search index.

Loading and indexing is the expensive part, so every env instance of a process shares one world
(`load_world` caches by its arguments).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random

from opid_jax.envs.webshop import data
from opid_jax.envs.webshop.search import SEARCH_RETURN_N, ProductIndex, product_document

GOAL_SEED = 233  # WebShop's seed for the goal shuffle; also seeds price draws (unseeded in WebShop)
TEST_GOALS = 500  # goal indices 0..499 are the test split, 500.. the training split


@dataclasses.dataclass
class WebShopWorld:
  products: list[data.Product]
  by_asin: dict[str, data.Product]
  prices: dict[str, float]
  goals: list[data.Goal]
  index: ProductIndex

  def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[data.Product]:
    return [self.products[i] for i in self.index.search(query, k)]

  def task_ids(self, split: str) -> list[str]:
    """Goal indices as strings: 'test' = 0..499, 'train' = 500.., 'all' = every goal."""
    indices = {
      "test": range(min(TEST_GOALS, len(self.goals))),
      "train": range(TEST_GOALS, len(self.goals)),
      "all": range(len(self.goals)),
    }[split]
    return [str(i) for i in indices]


def build_world(products: list[data.Product], use_human_goals: bool = False, seed: int = GOAL_SEED) -> WebShopWorld:
  rng = random.Random(seed)
  prices = data.purchase_prices(products, rng)
  make_goals = data.human_goals if use_human_goals else data.synthetic_goals
  goals = data.shuffle_goals(make_goals(products, prices, rng), seed)
  documents = [product_document(p.title, p.description, p.bullet_points, p.options) for p in products]
  return WebShopWorld(products, {p.asin: p for p in products}, prices, goals, ProductIndex(documents))


@functools.lru_cache(maxsize=4)
def load_world(
  data_dir: str | None = None,
  products_path: str | None = None,
  attributes_path: str | None = None,
  human_goals_path: str | None = None,
  use_human_goals: bool = False,
  num_products: int | None = None,
  seed: int = GOAL_SEED,
) -> WebShopWorld:
  """Reads WebShop's files (explicit paths, or the pair found in data_dir) and builds the world."""
  products_path, attributes_path = data.resolve_data_files(data_dir, products_path, attributes_path)
  if use_human_goals and (human_goals_path is None or not os.path.exists(human_goals_path)):
    raise data.WebShopDataMissingError(
      data.missing_data_message(["items_human_ins.json"], human_goals_path or data_dir or "the given paths")
    )
  human = data.read_json(human_goals_path) if use_human_goals else None
  products = data.build_products(data.read_json(products_path), data.read_json(attributes_path), human, num_products)
  return build_world(products, use_human_goals, seed)
