"""WebShop's pages as text: the visible text nodes of each page template, and its clickable elements.

The observation of a page is its text nodes joined with ' [SEP] ' (WebShop's "text" mode). A node that
is empty is absent; a whitespace-only node becomes an empty segment unless it holds a newline (the HTML
parser collapses those to '\n', which WebShop drops). Clickables are keyed by their lower-cased text as
WebShop's text env keys them: buttons and product links first, then option values (which win a clash).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

SEP = " [SEP] "
BUY_NOW = "Buy Now"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BACK_TO_SEARCH = "Back to Search"
SUB_PAGES = ("Description", "Features", "Reviews")
PRODUCTS_PER_PAGE = 10


@dataclasses.dataclass(frozen=True)
class Clickable:
  kind: str  # 'button', 'product' or 'option'
  option_name: str = ""  # for options: the option group a value sets


@dataclasses.dataclass
class Page:
  name: str  # 'search', 'results', 'item', 'description', 'features', 'reviews' or 'done'
  nodes: list[str]
  clickables: dict[str, Clickable]
  has_search_bar: bool = False

  @property
  def observation(self) -> str:
    segments = []
    for node in self.nodes:
      if node == "" or (node.strip() == "" and "\n" in node):
        continue
      segments.append(node.strip())
    return SEP.join(segments)

  @property
  def admissible_actions(self) -> list[str]:
    """As the published setups list them: the search template, then click[x] for every clickable."""
    actions = ["search[<your query>]"] if self.has_search_bar else []
    return actions + [f"click[{text}]" for text in self.clickables]


def _buttons(*labels: str) -> dict[str, Clickable]:
  return {label.lower(): Clickable("button") for label in labels}


def _header(instruction: str) -> list[str]:
  return ["Instruction:", instruction, BACK_TO_SEARCH]


def search_page(instruction: str) -> Page:
  return Page("search", ["WebShop", "Instruction: ", instruction, "Search"], _buttons("Search"), has_search_bar=True)


def results_page(instruction: str, products: Sequence, page_number: int, total: int) -> Page:
  """`products` are the ones on this page (objects with asin, title, price_tag)."""
  nodes = _header(instruction) + [f"Page {page_number} (Total results: {total})"]
  # WebShop's template always offers 'Next >', and '< Prev' after page 1.
  buttons = [BACK_TO_SEARCH] + ([PREV_PAGE] if page_number > 1 else []) + [NEXT_PAGE]
  nodes += buttons[1:]
  clickables = _buttons(*buttons)
  for product in products:
    nodes += [product.asin, product.title, product.price_tag]
    clickables[product.asin.lower()] = Clickable("product")
  return Page("results", nodes, clickables)


def item_page(instruction: str, product) -> Page:
  nodes = _header(instruction) + [PREV_PAGE]
  option_clicks = {}
  for option_name, values in product.options.items():
    nodes.append(option_name)
    nodes += values
    for value in values:
      option_clicks[value] = Clickable("option", option_name)
  nodes += [product.title, f"Price: {product.price_tag}", f"Rating: {product.rating}", *SUB_PAGES, BUY_NOW]
  clickables = _buttons(BACK_TO_SEARCH, PREV_PAGE, *SUB_PAGES, BUY_NOW)
  clickables.update(option_clicks)
  return Page("item", nodes, clickables)


def sub_page(instruction: str, product, which: str) -> Page:
  """'description', 'features' or 'reviews' of the current product (no reviews ship with WebShop's data)."""
  nodes = _header(instruction) + [PREV_PAGE]
  if which == "description":
    nodes.append(product.description)
  elif which == "features":
    nodes += [f" {bullet}" for bullet in product.bullet_points]
  return Page(which, nodes, _buttons(BACK_TO_SEARCH, PREV_PAGE))


def _flask_tojson(value: Mapping) -> str:
  """Flask's `tojson` filter: sorted keys, ASCII, and the HTML-sensitive characters escaped."""
  text = json.dumps(value, sort_keys=True)
  for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
    text = text.replace(char, escaped)
  return text


def done_page(asin: str, options: Mapping[str, str], score: float) -> Page:
  """The thank-you page; its hidden debug fields render as 'None' or not at all, as in WebShop."""
  nodes = [
    "Thank you for shopping with us!",
    "Your code: ",
    "None",
    " (Paste it in your MTurk interface.)",
    "Purchased",
    "asin",
    asin,
    "options",
    _flask_tojson(options),
    "attrs",
    "None",
    "category",
    "None",
    "query",
    "None",
    "product category",
    "None",
    "Target",
    "asin",
    "options",
    "attrs",
    "price upper",
    "instuction text",
    "category",
    "product category",
    "query",
    "Goal ",
    "None",
    "Reward",
    "Your score (min 0.0, max 1.0)",
    str(score),
    "Reward Details ",
    "None",
  ]
  return Page("done", nodes, {})
