"""Memory planner against hand counts for real model shapes (the config.json fields of the released models)."""

import json
import os
import subprocess
import sys

import pytest

from configs import alfworld
from opid_jax import plan as plan_cli
from opid_jax.model.config import ModelConfig
from opid_jax.parallel import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QWEN25_3B = dict(
  model_type="qwen2",
  hidden_size=2048,
  intermediate_size=11008,
  num_hidden_layers=36,
  num_attention_heads=16,
  num_key_value_heads=2,
  vocab_size=151936,
  tie_word_embeddings=True,
  rope_theta=1000000.0,
  rms_norm_eps=1e-06,
  max_position_embeddings=32768,
)
QWEN25_7B = dict(
  model_type="qwen2",
  hidden_size=3584,
  intermediate_size=18944,
  num_hidden_layers=28,
  num_attention_heads=28,
  num_key_value_heads=4,
  vocab_size=152064,
  tie_word_embeddings=False,
  rope_theta=1000000.0,
  rms_norm_eps=1e-06,
  max_position_embeddings=32768,
)
QWEN3_1_7B = dict(
  model_type="qwen3",
  hidden_size=2048,
  intermediate_size=6144,
  num_hidden_layers=28,
  num_attention_heads=16,
  num_key_value_heads=8,
  head_dim=128,
  vocab_size=151936,
  tie_word_embeddings=True,
  rope_theta=1000000,
  rms_norm_eps=1e-06,
  max_position_embeddings=40960,
  attention_bias=False,
)
MODELS = {"qwen2.5-3b": QWEN25_3B, "qwen2.5-7b": QWEN25_7B, "qwen3-1.7b": QWEN3_1_7B}
RULES = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in alfworld.get_config().mesh.rules)


def hand_param_count(hf):
  """Embedding (+ untied head) + per layer: q, k, v, o, (q/k/v biases | q/k norms), 3 MLP matrices, 2 norms."""
  d, f, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
  heads, kv, vocab = hf["num_attention_heads"], hf["num_key_value_heads"], hf["vocab_size"]
  hd = hf.get("head_dim", d // heads)
  attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d
  extras = (heads * hd + 2 * kv * hd) if hf["model_type"] == "qwen2" else 2 * hd
  per_layer = attention + extras + 3 * d * f + 2 * d
  return vocab * d * (1 if hf["tie_word_embeddings"] else 2) + layers * per_layer + d


def model_config(hf):
  return ModelConfig.from_hf_dict(hf, dtype="bfloat16", param_dtype="float32", remat=True)


WORK = memory.Workload(rollout_batch=128, max_length=2560, micro_batch=16, with_reference=True, remat=True)


def test_qwen25_3b_has_its_published_size():
  assert hand_param_count(QWEN25_3B) == pytest.approx(3.09e9, rel=0.005)
  assert hand_param_count(QWEN25_7B) == pytest.approx(7.62e9, rel=0.005)
  assert hand_param_count(QWEN3_1_7B) == pytest.approx(1.72e9, rel=0.005)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
  "mesh",
  [
    dict(data=2, fsdp=4, tensor=1),
    dict(data=1, fsdp=8, tensor=1),
    dict(data=2, fsdp=2, tensor=2),
    dict(data=8, fsdp=1, tensor=1),
  ],
)
def test_planner_matches_a_hand_count(name, mesh):
  hf = MODELS[name]
  got = memory.plan(model_config(hf), WORK, mesh, RULES)
  shards = mesh["fsdp"] * mesh["tensor"]  # parameters are sharded over fsdp x tensor, replicated over data
  want = hand_param_count(hf) * 4 / shards
  assert got.params == pytest.approx(want, rel=0.01)
  assert got.grads == got.params and got.reference == got.params
  assert got.optimizer == pytest.approx(2 * want, rel=0.01)
  dp = mesh["data"] * mesh["fsdp"]
  hd = hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
  kv_heads = hf["num_key_value_heads"] // mesh["tensor"]
  # k and v, every layer, this device's rows, full length, its KV heads, bfloat16.
  assert got.kv_cache == 2 * hf["num_hidden_layers"] * (128 // dp) * 2560 * kv_heads * hd * 2
  assert 0 < got.activations < 80 * memory.GIB


def test_suggestions_fit_and_shard_only_when_needed():
  plan3, micro3 = memory.suggest(model_config(QWEN25_3B), WORK, 8, memory.DEVICES["h100"], RULES, 256)
  assert plan3.mesh == {"data": 8, "fsdp": 1, "tensor": 1}  # 3B fits replicated on 80 GB
  assert plan3.total <= memory.USABLE * memory.DEVICES["h100"] and micro3 % 8 == 0 and 256 % micro3 == 0
  plan7, micro7 = memory.suggest(model_config(QWEN25_7B), WORK, 16, memory.DEVICES["v5e"], RULES, 256)
  assert plan7.mesh["fsdp"] * plan7.mesh["tensor"] > 1  # 7B in fp32 with AdamW needs sharding on 16 GiB
  assert plan7.total <= memory.USABLE * memory.DEVICES["v5e"]
  assert memory.suggest(model_config(QWEN25_7B), WORK, 1, memory.DEVICES["v5e"], RULES, 256) is None


def test_cli_prints_the_table_and_a_suggestion(tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump(QWEN25_3B, f)
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "opid_jax.plan",
      "--config=configs/alfworld.py",
      f"--config.model.path={tmp_path}",
      "--mesh=data=2,fsdp=4,tensor=1",
      "--device=v4",
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  for row in ("params", "grads", "optimizer", "reference params", "rollout KV cache", "activations", "total"):
    assert row in out
  assert "mesh data=2,fsdp=4,tensor=1 (v4: 32.00 GiB" in out and "suggestion for 8 x v4" in out
  bad = subprocess.run(
    [
      sys.executable,
      "-m",
      "opid_jax.plan",
      "--config=configs/alfworld.py",
      f"--config.model.path={tmp_path}",
      "--device=a100",
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2 and "--device='a100' is not one of" in bad.stderr


def test_parse_mesh():
  assert plan_cli.parse_mesh("data=2,tensor=4") == {"data": 2, "fsdp": 1, "tensor": 4}
  with pytest.raises(Exception, match="--mesh"):
    plan_cli.parse_mesh("pipeline=2")
