"""Memory planner against hand counts for real model shapes (the config.json fields of the released models)."""

import dataclasses
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


def hand_activations(hf, rows, t, attention, tensor=1):
  """The module docstring's remat formula written out, bfloat16 compute, heads/MLP/vocabulary split `tensor` ways."""
  d, f, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
  heads, vocab = hf["num_attention_heads"] // tensor, hf["vocab_size"] // tensor
  saved_inputs = layers * rows * t * d * 2
  one_layer = rows * t * (10 * d + 3 * (f // tensor)) * 2
  scores = {
    "xla": rows * heads * min(256, t) * t * 4 + rows * t * t,  # one 256-query block of scores, the bool mask
    "chunked": rows * heads * min(256, t) ** 2 * 4 + rows * heads * t * 4,  # one 256 x 256 block, softmax stats
    "cudnn": rows * heads * t * 4,  # softmax statistics only
  }[attention]
  logits = rows * 64 * vocab * 4 * 3
  return saved_inputs + one_layer + scores + logits


def packed(**kw):
  base = dict(packing=True, pack_length=4096, micro_batch_tokens=8192, attention="xla")
  return memory.Workload(**{**dataclasses.asdict(WORK), **base, **kw})


def test_activation_hand_formula_with_packing():
  cfg = model_config(QWEN25_3B)
  mesh = memory.abstract_mesh(dict(data=1, fsdp=2, tensor=2))
  # 8192 tokens per micro-batch in rows of 4096: 2 rows, one per device of the 2-way batch axes.
  for attention in ("xla", "chunked", "cudnn"):
    got = memory.activation_bytes(cfg, packed(attention=attention), mesh, RULES)
    assert got == hand_activations(QWEN25_3B, rows=1, t=4096, attention=attention, tensor=2)
  assert memory.activation_bytes(cfg, packed(attention="auto"), mesh, RULES) == hand_activations(
    QWEN25_3B, rows=1, t=4096, attention="cudnn", tensor=2
  )
  # Hand numbers for the fused kernel: 36*4096*2048*2 + 4096*(20480 + 16512)*2 + 8*4096*4 + 64*75968*12
  assert hand_activations(QWEN25_3B, rows=1, t=4096, attention="cudnn", tensor=2) == (
    603979776 + 303038464 + 131072 + 58343424
  )


def test_packing_sets_the_micro_batch_tokens():
  work = packed()
  assert (work.update_rows, work.update_length) == (2, 4096)  # 8192 // 4096 rows of pack_length
  assert (packed(micro_batch_tokens=1000).update_rows, packed(micro_batch_tokens=20000).update_rows) == (1, 4)
  assert (WORK.update_rows, WORK.update_length) == (16, 2560)  # unpacked: micro_batch rows of max_length
  cfg = model_config(QWEN25_3B)
  mesh = memory.abstract_mesh(dict(data=2, fsdp=1, tensor=1))
  same = dataclasses.replace(WORK, micro_batch=2, max_length=4096, attention="xla")
  assert memory.activation_bytes(cfg, packed(), mesh, RULES) == memory.activation_bytes(cfg, same, mesh, RULES)
  # 3 rows on 2 data-parallel devices: the packer rounds down to 2 rows, one per device.
  assert memory.activation_bytes(cfg, packed(micro_batch_tokens=3 * 4096), mesh, RULES) == (
    memory.activation_bytes(cfg, packed(), mesh, RULES)
  )
  # micro_batch_size no longer matters; doubling the tokens doubles the rows.
  assert memory.activation_bytes(cfg, packed(micro_batch=64), mesh, RULES) == memory.activation_bytes(
    cfg, packed(), mesh, RULES
  )
  assert memory.activation_bytes(cfg, packed(micro_batch_tokens=16384), mesh, RULES) == 2 * (
    memory.activation_bytes(cfg, packed(), mesh, RULES)
  )
  with pytest.raises(Exception, match="pack_length"):
    packed(pack_length=0)
  with pytest.raises(Exception, match="model.attention"):
    packed(attention="flash")


def test_xla_attention_costs_more_than_chunked_and_fused_for_long_rows():
  cfg = model_config(QWEN25_3B)
  mesh = memory.abstract_mesh(dict(data=1, fsdp=1, tensor=1))

  def act(attention, t):
    return memory.activation_bytes(cfg, packed(attention=attention, pack_length=t, micro_batch_tokens=t), mesh, RULES)

  for t in (4096, 32768):
    assert act("xla", t) > act("chunked", t) > act("cudnn", t) == act("splash", t) == act("auto", t)
  assert act("cudnn", 4096) < act("xla", 4096)


def test_auto_attention_is_the_devices_fused_kernel():
  assert memory.planned_attention("auto", "v5e") == "splash" and memory.planned_attention("auto", "h100") == "cudnn"
  assert memory.planned_attention("xla", "v4") == "xla"
