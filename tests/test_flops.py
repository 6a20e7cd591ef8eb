"""FLOP counts against a hand count, the peak table against real device-kind strings, and MFU."""

import dataclasses

import pytest

from opid_jax.model.config import ModelConfig
from opid_jax.training import flops

TINY = ModelConfig(
  model_type="qwen2",
  vocab_size=128,
  hidden_size=32,
  intermediate_size=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  rope_theta=10000.0,
  rms_norm_eps=1e-6,
  tie_word_embeddings=True,
  qkv_bias=True,
  qk_norm=False,
)


def test_forward_matches_a_hand_count():
  seq, logits = 5, 2
  q_proj = 2 * 32 * (4 * 8)  # hidden -> heads * head_dim
  k_proj = 2 * 32 * (2 * 8)  # hidden -> kv_heads * head_dim
  v_proj = 2 * 32 * (2 * 8)
  o_proj = 2 * (4 * 8) * 32
  mlp = 2 * 32 * 64 + 2 * 32 * 64 + 2 * 64 * 32  # gate, up, down
  per_token = q_proj + k_proj + v_proj + o_proj + mlp
  assert per_token == 2048 + 1024 + 1024 + 2048 + 12288
  attended = 1 + 2 + 3 + 4 + 5  # token i attends i + 1 keys
  qk = 2 * 4 * 8 * attended
  pv = 2 * 4 * 8 * attended
  per_layer = seq * per_token + qk + pv
  vocab = 2 * 32 * 128 * logits
  want = 2 * per_layer + vocab
  assert want == 204544
  assert flops.forward_flops(TINY, seq, logits) == want


def test_attention_is_causal_and_logits_scale_with_positions():
  # One more key attended by the new token: the whole projection/MLP cost of a token plus 6 keys of attention.
  extra = flops.forward_flops(TINY, 6, 0) - flops.forward_flops(TINY, 5, 0)
  assert extra == 2 * ((2048 + 1024 + 1024 + 2048 + 12288) + 2 * (2 * 4 * 8) * 6)
  assert flops.forward_flops(TINY, 5, 3) - flops.forward_flops(TINY, 5, 2) == 2 * 32 * 128
  # GQA: more kv heads cost more in the k/v projections only.
  mha = dataclasses.replace(TINY, num_kv_heads=4)
  assert flops.forward_flops(mha, 5, 0) - flops.forward_flops(TINY, 5, 0) == 2 * 5 * 2 * (2 * 32 * 16)
  with pytest.raises(ValueError):
    flops.forward_flops(TINY, 3, 4)


def test_phases():
  rollout = flops.sequence_flops(TINY, 3, 2, "rollout")
  assert rollout == flops.forward_flops(TINY, 5, 2) == flops.sequence_flops(TINY, 3, 2, "score")
  assert flops.sequence_flops(TINY, 3, 2, "update") == 3 * flops.sequence_flops(TINY, 3, 2, "score")
  pairs = [(3, 2), (10, 4), (0, 1)]
  for kind in flops.KINDS:
    assert flops.phase_flops(TINY, pairs, kind) == sum(flops.sequence_flops(TINY, p, r, kind) for p, r in pairs)
  assert flops.phase_flops(TINY, [], "update") == 0
  with pytest.raises(ValueError, match="kind"):
    flops.sequence_flops(TINY, 3, 2, "train")


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H200", 989e12),
  ],
)
def test_peak_of_real_device_kinds(kind, peak):
  assert flops.peak_flops(kind) == peak


@pytest.mark.parametrize(
  "kind", ["cpu", "TPU v4 lite", "TPU v3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "Tesla T4", ""]
)
def test_unknown_device_kinds_have_no_peak(kind):
  assert flops.peak_flops(kind) is None


def test_mfu_on_h100_by_hand():
  got = flops.perf_metrics(
    {"rollout": 4.0e15, "update": 6.0e15, "score": 1.0e15},
    {"rollout": 10.0, "update": 2.0, "score": 0.0},
    "NVIDIA H100 80GB HBM3",
    8,
  )
  assert got["perf/tflops_rollout"] == pytest.approx(400.0)
  assert got["perf/tflops_update"] == pytest.approx(3000.0)
  assert got["perf/mfu_rollout"] == pytest.approx(4.0e15 / (10.0 * 989e12 * 8))  # 0.0506
  assert got["perf/mfu_update"] == pytest.approx(6.0e15 / (2.0 * 989e12 * 8))  # 0.379
  assert set(got) == {"perf/tflops_rollout", "perf/tflops_update", "perf/mfu_rollout", "perf/mfu_update"}


def test_mfu_is_absent_on_cpu():
  got = flops.perf_metrics({"update": 6.0e12}, {"update": 3.0}, "cpu", 1)
  assert got == {"perf/tflops_update": pytest.approx(2.0)}
  assert not any(k.startswith("perf/mfu") for k in got)
