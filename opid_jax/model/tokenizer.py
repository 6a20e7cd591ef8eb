"""Tokenizers and chat templates through transformers, and the set of ids that end a turn."""

from __future__ import annotations

import json
import os
from typing import Sequence

from opid_jax.errors import UserError

# End-of-turn markers of common chat templates; added to the stop set when the template uses them.
_TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def load_tokenizer(path: str):
  """An HF tokenizer from a model folder or from a .gguf file."""
  from transformers import AutoTokenizer

  try:
    if path.endswith(".gguf"):
      return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)
  except Exception as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"could not load a tokenizer from {path} ({reason})") from None


def _as_list(value) -> list[int]:
  if value is None:
    return []
  return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def stop_ids(tokenizer, model_dir: str | None = None) -> list[int]:
  """EOS ids from generation_config.json and config.json, the tokenizer's EOS, and the chat template's
  end-of-turn token."""
  ids: list[int] = []
  for name in ("generation_config.json", "config.json"):
    path = os.path.join(model_dir, name) if model_dir and os.path.isdir(model_dir) else None
    if path and os.path.exists(path):
      with open(path) as f:
        ids += _as_list(json.load(f).get("eos_token_id"))
  ids += _as_list(tokenizer.eos_token_id)
  template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
  vocab = tokenizer.get_vocab()
  for token in _TURN_END_TOKENS:
    if token in vocab and token in (template or ""):
      ids.append(vocab[token])
  ids = sorted(set(ids))
  if not ids:
    raise UserError("no EOS / end-of-turn token id found in the tokenizer or generation config")
  return ids


def pad_id(tokenizer, stops: Sequence[int]) -> int:
  return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]


def chat_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
  """The chat template applied to messages (Qwen3: thinking disabled)."""
  if not tokenizer.chat_template:
    raise UserError("this tokenizer has no chat template; use a plain prompt instead")
  return tokenizer.apply_chat_template(
    messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
  )


def encode(tokenizer, text: str) -> list[int]:
  """Ids of text verbatim: special-token strings in it are recognised, none are added."""
  return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, text: str, chat: bool) -> list[int]:
  """The prompt verbatim, or wrapped as one user message with the generation prompt."""
  if chat:
    text = chat_prompt(tokenizer, [{"role": "user", "content": text}])
  return encode(tokenizer, text)
