"""Tiny random Hugging Face checkpoints (PyTorch reference models) for parity tests."""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

TINY = dict(
  vocab_size=512,
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=2048,
  rms_norm_eps=1e-6,
)

VARIANTS = {
  # Qwen2: q/k/v bias, untied, a non-default theta.
  "qwen2": dict(cls=transformers.Qwen2Config, tie_word_embeddings=False, rope_theta=25000.0),
  # Qwen3: per-head q/k norm, head_dim (32) != hidden / heads (16), tied.
  "qwen3": dict(cls=transformers.Qwen3Config, tie_word_embeddings=True, head_dim=32, rope_theta=1e6),
  # Llama family (SmolLM2-like): no biases, tied, theta 1e5.
  "llama": dict(cls=transformers.LlamaConfig, tie_word_embeddings=True, rope_theta=1e5),
  # Qwen3 with one KV head for 3 query heads (multi-query, the study's small policy's shape), theta 1e4.
  "qwen3_mqa": dict(
    cls=transformers.Qwen3Config,
    tie_word_embeddings=True,
    head_dim=32,
    num_attention_heads=3,
    num_key_value_heads=1,
    rope_theta=1e4,
  ),
}


def make_hf_model(variant: str, out_dir: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
  """Builds a random fp32 model (biases and norm scales randomised too), saves it, returns it in eval mode."""
  spec = dict(VARIANTS[variant])
  cls = spec.pop("cls")
  theta = spec.pop("rope_theta")
  kwargs = {**TINY, **spec, **overrides}
  config = cls(**kwargs)
  config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or "layernorm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
      else:
        p.copy_(0.08 * torch.randn_like(p))
  model.eval()
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir)
  return model


def random_prompt(length: int, vocab: int, seed: int) -> list[int]:
  return np.random.RandomState(seed).randint(0, vocab, size=length).tolist()


def hf_logits(model, ids: list[int]) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].float().numpy()


def save_tiny_tokenizer(out_dir: str, vocab_size: int = 512) -> None:
  """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens and template."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1.",
    "Your task is to: put a clean mug in coffeemachine.",
    "<think>I should go to the cabinet.</think>",
    "<action>go to cabinet 1</action>",
    "Now it's your turn to take an action.",
  ] * 20
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(corpus, trainer)
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    chat_template=(
      "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
  )
  fast.save_pretrained(out_dir)
