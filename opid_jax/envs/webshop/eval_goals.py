"""WebShop's two reported numbers: average purchase score x 100 and success rate (in %)."""

from __future__ import annotations

from typing import Iterable


def summarize_episodes(records: Iterable[tuple[float, bool]]) -> dict[str, float]:
  """`records` holds one (score 0..1, success) pair per episode; an episode that never bought scores 0.

  Returns {'score': mean score x 100, 'success_rate': % of successes, 'episodes': count}.
  """
  records = list(records)
  if not records:
    return {"score": 0.0, "success_rate": 0.0, "episodes": 0}
  total_score = sum(float(score) for score, _ in records)
  successes = sum(1 for _, success in records if success)
  return {
    "score": 100.0 * total_score / len(records),
    "success_rate": 100.0 * successes / len(records),
    "episodes": len(records),
  }
