"""The continuous-batching engine against the static sampler: same greedy tokens, reproducible sampling, requests
that end on their own, per-request knobs, faults contained to one request, no recompilation."""

import jax
import numpy as np
import pytest

from opid_jax.batching import prompt_length
from opid_jax.generation import engine as engine_lib
from opid_jax.generation.engine import ContinuousEngine
from opid_jax.generation.sampler import Sampler, SamplingParams
from tests.tiny_models import tiny_model

BUCKETS = (16, 64)
GREEDY = SamplingParams(0.0, max_new_tokens=20)


@pytest.fixture(scope="module")
def model():
  return tiny_model(seed=3, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def prompts(model):
  rng = np.random.default_rng(0)
  vocab = model.cfg.vocab_size
  return [rng.integers(1, vocab, size=int(n)).tolist() for n in rng.integers(2, 50, size=11)]


@pytest.fixture(scope="module")
def stops(model, prompts):
  """Stop ids that end the greedy responses at many different steps (tokens first sampled mid-response)."""
  free = Sampler(model, [0], 0, prompt_buckets=BUCKETS).generate(prompts, GREEDY)
  picked = []
  for i, row in enumerate(free.tokens[:5]):
    at = 3 + 3 * i
    if row[at] not in row[:at]:
      picked.append(row[at])
  return picked


def _engine(model, stops, **kw):
  kw = {"slots": 3, "max_new_tokens": 24, "decode_steps": 4, "prompt_buckets": BUCKETS} | kw
  return ContinuousEngine(model, stops, 0, **kw)


def test_greedy_tokens_equal_the_static_sampler(model, prompts, stops):
  reference = Sampler(model, stops, 0, prompt_buckets=BUCKETS).generate(prompts, GREEDY)
  lengths = sorted({len(t) for t in reference.tokens})
  assert len(lengths) >= 3 and any(reference.finished) and not all(reference.finished)  # stops at various steps
  engine = _engine(model, stops)  # 11 requests through 3 slots
  out = engine.generate(prompts, GREEDY)
  assert out.tokens == reference.tokens
  assert out.finished == reference.finished
  for a, b in zip(out.logprobs, reference.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert not engine.busy and engine.free_slots == 3
  s = engine.stats
  assert s.useful_tokens == sum(len(t) for t in reference.tokens) == s.decode_tokens + len(prompts)
  assert 0 < s.utilisation() <= 1 and s.slot_steps == 3 * s.decode_steps


def test_sampling_is_reproducible_from_the_seed_whatever_the_slots(model, prompts, stops):
  sampling = SamplingParams(1.0, top_p=0.9, top_k=50, max_new_tokens=20)
  a = _engine(model, stops).generate(prompts, sampling, key=7)
  b = _engine(model, stops, slots=8, decode_steps=5).generate(prompts, sampling, key=7)
  c = _engine(model, stops).generate(prompts, sampling, key=8)
  assert a.tokens == b.tokens and a.finished == b.finished
  np.testing.assert_allclose(np.concatenate(a.logprobs), np.concatenate(b.logprobs), atol=1e-5)
  assert a.tokens != c.tokens


def test_requests_with_their_own_knobs_share_the_slots(model, prompts, stops):
  """A greedy request decoding beside sampled ones, with another max_new_tokens, is unaffected by them."""
  engine = _engine(model, stops, slots=4)
  short = SamplingParams(0.0, max_new_tokens=5)
  greedy = [engine.submit(p, short) for p in prompts[:3]]
  sampled = [engine.submit(p, SamplingParams(1.5, top_k=3, max_new_tokens=24), key=i) for i, p in enumerate(prompts)]
  while engine.busy:
    engine.step()
  reference = Sampler(model, stops, 0, prompt_buckets=BUCKETS).generate(prompts[:3], short)
  assert [r.tokens for r in greedy] == reference.tokens
  assert all(r.done and len(r.tokens) <= 24 for r in sampled)
  assert max(len(r.tokens) for r in greedy) <= 5


def test_a_failing_request_ends_alone(model, prompts, stops):
  engine = _engine(model, stops)
  reference = Sampler(model, stops, 0, prompt_buckets=BUCKETS).generate(prompts, GREEDY)
  long = max(range(len(prompts)), key=lambda i: len(reference.tokens[i]))

  def explode(ids):
    raise ConnectionResetError("client went away")

  requests = [engine.submit(p, GREEDY, on_tokens=explode if i == long else None) for i, p in enumerate(prompts)]
  while engine.busy:
    engine.step()
  assert isinstance(requests[long].error, ConnectionResetError) and not requests[long].finished
  others = [i for i in range(len(prompts)) if i != long]
  assert [requests[i].tokens for i in others] == [reference.tokens[i] for i in others]


def test_chunks_stream_in_order_and_cancel_frees_the_slot(model, prompts, stops):
  engine = _engine(model, stops, slots=1, decode_steps=2)
  chunks = []
  first = engine.submit(prompts[0], GREEDY, on_tokens=chunks.append)
  second = engine.submit(prompts[1], GREEDY)
  engine.step()
  engine.step()
  assert len(chunks) >= 2 and sum(chunks, []) == first.tokens
  engine.cancel(first)
  while engine.busy:
    engine.step()
  reference = Sampler(model, stops, 0, prompt_buckets=BUCKETS).generate(prompts[1:2], GREEDY)
  assert second.tokens == reference.tokens[0]


def test_new_params_and_new_knobs_do_not_recompile(model, prompts, stops):
  engine = _engine(model, stops, prompt_buckets=(64,))
  engine.generate(prompts[:4], GREEDY)
  before = dict(engine_lib.TRACE_COUNTS)
  engine.set_params(jax.tree.map(lambda x: x * 1.01, engine.params))
  engine.generate(prompts[4:8], SamplingParams(0.7, top_p=0.5, max_new_tokens=9), key=1)
  assert engine_lib.TRACE_COUNTS == before


def test_prompt_limits_and_bad_requests(model, stops):
  engine = _engine(model, stops)
  with pytest.raises(prompt_length.PromptTooLong):
    engine.submit(list(range(1, 70)), GREEDY)
  cut = _engine(model, stops, truncate_left=True).submit(list(range(1, 70)), GREEDY)
  assert cut.prompt_ids == list(range(6, 70))
  with pytest.raises(Exception, match="empty prompt"):
    engine.submit([], GREEDY)
  with pytest.raises(Exception, match="max_new_tokens 30 outside"):
    engine.submit([1, 2], SamplingParams(0.0, max_new_tokens=30))
