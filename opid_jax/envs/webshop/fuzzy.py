"""Fuzzy string matching as WebShop's reward uses it (thefuzz's `token_set_ratio`), and colour normalisation.

Scores are integers 0..100 like thefuzz's: both strings are reduced to ASCII, lower-cased, every
non-alphanumeric character becomes a space; the similarity of two strings is the InDel ratio
`2 * LCS / (len_a + len_b)` (what thefuzz computes through rapidfuzz / python-Levenshtein).
"""

from __future__ import annotations

import functools

# WebShop's colour vocabulary (engine/normalize.py), in its order: the first one contained in an option wins.
COLOR_SET = (
  "alabaster",
  "apricot",
  "aqua",
  "ash",
  "asphalt",
  "azure",
  "banana",
  "beige",
  "black",
  "blue",
  "blush",
  "bordeaux",
  "bronze",
  "brown",
  "burgundy",
  "camel",
  "camo",
  "caramel",
  "champagne",
  "charcoal",
  "cheetah",
  "chestnut",
  "chocolate",
  "christmas",
  "coffee",
  "cognac",
  "copper",
  "coral",
  "cranberry",
  "cream",
  "crystal",
  "dark",
  "denim",
  "eggplant",
  "elephant",
  "espresso",
  "fuchsia",
  "gold",
  "granite",
  "grape",
  "graphite",
  "grass",
  "gray",
  "green",
  "grey",
  "heather",
  "indigo",
  "ivory",
  "ivy",
  "khaki",
  "lavender",
  "lemon",
  "leopard",
  "light",
  "lilac",
  "lime",
  "magenta",
  "maroon",
  "mauve",
  "merlot",
  "midnight",
  "mint",
  "mocha",
  "multicolor",
  "mushroom",
  "mustard",
  "natural",
  "navy",
  "nude",
  "olive",
  "orange",
  "peach",
  "pewter",
  "pink",
  "plum",
  "purple",
  "rainbow",
  "red",
  "rose",
  "royal",
  "rust",
  "sand",
  "sapphire",
  "seashell",
  "silver",
  "skull",
  "slate",
  "steel",
  "stone",
  "stonewash",
  "sunflower",
  "tan",
  "taupe",
  "teal",
  "tiger",
  "turquoise",
  "violet",
  "walnut",
  "wheat",
  "white",
  "wine",
  "yellow",
)


def normalize_color(option) -> str | tuple:
  """The first colour of COLOR_SET found `in` the option, else the option unchanged.

  WebShop applies this to option strings (substring test) and, for synthetic goals, to (name, value)
  tuples, where `in` means "equals one element": both behaviours come from Python's `in`.
  """
  for color in COLOR_SET:
    if color in option:
      return color
  return option


def preprocess(text) -> str:
  """thefuzz's full_process with force_ascii: non-strings go through str(), as thefuzz does."""
  text = str(text)
  ascii_only = "".join(ch for ch in text if ord(ch) < 128)
  spaced = "".join(ch if ch.isalnum() else " " for ch in ascii_only)
  return spaced.lower().strip()


def _lcs_length(a: str, b: str) -> int:
  if len(a) < len(b):
    a, b = b, a
  previous = [0] * (len(b) + 1)
  for ch in a:
    current = [0]
    for j, other in enumerate(b):
      current.append(previous[j] + 1 if ch == other else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def indel_ratio(a: str, b: str) -> float:
  """Similarity 0..100 from the insert/delete distance: 100 * 2 * LCS / (len(a) + len(b))."""
  total = len(a) + len(b)
  if total == 0:
    return 100.0
  return 100.0 * 2 * _lcs_length(a, b) / total


@functools.lru_cache(maxsize=65536)
def _token_set_ratio_processed(a: str, b: str) -> int:
  tokens_a, tokens_b = set(a.split()), set(b.split())
  if not tokens_a or not tokens_b:
    return 0
  common = " ".join(sorted(tokens_a & tokens_b))
  with_rest_a = (common + " " + " ".join(sorted(tokens_a - tokens_b))).strip()
  with_rest_b = (common + " " + " ".join(sorted(tokens_b - tokens_a))).strip()
  best = max(indel_ratio(common, with_rest_a), indel_ratio(common, with_rest_b), indel_ratio(with_rest_a, with_rest_b))
  return int(round(best))


def token_set_ratio(a, b) -> int:
  """thefuzz.fuzz.token_set_ratio(a, b) with its defaults (force_ascii, full_process)."""
  return _token_set_ratio_processed(preprocess(a), preprocess(b))
