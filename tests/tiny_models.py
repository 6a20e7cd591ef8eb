"""Tiny in-memory decoders (no transformers) for trainer tests."""

from opid_jax.model.config import ModelConfig
from opid_jax.model.decoder import create_model


def tiny_config(**overrides) -> ModelConfig:
  base = dict(
    model_type="qwen3",
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rope_theta=1e4,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    qkv_bias=False,
    qk_norm=True,
  )
  base.update(overrides)
  return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides):
  return create_model(tiny_config(**overrides), seed=seed)
