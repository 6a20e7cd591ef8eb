"""Packed step samples: the same log-probs, losses and gradients as padded ones, and no attention across samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_model

from opid_jax.batching import packing
from opid_jax.errors import UserError
from opid_jax.rl import batch as batch_lib, update
from opid_jax.rl.batch import StepSample
from opid_jax.rl.scoring import Packing, Scorer

ARCHS = {
  "qwen3": {},
  "qwen2_mqa": dict(model_type="qwen2", qkv_bias=True, qk_norm=False, num_kv_heads=1, tie_word_embeddings=False),
  "llama": dict(model_type="llama", qk_norm=False),
}


def ragged_samples(n=9, seed=0, vocab=128):
  rng = np.random.RandomState(seed)
  prompts = [list(rng.randint(1, vocab, size=rng.randint(3, 60))) for _ in range(n)]
  responses = [list(rng.randint(1, vocab, size=rng.randint(1, 20))) for _ in range(n)]
  return prompts, responses


def test_first_fit_decreasing_fills_bins_in_order_of_length():
  assert packing.first_fit_decreasing([5, 9, 3, 4, 2], 10) == [[1], [0, 3], [2, 4]]
  with pytest.raises(UserError, match="pack_length=10"):
    packing.first_fit_decreasing([11], 10)


def test_micro_batch_rows_add_no_filler_beyond_the_row_multiple():
  assert packing.micro_batch_rows(30, 8) == [8, 8, 8, 4, 2]
  assert packing.micro_batch_rows(7, 8, row_multiple=2) == [8]  # 7 rows + 1 filler row
  assert packing.micro_batch_rows(13, 8, row_multiple=2) == [8, 4, 2]  # 13 rows + 1 filler row
  assert packing.micro_batch_rows(3, 1) == [1, 1, 1]


def test_packed_rows_restart_positions_and_number_segments():
  prompts, responses = [[1, 2, 3], [4, 5]], [[6], [7, 8]]
  (b,) = packing.pack(prompts, responses, pack_length=64, micro_batch_tokens=64, pad_id=0)
  assert b.tokens.shape == (1, 64)
  assert list(b.tokens[0, :8]) == [1, 2, 3, 6, 4, 5, 7, 8]
  assert list(b.positions[0, :8]) == [0, 1, 2, 3, 0, 1, 2, 3]
  assert list(b.segment_ids[0, :9]) == [1, 1, 1, 1, 2, 2, 2, 2, 0]
  assert list(b.target_pos[0, :3]) == [2, 5, 6] and list(b.targets[0, :3]) == [6, 7, 8]
  assert b.placement == {0: (0, 0, 1), 1: (0, 1, 2)}
  assert packing.pad_share([b]) == pytest.approx(1 - 8 / 64)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_packed_scoring_equals_padded_scoring(arch):
  model = tiny_model(seed=3, **ARCHS[arch])
  prompts, responses = ragged_samples()
  padded = Scorer(model, 0, micro_batch=4, chunk_size=16, prompt_buckets=(64,), response_buckets=(32,))
  packed = Scorer(model, 0, chunk_size=16, packing=Packing(pack_length=128, micro_batch_tokens=256))
  want = padded.score(prompts, responses, with_entropy=True)
  got = packed.score(prompts, responses, with_entropy=True)
  for w, g, we, ge in zip(want.logprobs, got.logprobs, want.entropy, got.entropy):
    np.testing.assert_allclose(g, w, atol=1e-5)
    np.testing.assert_allclose(ge, we, atol=1e-5)
  assert got.pad_share < want.pad_share


def test_units_share_a_row():
  prompts, responses = ragged_samples(6)
  batches = packing.pack(
    prompts, responses, pack_length=128, micro_batch_tokens=128, pad_id=0, units=[[0, 5], [1], [2, 3], [4]]
  )
  row_of = {i: (id(b), r) for b in batches for i, (r, _, _) in b.placement.items()}
  assert row_of[0] == row_of[5] and row_of[2] == row_of[3]


def test_a_unit_longer_than_a_row_is_split_and_counted():
  lengths = [60, 70, 30, 20]
  units = [[0, 1], [2, 3]]
  assert packing.fit_units(lengths, units, 128) == [[0], [1], [2, 3]]
  assert packing.split_units(lengths, units, 128) == 1 and packing.split_units(lengths, units, 130) == 0


def test_no_token_attends_across_segments():
  """The log-probs of the second sample in a row do not move when the first sample's tokens change."""
  model = tiny_model(seed=4)
  scorer = Scorer(model, 0, chunk_size=16, packing=Packing(pack_length=64, micro_batch_tokens=64))
  prompts, responses = [[5, 6, 7, 8], [9, 10, 11]], [[12, 13], [14, 15, 16]]
  base = scorer.score(prompts, responses, units=[[0, 1]])
  changed = scorer.score([[20, 21, 22, 23], prompts[1]], [[24, 25], responses[1]], units=[[0, 1]])
  alone = scorer.score(prompts[1:], responses[1:])
  np.testing.assert_allclose(changed.logprobs[1], base.logprobs[1], atol=1e-6)
  np.testing.assert_allclose(alone.logprobs[0], base.logprobs[1], atol=1e-5)
  assert np.abs(changed.logprobs[0] - base.logprobs[0]).max() > 1e-3  # the first sample did change


def _samples(seed=0):
  prompts, responses = ragged_samples(10, seed)
  rng = np.random.RandomState(seed + 1)
  return [
    StepSample(p, r, old_logp=rng.randn(len(r)).astype(np.float32) * 0.1 - 4, advantages=rng.randn(len(r)))
    for p, r in zip(prompts, responses)
  ]


def _summed_loss_and_grads(params, graphdef, micros, cfg):
  token_count = jnp.float32(sum(m["response_mask"].sum() for m in micros))
  total_loss, total_grads = 0.0, None
  for micro in micros:
    micro = {k: jnp.asarray(v) for k, v in micro.items()}
    (loss, _), grads = jax.value_and_grad(update.micro_batch_loss, has_aux=True)(
      params, graphdef, micro, token_count, cfg
    )
    total_loss += loss
    total_grads = grads if total_grads is None else jax.tree.map(jnp.add, total_grads, grads)
  return total_loss, total_grads


def test_update_loss_and_gradients_are_the_same_packed_and_padded():
  graphdef, params = nnx.split(tiny_model(seed=5))
  samples = _samples()
  cfg = update.LossConfig(chunk_size=16, entropy_coef=0.01)
  padded = batch_lib.length_sorted_micro_batches(
    samples, micro_batch_size=4, pad_id=0, prompt_buckets=(64,), response_buckets=(32,)
  )
  packed, share = batch_lib.packed_micro_batches(samples, pack_length=128, micro_batch_tokens=256, pad_id=0)
  assert 0 <= share < 0.5
  want_loss, want_grads = _summed_loss_and_grads(params, graphdef, padded, cfg)
  got_loss, got_grads = _summed_loss_and_grads(params, graphdef, packed, cfg)
  assert abs(float(want_loss)) > 1e-3
  np.testing.assert_allclose(float(got_loss), float(want_loss), atol=1e-6)
  for w, g in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-6)
