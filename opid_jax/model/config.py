"""The one decoder config, built from a Hugging Face `config.json` (Qwen2/2.5, Qwen3, Llama family)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from opid_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  rms_norm_eps: float
  tie_word_embeddings: bool
  qkv_bias: bool  # Qwen2/2.5
  qk_norm: bool  # Qwen3: per-head RMSNorm on q and k before RoPE
  max_position_embeddings: int = 32768
  rope_scaling: tuple[tuple[str, Any], ...] = ()  # HF rope parameters beyond theta, as sorted items
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False
  attention: str = "xla"  # self-attention implementation without a cache (model/attention.py)
  extra_hf: tuple[tuple[str, Any], ...] = ()  # token ids etc., written back on export

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling)

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise UserError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hf.get("use_sliding_window", False):
      raise UserError("sliding-window attention (use_sliding_window=true) is not supported")
    if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
      raise UserError("llama checkpoints with attention_bias/mlp_bias are not supported")
    rope = dict(hf.get("rope_parameters") or {})
    rope.update(hf.get("rope_scaling") or {})
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
      raise UserError(f"unsupported rope type {rope_type!r}; supported: {', '.join(_SUPPORTED_ROPE_TYPES)}")
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "type")}
    num_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    keep = ("bos_token_id", "eos_token_id", "pad_token_id")
    cfg = cls(
      model_type=model_type,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=head_dim,
      rope_theta=float(theta),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2",
      qk_norm=model_type == "qwen3",
      max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
      rope_scaling=tuple(sorted(scaling.items())) if rope_type != "default" else (),
      extra_hf=tuple((k, hf[k]) for k in keep if hf.get(k) is not None),
    )
    return dataclasses.replace(cfg, **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    architectures = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
    rope = {"rope_theta": self.rope_theta, "rope_type": "default"}
    rope.update(self.rope_scaling_dict)
    hf = {
      "architectures": [architectures[self.model_type]],
      "model_type": self.model_type,
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "intermediate_size": self.intermediate_size,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "num_key_value_heads": self.num_kv_heads,
      "head_dim": self.head_dim,
      "rope_theta": self.rope_theta,
      "rope_parameters": rope,
      "rms_norm_eps": self.rms_norm_eps,
      "tie_word_embeddings": self.tie_word_embeddings,
      "max_position_embeddings": self.max_position_embeddings,
      "hidden_act": "silu",
      "dtype": self.param_dtype,
    }
    if self.model_type == "llama":
      hf.update(attention_bias=False, mlp_bias=False)
    hf.update(dict(self.extra_hf))
    return hf

  def rope_inv_freq(self):
    """Per-pair inverse frequencies (float64 numpy, cast by the caller), HF's conventions."""
    import numpy as np

    inv = 1.0 / (self.rope_theta ** (np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim))
    scaling = self.rope_scaling_dict
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
      inv = inv / scaling["factor"]
    elif kind == "llama3":
      inv = _llama3_inv_freq(inv, scaling)
    return inv.astype(np.float32)

  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    per_layer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
    if self.qkv_bias:
      per_layer += q + 2 * kv
    if self.qk_norm:
      per_layer += 2 * self.head_dim
    embed = v * d * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * per_layer + embed + d


def _llama3_inv_freq(inv, scaling):
  import numpy as np

  factor = scaling["factor"]
  low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
  old_len = scaling["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv
  low_wavelen, high_wavelen = old_len / low, old_len / high
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled)
