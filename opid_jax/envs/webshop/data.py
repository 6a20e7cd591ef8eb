"""Loading WebShop's own data files into products, purchase prices and goals, as WebShop's engine does.

Files (WebShop's schema): `items_shuffle_*.json` (a list of scraped products), `items_ins_v2_*.json`
(ASIN -> attributes, and for some products an instruction with its attributes), and optionally
`items_human_ins.json` (ASIN -> human-written instructions with options).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
from decimal import Decimal
from typing import Any, Mapping, Sequence

PRICE_STEPS = tuple(10.0 * i for i in range(1, 100))  # the price limits a goal may state
NO_PRICE_LIMIT = 1000000
DEFAULT_PRICE = 100.0


class WebShopDataMissingError(FileNotFoundError):
  """WebShop's product or attribute files are not where the env was told to look."""


def missing_data_message(missing: Sequence[str], where: str) -> str:
  return (
    f"WebShop data missing: {', '.join(missing)} not found in {where}. Get them with WebShop's "
    f"setup.sh (princeton-nlp/WebShop, `-d small` for the 1,000-product set) or write an offline "
    f"catalogue with `python -m opid_jax.envs.webshop.catalogue --out={where}`."
  )


@dataclasses.dataclass
class Product:
  asin: str
  name: str  # = Title
  title: str
  description: str
  bullet_points: list[str]
  category: str
  query: str  # lower-cased
  product_category: str
  price_tag: str  # as shown, e.g. "$12.99" or "$10.0 to $20.0"
  pricing: list[float]
  options: dict[str, list[str]]  # option name (lower-cased) -> values (lower-cased, '/' -> ' | ')
  attributes: list[str]
  rating: str = "N.A."
  instruction_text: str | None = None
  instruction_attributes: list[str] | None = None
  human_instructions: list[dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Goal:
  asin: str
  category: str
  query: str
  name: str
  product_category: str
  instruction_text: str
  attributes: tuple[str, ...]
  price_upper: float
  goal_options: Any  # dict name -> value (synthetic goals) or a list of values (human goals)


def parse_pricing(pricing: str | None) -> tuple[list[float], str]:
  """'$a' or '$a to $b' -> ([a] or [a, b], the tag shown on pages); nothing -> $100.0."""
  if not pricing:
    return [DEFAULT_PRICE], f"${DEFAULT_PRICE}"
  values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in pricing.split("$")[1:]]
  if len(values) == 1:
    return values, f"${values[0]}"
  return values[:2], f"${values[0]} to ${values[1]}"


