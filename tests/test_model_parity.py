"""Decoder, sampler and scorer against transformers' PyTorch models (tiny random configs, float32)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_fixtures import VARIANTS, hf_logits, make_hf_model, random_prompt

from opid_jax.generation import sampler as sampler_lib
from opid_jax.model import attention, decoder, hf_io
from opid_jax.rl import scoring

VOCAB = 512
STOP = 7  # an arbitrary stop id shared by both implementations


# Every attention implementation that runs on CPU: the reference einsum path and the pure-JAX flash attention (with
# 64-token blocks, so that the prompts here span several query and key blocks).
ATTENTION = ("xla", "chunked")


@pytest.fixture(scope="module", params=[(v, a) for v in sorted(VARIANTS) for a in ATTENTION], ids="-".join)
def pair(request, tmp_path_factory):
  """(variant, reference torch model, our model) built from the same saved checkpoint."""
  variant, impl = request.param
  out = str(tmp_path_factory.mktemp(variant))
  ref = make_hf_model(variant, out, seed=1)
  ours, cfg, _ = hf_io.load_hf(out, attention=impl)
  return variant, ref, ours, out


@pytest.fixture(autouse=True)
def small_chunked_blocks(monkeypatch):
  monkeypatch.setattr(attention, "CHUNKED_BLOCK", 64)


def our_logits(model, ids_batch, mask):
  tokens, mask = jnp.asarray(ids_batch), jnp.asarray(mask)
  hidden, _ = model(tokens, decoder.positions_from_mask(mask), mask)
  return np.asarray(model.logits(hidden))


def test_config_reads_the_file(pair):
  variant, ref, ours, out = pair
  cfg = ours.cfg
  assert cfg.rope_theta == ref.config.rope_parameters["rope_theta"]
  assert cfg.head_dim == (32 if variant.startswith("qwen3") else 16)
  assert cfg.qkv_bias == (variant == "qwen2") and cfg.qk_norm == variant.startswith("qwen3")
  assert cfg.num_kv_heads == ref.config.num_key_value_heads == (1 if variant == "qwen3_mqa" else 2)
  assert cfg.tie_word_embeddings == ref.config.tie_word_embeddings
  assert decoder.param_count(ours) == sum(p.numel() for p in ref.parameters()) == cfg.num_params()


def test_logits_match_on_a_long_prompt(pair):
  _, ref, ours, _ = pair
  ids = random_prompt(320, VOCAB, seed=3)
  got = our_logits(ours, [ids], np.ones((1, 320), bool))[0]
  want = hf_logits(ref, ids)
  assert np.abs(got - want).max() <= 1e-4
  assert np.abs(want).max() > 1.0  # the comparison is not between two near-zero tensors


def test_left_padded_batch_matches_each_row_alone(pair):
  _, ref, ours, _ = pair
  rows = [random_prompt(n, VOCAB, seed=n) for n in (300, 181, 64)]
  from opid_jax.batching.padding import pad_left

  ids, mask = pad_left(rows, 304, 3, pad_id=0)
  got = our_logits(ours, ids, mask)
  for i, row in enumerate(rows):
    want = hf_logits(ref, row)
    assert np.abs(got[i, 304 - len(row) :] - want).max() <= 1e-4


def test_greedy_matches_transformers_generate(pair):
  _, ref, ours, _ = pair
  prompts = [random_prompt(n, VOCAB, seed=10 + n) for n in (120, 77)]
  sampler = sampler_lib.Sampler(ours, stop_ids=[STOP], pad_id=0, prompt_buckets=(128,))
  out = sampler.generate(prompts, sampler_lib.SamplingParams(temperature=0.0, max_new_tokens=40), key=0)
  for prompt, got in zip(prompts, out.tokens):
    with torch.no_grad():
      want = ref.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=40,
        eos_token_id=STOP,
        pad_token_id=0,
      )
    want = want[0, len(prompt) :].tolist()
    if STOP in want:
      want = want[: want.index(STOP) + 1]
    assert len(want) >= 32
    assert got == want


def test_sampler_logprobs_and_determinism(pair):
  _, ref, ours, _ = pair
  prompt = random_prompt(50, VOCAB, seed=5)
  sampler = sampler_lib.Sampler(ours, stop_ids=[STOP], pad_id=0, prompt_buckets=(64,))
  params = sampler_lib.SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_new_tokens=16)
  a = sampler.generate([prompt, prompt], params, key=3)
  b = sampler.generate([prompt, prompt], params, key=3)
  assert a.tokens == b.tokens and a.logprobs == b.logprobs
  # The recorded log-probs are those of the temperature-scaled full distribution.
  ids = prompt + a.tokens[0]
  logits = hf_logits(ref, ids)[len(prompt) - 1 : -1] / 0.8
  want = torch.log_softmax(torch.tensor(logits), -1).numpy()[np.arange(len(a.tokens[0])), a.tokens[0]]
  np.testing.assert_allclose(a.logprobs[0], want, atol=1e-4)


def _hf_token_logprobs(ref, prompt, response, temperature=1.0):
  logits = hf_logits(ref, prompt + response)[len(prompt) - 1 : -1] / temperature
  logp = torch.log_softmax(torch.tensor(logits), -1)
  picked = logp[torch.arange(len(response)), torch.tensor(response)].numpy()
  entropy = -(logp.exp() * logp).sum(-1).numpy()
  return picked, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_scorer_matches_log_softmax_gather(pair, temperature):
  _, ref, ours, _ = pair
  prompts = [random_prompt(n, VOCAB, seed=n) for n in (200, 90, 33)]
  responses = [random_prompt(n, VOCAB, seed=100 + n) for n in (60, 17, 1)]
  scorer = scoring.Scorer(ours, pad_id=0, micro_batch=2, chunk_size=16)
  out = scorer.score(prompts, responses, temperature=temperature, with_entropy=True)
  for p, r, lp, ent in zip(prompts, responses, out.logprobs, out.entropy):
    want_lp, want_ent = _hf_token_logprobs(ref, p, r, temperature)
    assert lp.shape == (len(r),)
    np.testing.assert_allclose(lp, want_lp, atol=1e-4)
    np.testing.assert_allclose(ent, want_ent, atol=1e-4)


def test_chunked_equals_unchunked(pair):
  _, _, ours, _ = pair
  prompts = [random_prompt(n, VOCAB, seed=n) for n in (40, 64)]
  responses = [random_prompt(n, VOCAB, seed=200 + n) for n in (64, 30)]
  one_chunk = scoring.Scorer(ours, pad_id=0, chunk_size=64, response_buckets=(64,))
  many = scoring.Scorer(ours, pad_id=0, chunk_size=8, response_buckets=(64,))
  a = one_chunk.score(prompts, responses, with_entropy=True)
  b = many.score(prompts, responses, with_entropy=True)
  for x, y in zip(a.logprobs + a.entropy, b.logprobs + b.entropy):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_no_recompilation_within_a_bucket(pair):
  _, _, ours, _ = pair
  sampler = sampler_lib.Sampler(ours, stop_ids=[STOP], pad_id=0, prompt_buckets=(32, 64), batch_buckets=(2, 4))
  params = sampler_lib.SamplingParams(temperature=1.0, max_new_tokens=8)
  sampler.generate([random_prompt(40, VOCAB, 1)], params, key=0)
  before = sampler_lib.TRACE_COUNTS["generate"]
  sampler.generate([random_prompt(50, VOCAB, 2), random_prompt(63, VOCAB, 3)], params, key=1)
  sampler.generate([random_prompt(33, VOCAB, 4)], sampler_lib.SamplingParams(0.5, 0.9, 5, 8), key=2)
  sampler.set_params(jax.tree.map(lambda x: x * 1.0, sampler.params))
  sampler.generate([random_prompt(64, VOCAB, 5)], params, key=3)
  assert sampler_lib.TRACE_COUNTS["generate"] == before
  sampler.generate([random_prompt(10, VOCAB, 6)], params, key=4)  # a new prompt bucket compiles once
  assert sampler_lib.TRACE_COUNTS["generate"] == before + 1

  scorer = scoring.Scorer(ours, pad_id=0, micro_batch=2, response_buckets=(32,))
  scorer.score([random_prompt(40, VOCAB, 1)], [random_prompt(20, VOCAB, 2)])
  before = scoring.TRACE_COUNTS["score"]
  scorer.score([random_prompt(60, VOCAB, 1)] * 3, [random_prompt(31, VOCAB, 2)] * 3, temperature=0.5)
  assert scoring.TRACE_COUNTS["score"] == before


def test_export_round_trip(pair, tmp_path):
  variant, _, ours, _ = pair
  hf_io.export_hf(ours, str(tmp_path))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  ids = random_prompt(128, VOCAB, seed=9)
  got = our_logits(ours, [ids], np.ones((1, 128), bool))[0]
  np.testing.assert_allclose(hf_logits(back, ids), got, atol=1e-5)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model_type"] == variant.split("_")[0]


def test_bfloat16_compute_is_close_to_float32(pair):
  _, _, ours, out = pair
  bf16, cfg, _ = hf_io.load_hf(out, dtype="bfloat16", param_dtype="bfloat16")
  assert jax.tree.leaves(bf16)[0].dtype == jnp.bfloat16
  ids = random_prompt(64, VOCAB, seed=4)
  mask = np.ones((1, 64), bool)
  a, b = our_logits(ours, [ids], mask), our_logits(bf16, [ids], mask)
  assert np.abs(a - b).max() < 0.25 * np.abs(a).max()


def test_sharded_safetensors_load(pair, tmp_path):
  _, ref, ours, _ = pair
  ref.save_pretrained(str(tmp_path), max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  again, _, _ = hf_io.load_hf(str(tmp_path), attention=ours.cfg.attention)
  ids = random_prompt(32, VOCAB, seed=4)
  mask = np.ones((1, 32), bool)
  np.testing.assert_array_equal(our_logits(ours, [ids], mask), our_logits(again, [ids], mask))


@pytest.mark.parametrize("variant", ["qwen2", "qwen3_mqa"])
def test_splash_in_interpret_mode_matches_transformers(variant, tmp_path, monkeypatch):
  """The Pallas TPU kernel, run by the Pallas interpreter on CPU, on a left-padded batch."""
  monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)
  ref = make_hf_model(variant, str(tmp_path), seed=1)
  ours, _, _ = hf_io.load_hf(str(tmp_path), attention="splash")
  rows = [random_prompt(n, VOCAB, seed=n) for n in (128, 77)]
  from opid_jax.batching.padding import pad_left

  ids, mask = pad_left(rows, 128, 2, pad_id=0)
  got = our_logits(ours, ids, mask)
  for i, row in enumerate(rows):
    assert np.abs(got[i, 128 - len(row) :] - hf_logits(ref, row)).max() <= 1e-4
