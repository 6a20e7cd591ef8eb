"""Chat completion over the JAX sampler: messages in, assistant text out (the `local` analyzer backend)."""

from __future__ import annotations

from typing import Callable, Sequence

from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import loading, tokenizer as tok


def make_chat_fn(
  model_path: str, *, max_new_tokens: int = 1024, temperature: float = 0.0, seed: int = 0, max_prompt_tokens: int = 8192
) -> Callable[[Sequence[list[dict]]], list[str]]:
  """Loads the model once; each call answers a batch of conversations in one sampler call."""
  from opid_jax.batching.padding import buckets_up_to

  loaded = loading.load(model_path)
  sampler = Sampler(
    loaded.model, loaded.stop_ids, loaded.pad_id, prompt_buckets=buckets_up_to(max_prompt_tokens), truncate_left=True
  )
  sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
  calls = [0]

  def chat(conversations: Sequence[list[dict]]) -> list[str]:
    prompts = [tok.encode(loaded.tokenizer, tok.chat_prompt(loaded.tokenizer, list(m))) for m in conversations]
    out = sampler.generate(prompts, sampling, key=seed + calls[0])
    calls[0] += 1
    return [loaded.tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens]

  return chat
