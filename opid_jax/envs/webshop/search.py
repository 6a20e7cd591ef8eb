"""WebShop's product search: BM25 (k1 0.9, b 0.4, Lucene idf) over one lower-cased document per product.

WebShop indexes with Lucene's English analyzer; this analyzer approximates it: word tokens as Lucene's
StandardTokenizer keeps them (digits joined by '.' or ',', letters by an apostrophe), the possessive "'s"
removed, Lucene's 33 English stopwords dropped, Porter stemming (PyStemmer's 'porter', the algorithm of
Lucene's PorterStemFilter). Lucene's one-byte document-length encoding is not reproduced.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import Stemmer

from opid_jax.envs.bm25 import import_bm25s

BM25_K1 = 0.9
BM25_B = 0.4
SEARCH_RETURN_N = 50

LUCENE_ENGLISH_STOPWORDS = frozenset(
  (
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "but",
    "by",
    "for",
    "if",
    "in",
    "into",
    "is",
    "it",
    "no",
    "not",
    "of",
    "on",
    "or",
    "such",
    "that",
    "the",
    "their",
    "then",
    "there",
    "these",
    "they",
    "this",
    "to",
    "was",
    "will",
    "with",
  )
)
_TOKEN = re.compile(r"\w+(?:(?:(?<=\d)[.,](?=\d)|(?<=[^\W\d_])['’](?=[^\W\d_]))\w+)*")


def product_document(title: str, description: str, bullet_points: Sequence[str], options: dict[str, list[str]]) -> str:
  """Title, description, the first bullet point and the option text, lower-cased (WebShop's index text)."""
  option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in options.items())
  first_bullet = bullet_points[0] if bullet_points else ""
  return " ".join([title, description, first_bullet or "", option_text]).lower()


class Analyzer:
  """Text -> index terms; stems are cached since product text repeats its vocabulary a lot."""

  def __init__(self):
    self._stemmer = Stemmer.Stemmer("porter")
    self._stems: dict[str, str] = {}

  def _stem(self, word: str) -> str:
    stem = self._stems.get(word)
    if stem is None:
      stem = self._stems[word] = self._stemmer.stemWord(word)
    return stem

  def __call__(self, text: str) -> list[str]:
    terms = []
    for token in _TOKEN.findall(text.lower()):
      if token.endswith(("'s", "’s")):
        token = token[:-2]
      if token and token not in LUCENE_ENGLISH_STOPWORDS:
        terms.append(self._stem(token))
    return terms


class ProductIndex:
  """BM25 over product documents; search returns document positions, best first, ties in index order."""

  def __init__(self, documents: Sequence[str]):
    self.analyzer = Analyzer()
    self.size = len(documents)
    self._bm25 = import_bm25s().BM25(k1=BM25_K1, b=BM25_B, method="lucene")
    self._bm25.index([self.analyzer(doc) for doc in documents], show_progress=False)

  def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[int]:
    term_ids = self._bm25.get_tokens_ids(self.analyzer(query))
    if not term_ids or self.size == 0:
      return []
    scores = np.asarray(self._bm25.get_scores_from_ids(term_ids), dtype=np.float64)
    hits = np.flatnonzero(scores > 0)
    if len(hits) > k:
      # Keep every document tied with the k-th score so the stable sort below breaks ties by position.
      kth = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
      hits = hits[scores[hits] >= kth]
    order = hits[np.lexsort((hits, -scores[hits]))]
    return order[:k].tolist()
