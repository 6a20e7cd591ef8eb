"""Incremental detokenization for streamed responses: decode the growing id list, emit only the new suffix."""

from __future__ import annotations

from typing import Sequence

REPLACEMENT = "\ufffd"  # what a decoder writes for the first bytes of a character whose last bytes are still to come


class IncrementalDecoder:
  """`push(ids)` returns the text those ids add; `finish()` returns what was held back. The pieces concatenated
  equal the decoding of all ids at once (for tokenizers whose decoding of a prefix is a prefix of the decoding)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.ids: list[int] = []
    self.emitted = 0  # characters of the decoded text already returned

  def _decode(self) -> str:
    return self.tokenizer.decode(self.ids, skip_special_tokens=True)

  def push(self, ids: Sequence[int]) -> str:
    self.ids.extend(int(i) for i in ids)
    text = self._decode()
    if text.endswith(REPLACEMENT):  # an incomplete UTF-8 character: wait for its remaining bytes
      return ""
    return self._advance(text)

  def finish(self) -> str:
    return self._advance(self._decode())

  def _advance(self, text: str) -> str:
    new, self.emitted = text[self.emitted :], max(self.emitted, len(text))
    return new
