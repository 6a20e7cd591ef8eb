"""Fuzzy string matching as WebShop's reward uses it (thefuzz's `token_set_ratio`), and colour normalisation.

Scores are integers 0..100 like thefuzz's. Both strings are cleaned as thefuzz 0.19's `utils.full_process`
with `force_ascii` (WebShop pins thefuzz 0.19): the characters U+0080..U+00FF are deleted (its `asciidammit`;
every other character is kept, CJK and U+0100 onwards included), every non-word character (regex `\\W`: neither
alphanumeric nor `_`) becomes a space, then lower-case and strip. The similarity of two strings is the InDel
ratio `2 * LCS / (len_a + len_b)` (thefuzz 0.19's `ratio` when python-Levenshtein is installed).
"""

from __future__ import annotations

import functools
import re

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


# thefuzz 0.19 utils.py: `bad_chars` is chr(128)..chr(255), deleted by `asciionly` (str.translate).
_LATIN1_HIGH = dict.fromkeys(range(128, 256))
# thefuzz 0.19 string_processing.py: StringProcessor.regex, each match replaced with one space.
_NON_WORD = re.compile(r"(?ui)\W")


def preprocess(text) -> str:
  """thefuzz 0.19's `full_process(text, force_ascii=True)`, step for step: `asciidammit` (str() of a
  non-string, then delete U+0080..U+00FF), non-word characters to spaces, lower(), strip()."""
  text = str(text).translate(_LATIN1_HIGH)
  return _NON_WORD.sub(" ", text).lower().strip()


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
