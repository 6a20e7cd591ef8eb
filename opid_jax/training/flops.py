"""Model FLOPs of the rollout, scoring and update phases, and model FLOP utilisation (MFU) from them.

Counts are model FLOPs (2 per multiply-add) of the decoder's matmuls only: the q/k/v/o projections (GQA shapes),
the causal attention products QK^T and PV over the attended keys only, the gated MLP (gate, up, down) and the
vocabulary projection at the positions whose logits are used. Norms, RoPE, softmax, activations, residual adds
and biases are ignored (a fraction of a percent for these models). Recomputation under `jax.checkpoint` is not
counted either: MFU conventions (PaLM, appendix B) charge the model's FLOPs, not the hardware's.

Pure functions of the model config and the (prompt, response) lengths; no JAX.
"""

from __future__ import annotations

from typing import Iterable

from opid_jax.model.config import ModelConfig

KINDS = ("rollout", "score", "update")
# The backward pass costs twice the forward (gradients with respect to activations and to weights).
_UPDATE_FACTOR = 3

# Dense bfloat16 peak FLOP/s per device (no structured sparsity), by `jax.Device.device_kind` lower-cased.
# TPU kinds as the runtime reports them ("TPU v5 lite" is v5e, plain "TPU v5" is v5p) and the marketing names.
_TPU_PEAK = {
  "tpu v4": 275e12,
  "tpu v5 lite": 197e12,
  "tpu v5e": 197e12,
  "tpu v5": 459e12,
  "tpu v5p": 459e12,
  "tpu v6 lite": 918e12,
  "tpu v6e": 918e12,
}
# GPU kinds are the CUDA device names: (prefix, words that make it a different part, peak). "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100-PCIE-40GB" and "NVIDIA A100 80GB PCIe" all peak at 312 TFLOP/s; the H100 SXM reports
# "NVIDIA H100 80GB HBM3", while the H100 PCIe (756) and NVL (835) and the H200 NVL are other parts, left unknown.
_GPU_PEAK = (
  ("nvidia a100", (), 312e12),
  ("nvidia h100", ("pcie", "nvl"), 989e12),
  ("nvidia h200", ("nvl",), 989e12),
)


def forward_flops(cfg: ModelConfig, seq_len: int, logit_tokens: int) -> int:
  """FLOPs of one forward pass over one sequence of `seq_len` tokens, logits at `logit_tokens` positions.

  Per layer: every token's q, k, v, o projections and gated MLP; causal attention where token i attends i + 1
  keys, QK^T and PV costing 2 * heads * head_dim each per attended key. Then 2 * hidden * vocab per logit position.
  Norms, RoPE, softmax and biases are ignored.
  """
  if seq_len < 0 or not 0 <= logit_tokens <= max(seq_len, 0):
    raise ValueError(f"need 0 <= logit_tokens <= seq_len; got seq_len={seq_len}, logit_tokens={logit_tokens}")
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  projections = 2 * d * q + 2 * (2 * d * kv) + 2 * q * d  # q, k + v, o
  mlp = 3 * 2 * d * f  # gate, up, down
  attended_keys = seq_len * (seq_len + 1) // 2
  attention = 2 * (2 * q) * attended_keys  # QK^T and PV
  return cfg.num_layers * (seq_len * (projections + mlp) + attention) + 2 * d * v * logit_tokens


def sequence_flops(cfg: ModelConfig, prompt_len: int, response_len: int, kind: str) -> int:
  """FLOPs of one (prompt, response) sample in a phase.

  rollout: prefill of the prompt + decoding of the response attend exactly like one forward over
  prompt_len + response_len tokens (the KV cache only avoids recomputation), with logits at response_len
  positions (the last prompt position and every generated token but the last). score: the same forward.
  update: forward + backward = 3 x score (rematerialisation not counted).
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
  forward = forward_flops(cfg, prompt_len + response_len, response_len)
  return _UPDATE_FACTOR * forward if kind == "update" else forward


def phase_flops(cfg: ModelConfig, pairs: Iterable[tuple[int, int]], kind: str) -> int:
  """Sum of `sequence_flops` over (prompt_len, response_len) pairs."""
  return sum(sequence_flops(cfg, p, r, kind) for p, r in pairs)


def peak_flops(device_kind: str) -> float | None:
  """Dense bfloat16 peak FLOP/s of one device of this `jax.Device.device_kind`; None when unknown (e.g. "cpu")."""
  kind = " ".join(device_kind.lower().split())
  if kind in _TPU_PEAK:
    return _TPU_PEAK[kind]
  for prefix, other_parts, peak in _GPU_PEAK:
    if kind.startswith(prefix) and not any(word in kind for word in other_parts):
      return peak
  return None


def perf_metrics(
  flops_by_phase: dict[str, float], seconds_by_phase: dict[str, float], device_kind: str, num_devices: int
) -> dict[str, float]:
  """Achieved throughput and MFU per phase, over the whole job.

  `perf/tflops_{phase}`: flops / seconds / 1e12 (all devices together). `perf/mfu_{phase}`: flops / (seconds *
  peak * num_devices), only when `peak_flops(device_kind)` is known: absent, not zero, on an unknown backend.
  Phases with no (or zero) seconds are skipped.
  """
  if num_devices < 1:
    raise ValueError(f"num_devices={num_devices} must be at least 1")
  peak = peak_flops(device_kind)
  out = {}
  for phase, flops in flops_by_phase.items():
    seconds = seconds_by_phase.get(phase, 0.0)
    if not seconds or seconds <= 0:
      continue
    out[f"perf/tflops_{phase}"] = flops / seconds / 1e12
    if peak is not None:
      out[f"perf/mfu_{phase}"] = flops / (seconds * peak * num_devices)
  return out