def parse_options(customization_options) -> dict[str, list[str]]:
  options = {}
  for option_name, contents in (customization_options or {}).items():
    if contents is None:
      continue
    options[option_name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
  return options


def build_products(
  raw_products: Sequence[Mapping[str, Any]],
  attributes: Mapping[str, Any],
  human_instructions: Mapping[str, Any] | None = None,
  num_products: int | None = None,
) -> list[Product]:
  """WebShop's product cleaning: skip bad or repeated ASINs, derive page fields, attach attributes."""
  if num_products is not None:
    raw_products = raw_products[:num_products]
  seen, products = set(), []
  for raw in raw_products:
    asin = raw["asin"]
    if asin == "nan" or len(asin) > 10 or asin in seen:
      continue
    seen.add(asin)
    bullets = raw.get("small_description")
    bullets = bullets if isinstance(bullets, list) else [bullets or ""]
    pricing, price_tag = parse_pricing(raw.get("pricing"))
    annotation = attributes.get(asin) or {}
    products.append(
      Product(
        asin=asin,
        name=raw["name"],
        title=raw["name"],
        description=raw.get("full_description") or "",
        bullet_points=bullets,
        category=raw.get("category", ""),
        query=raw.get("query", "").lower().strip(),
        product_category=raw.get("product_category", ""),
        price_tag=price_tag,
        pricing=pricing,
        options=parse_options(raw.get("customization_options")),
        attributes=annotation["attributes"] if "attributes" in annotation else ["DUMMY_ATTR"],
        instruction_text=annotation.get("instruction"),
        instruction_attributes=annotation.get("instruction_attributes"),
        human_instructions=(human_instructions or {}).get(asin),
      )
    )
  return products


def purchase_prices(products: Sequence[Product], rng: random.Random) -> dict[str, float]:
  """The price a product is bought at: its single price, or a uniform draw inside its price range."""
  prices = {}
  for product in products:
    if len(product.pricing) == 1:
      prices[product.asin] = product.pricing[0]
    else:
      prices[product.asin] = rng.uniform(*product.pricing[:2])
  return prices


def draw_price_limit(price: float, rng: random.Random) -> tuple[float, str]:
  """The larger of two of the first four multiples of 10 above the price, and its instruction suffix."""
  candidates = [step for step in PRICE_STEPS if step > price][:4]
  if len(candidates) < 2:
    return NO_PRICE_LIMIT, ""
  limit = max(rng.sample(candidates, 2))
  return limit, f", and price lower than {limit:.2f} dollars"


def synthetic_goals(products: Sequence[Product], prices: Mapping[str, float], rng: random.Random) -> list[Goal]:
  """One goal per option combination of every product that has an instruction (option names sorted)."""
  goals = []
  for product in products:
    if product.instruction_text is None:
      continue
    price_upper, price_text = draw_price_limit(prices[product.asin], rng)
    option_names = sorted(product.options)
    for combination in itertools.product(*(product.options[name] for name in option_names)):
      chosen = dict(zip(option_names, combination))
      option_text = ", and ".join(f"{name}: {value}" for name, value in chosen.items())
      option_text = f" with {option_text}" if option_text else ""
      goals.append(
        Goal(
          asin=product.asin,
          category=product.category,
          query=product.query,
          name=product.title,
          product_category=product.product_category,
          instruction_text=f"{product.instruction_text}{option_text}{price_text}",
          attributes=tuple(product.instruction_attributes or ()),
          price_upper=price_upper,
          goal_options=chosen,
        )
      )
  return goals


def human_goals(products: Sequence[Product], prices: Mapping[str, float], rng: random.Random) -> list[Goal]:
  """One goal per human instruction that names at least one attribute."""
  goals = []
  for product in products:
    for written in product.human_instructions or ():
      if not written["instruction_attributes"]:
        continue
      price_upper, price_text = draw_price_limit(prices[product.asin], rng)
      goals.append(
        Goal(
          asin=product.asin,
          category=product.category,
          query=product.query,
          name=product.name,
          product_category=product.product_category,
          instruction_text=written["instruction"].strip(".") + price_text,
          attributes=tuple(written["instruction_attributes"]),
          price_upper=price_upper,
          goal_options=list(written["instruction_options"]),
        )
      )
  return goals


def shuffle_goals(goals: list[Goal], seed: int) -> list[Goal]:
  """WebShop's fixed goal order: one shuffle by a fresh generator with a fixed seed."""
  shuffled = list(goals)
  random.Random(seed).shuffle(shuffled)
  return shuffled


def _find_data_files(data_dir: str) -> tuple[str, str]:
  """Pairs items_shuffle_X.json with items_ins_v2_X.json; the 1,000-product set first, then the full set."""
  suffixes = ["_1000", ""]
  for name in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []:
    match = re.fullmatch(r"items_ins_v2(_[A-Za-z0-9]+)?\.json", name)
    if match and (match.group(1) or "") not in suffixes:
      suffixes.append(match.group(1))
  for suffix in suffixes:
    products_path = os.path.join(data_dir, f"items_shuffle{suffix}.json")
    attributes_path = os.path.join(data_dir, f"items_ins_v2{suffix}.json")
    if os.path.exists(products_path) and os.path.exists(attributes_path):
      return products_path, attributes_path
  for suffix in suffixes:
    products_path = os.path.join(data_dir, f"items_shuffle{suffix}.json")
    attributes_path = os.path.join(data_dir, f"items_ins_v2{suffix}.json")
    if os.path.exists(products_path) or os.path.exists(attributes_path):
      missing = [os.path.basename(p) for p in (products_path, attributes_path) if not os.path.exists(p)]
      raise WebShopDataMissingError(missing_data_message(missing, data_dir))
  raise WebShopDataMissingError(missing_data_message(["items_shuffle_1000.json", "items_ins_v2_1000.json"], data_dir))


def resolve_data_files(
  data_dir: str | None = None, products_path: str | None = None, attributes_path: str | None = None
) -> tuple[str, str]:
  """Explicit paths win; otherwise the pair found in data_dir. Raises WebShopDataMissingError."""
  if products_path is None or attributes_path is None:
    if data_dir is None:
      raise WebShopDataMissingError(
        missing_data_message(
          [
            p
            for p, given in (("items_shuffle_*.json", products_path), ("items_ins_v2_*.json", attributes_path))
            if given is None
          ],
          "the given paths (no data_dir)",
        )
      )
    found_products, found_attributes = _find_data_files(data_dir)
    products_path = products_path or found_products
    attributes_path = attributes_path or found_attributes
  missing = [p for p in (products_path, attributes_path) if not os.path.exists(p)]
  if missing:
    where = os.path.dirname(missing[0]) or "."
    raise WebShopDataMissingError(missing_data_message([os.path.basename(p) for p in missing], where))
  return products_path, attributes_path


def read_json(path: str):
  with open(path) as f:
    return json.load(f)
