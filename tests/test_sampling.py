"""Sampling math: the distribution sampled, top-k / top-p supports, greedy, against hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np

from opid_jax.generation.sampler import argmax_last_axis, filter_logits, sample_from_logits, sample_token

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1], np.float32))


def test_inverse_cdf_sampling_matches_the_distribution():
  n = 20000
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, 4))
  tokens = np.asarray(sample_from_logits(logits, jax.random.PRNGKey(0)))
  freq = np.bincount(tokens, minlength=4) / n
  np.testing.assert_allclose(freq, [0.5, 0.25, 0.15, 0.1], atol=0.015)


def test_filtered_tokens_are_never_sampled():
  logits = jnp.asarray([[-jnp.inf, 0.0, -jnp.inf, 0.0]] * 4000)
  tokens = np.asarray(sample_from_logits(logits, jax.random.PRNGKey(1)))
  assert set(tokens.tolist()) == {1, 3}


def test_two_level_cdf_over_uneven_blocks_matches_the_distribution():
  # 37 tokens: blocks of 8 with a padded last block; zero-probability tokens at block ends and in the middle.
  probs = np.random.RandomState(0).rand(37).astype(np.float32)
  probs[[7, 8, 15, 20, 36]] = 0.0
  probs /= probs.sum()
  n = 40000
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (n, 37))
  tokens = np.asarray(sample_from_logits(logits, jax.random.PRNGKey(2)))
  freq = np.bincount(tokens, minlength=37) / n
  assert freq[[7, 8, 15, 20, 36]].sum() == 0.0
  np.testing.assert_allclose(freq, probs, atol=0.006)


def test_argmax_takes_the_first_maximum():
  logits = jnp.asarray([[0.0, 2.0, 2.0, 1.0], [5.0, 1.0, 5.0, 5.0], [-jnp.inf, -1.0, -3.0, -1.0]])
  assert argmax_last_axis(logits).tolist() == [1, 0, 1] == np.argmax(np.asarray(logits), axis=-1).tolist()


def test_top_k_and_top_p_supports():
  logits = jnp.asarray([LOGITS])
  keep = lambda p, k: np.isfinite(np.asarray(filter_logits(logits, jnp.float32(p), jnp.int32(k))))[0].tolist()
  assert keep(1.0, 2) == [True, True, False, False]
  assert keep(0.5, 0) == [True, False, False, False]  # the first token alone reaches 0.5
  assert keep(0.6, 0) == [True, True, False, False]  # 0.5 < 0.6, so the second is needed
  assert keep(0.8, 0) == [True, True, True, False]  # 0.75 < 0.8
  assert keep(0.8, 2) == [True, True, False, False]  # both filters apply
  assert keep(1.0, 0) == [True] * 4


def test_greedy_and_reported_logprob():
  logits = jnp.asarray([LOGITS, LOGITS[::-1]])
  token, logp = sample_token(logits, jax.random.PRNGKey(0), jnp.float32(0.0), jnp.float32(1.0), jnp.int32(0))
  assert token.tolist() == [0, 3]
  np.testing.assert_allclose(logp, np.log([0.5, 0.5]), rtol=1e-5)
  # With a temperature the reported log-prob is under softmax(logits / T), before any filtering.
  token, logp = sample_token(logits[:1], jax.random.PRNGKey(3), jnp.float32(2.0), jnp.float32(0.3), jnp.int32(0))
  want = np.log(np.sqrt([0.5, 0.25, 0.15, 0.1]) / np.sqrt([0.5, 0.25, 0.15, 0.1]).sum())
  assert token.tolist() == [0]  # top-p 0.3 keeps only the first token
  np.testing.assert_allclose(logp, want[:1], rtol=1e-5)
