"""OpenAI response objects: chat and text completions, whole or as stream chunks (pure functions)."""

from __future__ import annotations

import time
import uuid


def new_id(chat: bool) -> str:
  return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
  return {
    "prompt_tokens": prompt_tokens,
    "completion_tokens": completion_tokens,
    "total_tokens": prompt_tokens + completion_tokens,
  }


def completion(
  chat: bool, model: str, texts: list[str], finish_reasons: list[str], prompt_tokens: int, completion_tokens: int
) -> dict:
  """A whole `chat.completion` or `text_completion` object."""
  if chat:
    choices = [
      {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": None}
      for i, (t, f) in enumerate(zip(texts, finish_reasons))
    ]
  else:
    choices = [
      {"index": i, "text": t, "finish_reason": f, "logprobs": None}
      for i, (t, f) in enumerate(zip(texts, finish_reasons))
    ]
  return {
    "id": new_id(chat),
    "object": "chat.completion" if chat else "text_completion",
    "created": int(time.time()),
    "model": model,
    "choices": choices,
    "usage": usage(prompt_tokens, completion_tokens),
  }


class ChunkMaker:
  """The chunks of one streamed answer: they share its id, creation time and model. With `include_usage`, every
  chunk has `usage: null` and the last one (`usage_chunk`) has the counts and no choices, as OpenAI sends them."""

  def __init__(self, chat: bool, model: str, include_usage: bool):
    self.chat, self.model, self.include_usage = chat, model, include_usage
    self.id, self.created = new_id(chat), int(time.time())

  def _chunk(self, choices: list[dict]) -> dict:
    chunk = {
      "id": self.id,
      "object": "chat.completion.chunk" if self.chat else "text_completion",
      "created": self.created,
      "model": self.model,
      "choices": choices,
    }
    if self.include_usage:
      chunk["usage"] = None
    return chunk

  def role(self, index: int) -> dict:
    """The first chunk of a chat choice (none for text completions)."""
    return self._chunk(
      [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    )

  def delta(self, index: int, text: str) -> dict:
    return self._choice(index, text, None)

  def finish(self, index: int, finish_reason: str) -> dict:
    """A choice's last chunk: an empty delta (chat) or empty text, and the finish reason."""
    return self._choice(index, None, finish_reason)

  def _choice(self, index: int, text: str | None, finish_reason: str | None) -> dict:
    if self.chat:
      content = {} if text is None else {"content": text}
      return self._chunk([{"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}])
    return self._chunk([{"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}])

  def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
    return {**self._chunk([]), "usage": usage(prompt_tokens, completion_tokens)}
