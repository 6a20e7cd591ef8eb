"""WebShop's purchase score (0..1): attributes, options and price matched, times a product-type factor.

score = (attributes matched + options matched + [price <= limit]) / (n attributes + n options + 1) * r_type

Pure functions over `Product` and `Goal` records (see webshop_data.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from opid_jax.envs.webshop.fuzzy import normalize_color, token_set_ratio

FUZZY_MATCH_THRESHOLD = 85  # a fuzzy score must be strictly above this

# WebShop finds nouns with spaCy. Product names are Title Case, which spaCy tags mostly NOUN/PROPN, so
# "every content word" is a close, dependency-free stand-in: words with a letter, minus function words
# and -ly adverbs.
_FUNCTION_WORDS = frozenset(
  """
a an the and or nor but so yet for of to in on at by with without from into onto over under up down out off
about above below between among through during before after since until upon within along across against
per via than as if then this that these those it its it's is are was were be been being am do does did has
have had will would can could may might must shall should not no yes all any each every both either neither
some such only own same other another more most less least very too also just my your his her our their
i you he she we they me him us them who whom whose which what when where why how here there
""".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def name_nouns(name: str) -> list[str]:
  """Lower-cased words of a product name that count as nouns for the type factor (see module note)."""
  words = _WORD.findall(name.lower())
  return [
    w for w in words if len(w) > 1 and any(c.isalpha() for c in w) and w not in _FUNCTION_WORDS and not w.endswith("ly")
  ]


@dataclasses.dataclass(frozen=True)
class TypeMatch:
  r_type: float
  query_match: bool
  category_match: bool
  title_score: float


def type_factor(
  purchased_query: str,
  purchased_category: str,
  purchased_name: str,
  goal_query: str,
  goal_category: str,
  goal_name: str,
) -> TypeMatch:
  """1.0 when the product is of the goal's type; 0.5, 0.1 or 0.0 as the name nouns overlap less."""
  query_match = purchased_query == goal_query
  purchased_levels = {level.strip() for level in purchased_category.split("›")}
  goal_levels = {level.strip() for level in goal_category.split("›")}
  category_match = len(purchased_levels & goal_levels) >= 2
  purchased_nouns, goal_nouns = set(name_nouns(purchased_name)), name_nouns(goal_name)
  if goal_nouns:
    title_score = len(purchased_nouns & set(goal_nouns)) / len(goal_nouns)
  else:
    title_score = 0.2
  r_type = 1.0
  if not (query_match or category_match or title_score > 0.2):
    r_type = 0.5
  # These two apply even when the query or the category matched, as in WebShop.
  if title_score < 0.1:
    r_type = 0.1
  if title_score == 0.0:
    r_type = 0.0
  return TypeMatch(r_type, query_match, category_match, title_score)


def attribute_matches(goal_attributes, product_attributes, title: str, bullet_points, description: str) -> int:
  """Goal attributes found in the product: fuzzy against its attribute list, else as a substring of its text."""
  bullets_text = " ".join(bullet_points).lower()
  matched = 0
  for goal_attr in goal_attributes:
    if any(token_set_ratio(p_attr, goal_attr) > FUZZY_MATCH_THRESHOLD for p_attr in product_attributes):
      matched += 1
    elif goal_attr in title.lower() or goal_attr in bullets_text or goal_attr in description.lower():
      matched += 1
  return matched


def goal_option_items(goal_options) -> list:
  """Synthetic goals hold {name: value}; WebShop compares their (name, value) pairs. Human goals hold values."""
  if isinstance(goal_options, Mapping):
    return list(goal_options.items())
  return list(goal_options)


def option_matches(goal_options, chosen_options: Mapping[str, str]) -> int:
  """Goal options matched by some chosen option value (colour-normalised, fuzzy > 85)."""
  chosen = [normalize_color(value) for value in chosen_options.values()]
  matched = 0
  for goal_option in goal_option_items(goal_options):
    goal_side = normalize_color(goal_option)
    if any(token_set_ratio(value, goal_side) > FUZZY_MATCH_THRESHOLD for value in chosen):
      matched += 1
  return matched


@dataclasses.dataclass(frozen=True)
class ScoreBreakdown:
  score: float
  attributes_matched: int
  n_attributes: int
  options_matched: int
  n_options: int
  price_ok: bool
  type_match: TypeMatch


def purchase_score(product, goal, price: float, chosen_options: Mapping[str, str]) -> ScoreBreakdown:
  """WebShop's reward for buying `product` at `price` with `chosen_options` under `goal`."""
  type_match = type_factor(
    product.query, product.product_category, product.name, goal.query, goal.product_category, goal.name
  )
  price_ok = price <= goal.price_upper
  n_attr = attribute_matches(
    goal.attributes, product.attributes, product.title, product.bullet_points, product.description
  )
  n_opt = option_matches(goal.goal_options, chosen_options)
  denominator = len(goal.attributes) + len(goal.goal_options) + 1
  score = (n_attr + n_opt + int(price_ok)) / denominator * type_match.r_type
  return ScoreBreakdown(score, n_attr, len(goal.attributes), n_opt, len(goal.goal_options), price_ok, type_match)
