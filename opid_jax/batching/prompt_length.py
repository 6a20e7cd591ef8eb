"""The one rule for a prompt longer than the limit (host-side, no JAX): cut it from the left, or refuse it.

Every place that limits prompt length applies it: rollouts and evaluation (agent/rollout.py), skill-augmented
prompts (rl/opid_samples.py), SFT examples, the sampler and the scorer, and the generate / score / serve tools.
Cutting on the left keeps the end of the prompt: the current observation, the instruction and the opened
assistant turn.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from opid_jax.errors import UserError

SIDES = ("left", "error")


class PromptTooLong(UserError):
  """A prompt over the limit under the "error" side."""


@dataclasses.dataclass(frozen=True)
class Knobs:
  """How the refusal names what a user can change: `{limit}={max_tokens}`, then `remedy`."""

  limit: str
  remedy: str


CONFIG = Knobs(
  "rollout.max_prompt_tokens", "raise it, or set rollout.truncation_side='left' to cut long prompts from the left"
)
CLI = Knobs("--max_prompt_tokens", "raise it, or pass --truncate_left to cut long prompts from the left")
SERVER = Knobs("this server's --max_prompt_tokens", "shorten the messages")


def fit(
  ids: Sequence[int], max_tokens: int | None, side: str, knobs: Knobs = CONFIG, what: str = "prompt"
) -> list[int]:
  """`ids` as the model may read them: unchanged when within `max_tokens` (None: no limit), else its last
  `max_tokens` ids ("left") or a PromptTooLong naming the length, the limit and the knobs ("error")."""
  if side not in SIDES:
    raise ValueError(f"unknown truncation side {side!r}; choose one of {SIDES}")
  ids = list(ids)
  if max_tokens is None or len(ids) <= max_tokens:
    return ids
  if max_tokens < 1:
    raise UserError(f"{knobs.limit} must be at least 1, not {max_tokens}")
  if side == "left":
    return ids[-max_tokens:]
  raise PromptTooLong(f"a {what} of {len(ids)} tokens exceeds {knobs.limit}={max_tokens}; {knobs.remedy}")


def fit_all(
  seqs: Sequence[Sequence[int]], max_tokens: int | None, side: str, knobs: Knobs = CONFIG, what: str = "prompt"
) -> list[list[int]]:
  return [fit(s, max_tokens, side, knobs, what) for s in seqs]
