"""A small from-scratch policy for CPU-scale studies: a byte-level BPE tokenizer trained on the texts the policy
will read and write, and a randomly initialised Qwen3 model, saved together as a normal HF model folder.

Byte-level BPE means any text still round-trips (unknown words fall back to bytes); the ChatML template matches
what the rollout applies, and `<|im_end|>` ends a turn (it is the EOS of config and generation config).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from opid_jax.model import hf_io
from opid_jax.model.config import ModelConfig
from opid_jax.model.decoder import Decoder

CHATML_TEMPLATE = (
  "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PAD, TURN_START, TURN_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"


def train_tokenizer(texts: Sequence[str], vocab_size: int):
  """A transformers fast tokenizer (byte-level BPE) trained on `texts`, with ChatML tokens and template."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    show_progress=False,
    special_tokens=[PAD, TURN_START, TURN_END],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  bpe.train_from_iterator(texts, trainer)
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=TURN_END, pad_token=PAD)
  tokenizer.chat_template = CHATML_TEMPLATE
  return tokenizer


def qwen3_config(
  tokenizer,
  *,
  hidden_size: int,
  num_layers: int,
  num_heads: int,
  num_kv_heads: int,
  head_dim: int,
  intermediate_size: int,
  max_positions: int = 4096,
) -> ModelConfig:
  vocab = tokenizer.get_vocab()
  hf = dict(
    model_type="qwen3",
    vocab_size=len(vocab),
    hidden_size=hidden_size,
    intermediate_size=intermediate_size,
    num_hidden_layers=num_layers,
    num_attention_heads=num_heads,
    num_key_value_heads=num_kv_heads,
    head_dim=head_dim,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    max_position_embeddings=max_positions,
    eos_token_id=vocab[TURN_END],
    pad_token_id=vocab[PAD],
  )
  return ModelConfig.from_hf_dict(hf)


def write_policy(out_dir: str, tokenizer, cfg: ModelConfig, seed: int = 0) -> int:
  """Writes config, random weights (normal(0.02), norms at 1), generation config and tokenizer; returns the
  parameter count."""
  model = Decoder(cfg, nnx.Rngs(params=jax.random.PRNGKey(seed)))
  eos = dict(cfg.extra_hf)["eos_token_id"]
  hf_io.export_hf(model, out_dir, tokenizer=tokenizer, generation_config={"eos_token_id": [eos]})
  return cfg.num_params()
