"""attention.attend: every implementation that runs on CPU equals the reference (xla), forward and gradients, on
left-padded and packed rows with GQA and MQA; segments isolate samples; `resolve` validates names per backend."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opid_jax.errors import UserError
from opid_jax.model import attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def splash_interpret(monkeypatch):
  monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)


def left_padded(t, lengths):
  """One row per length: pads (0) first, then the sample (1)."""
  return np.array([[0] * (t - n) + [1] * n for n in lengths], np.int32)


def packed(t, rows):
  """One row per list of sample lengths: samples 1, 2, ... back to back, then trailing padding."""
  out = np.zeros((len(rows), t), np.int32)
  for r, lengths in enumerate(rows):
    out[r, : sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
  return out


def inputs(segments, kv_heads, groups, head_dim=16, seed=0, dtype=jnp.float32):
  b, t = segments.shape
  rng = np.random.default_rng(seed)
  draw = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  return draw(b, t, kv_heads, groups, head_dim), draw(b, t, kv_heads, head_dim), draw(b, t, kv_heads, head_dim)


def dense_reference(q, k, v, segments):
  """float64 numpy: softmax over the keys j <= i of the same segment."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  t = q.shape[1]
  scores = np.einsum("btkgh,bskh->bkgts", q, k) * q.shape[-1] ** -0.5
  allowed = (np.tril(np.ones((t, t), bool))[None] & (segments[:, :, None] == segments[:, None, :]))[:, None, None]
  scores = np.where(allowed, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bkgts,bskh->btkgh", probs, v)


def forward_and_grads(fn, q, k, v, segments):
  """fn's output and the gradients of <output, a fixed random cotangent> with respect to q, k, v (one jit)."""
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), q.dtype)
  segments = jnp.asarray(segments)

  @jax.jit
  def run(q, k, v):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, segments, segments), q, k, v)
    return out, vjp(cotangent)

  out, grads = run(q, k, v)
  for x in (out, *grads):
    assert np.isfinite(np.asarray(x, np.float32)).all()
  return out, grads


def assert_same(got, want, atol):
  out, grads = got
  ref_out, ref_grads = want
  np.testing.assert_allclose(out, ref_out, atol=atol, rtol=0)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=atol, rtol=0, err_msg=f"d{name}")


CASES = {
  "left-padded GQA": (left_padded(200, [200, 77]), 2, 2, 64, 64),
  "packed GQA, t not a block multiple": (packed(200, [[60, 70, 50], [13, 150]]), 2, 2, 64, 48),
  "packed MQA": (packed(200, [[100, 90], [7, 8, 9, 100]]), 1, 4, 48, 64),
  "left-padded MQA, one clipped block": (left_padded(131, [120, 1]), 1, 4, 512, 512),
  "packed GQA, many small blocks": (packed(160, [[70, 80], [159]]), 2, 2, 32, 16),
  "packed, one row, samples across blocks": (packed(256, [[40, 100, 20, 60]]), 2, 2, 32, 32),
  "packed, two rows, ragged q and k blocks": (packed(240, [[90, 30, 100], [17, 150, 50]]), 1, 2, 48, 32),
}


def test_chunked_skips_block_pairs_of_other_samples_and_above_the_diagonal():
  """Blocks of 4 tokens, samples 1 (tokens 0-5), 2 (6-13), 3 (14-15): block pairs (query block, key block) that
  hold no pair of one sample, or lie above the diagonal, are skipped; padding (0) only meets padding."""
  segments = jnp.asarray(packed(20, [[6, 8, 2]]))
  got = np.asarray(attention._block_visibility(segments, segments, 4, 4))
  want = np.array(
    [  # key blocks 0-4; query blocks 0-4 (tokens 4i..4i+3: {1}, {1,2}, {2}, {2,3}, {0})
      [1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 1, 1, 0, 0],
      [0, 1, 1, 1, 0],
      [0, 0, 0, 0, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(got, want)
  # Two rows: a block pair runs when any row needs it.
  two = jnp.asarray(np.concatenate([packed(20, [[6, 8, 2]]), packed(20, [[20]])]))
  np.testing.assert_array_equal(attention._block_visibility(two, two, 4, 4), np.tril(np.ones((5, 5), bool)))


def test_xla_equals_a_dense_float64_reference():
  segments = np.concatenate([left_padded(300, [250]), packed(300, [[100, 120, 50]])])  # 300 > QUERY_BLOCK: blocked
  q, k, v = inputs(segments, 2, 2)
  got = attention.attend_xla(q, k, v, jnp.asarray(segments), jnp.asarray(segments))
  np.testing.assert_allclose(got, dense_reference(q, k, v, segments), atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_equals_xla(case):
  segments, kv_heads, groups, block_q, block_k = CASES[case]
  q, k, v = inputs(segments, kv_heads, groups)
  want = forward_and_grads(attention.attend_xla, q, k, v, segments)
  chunked = lambda *a: attention.attend_chunked(*a, block_q=block_q, block_k=block_k)
  assert_same(forward_and_grads(chunked, q, k, v, segments), want, atol=2e-5)


def test_chunked_bfloat16_is_close_to_xla():
  segments = packed(256, [[100, 100], [256]])
  q, k, v = inputs(segments, 2, 2, dtype=jnp.bfloat16)
  s = jnp.asarray(segments)
  got = jax.jit(lambda *a: attention.attend_chunked(*a, block_q=64, block_k=64))(q, k, v, s, s)
  assert got.dtype == jnp.bfloat16
  want = jax.jit(attention.attend_xla)(q, k, v, s, s)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=3e-2)


def test_chunked_rows_that_see_no_key_stay_finite():
  """A query whose segment no key has (impossible in self-attention, possible for a caller): finite, no NaN."""
  q, k, v = inputs(packed(64, [[64]]), 2, 2)
  q_segment = jnp.asarray(packed(64, [[32]]) * 3)  # segment 3 for the first 32 queries: no key has it
  kv_segment = jnp.asarray(packed(64, [[64]]))
  fn = lambda q, k, v: attention.attend_chunked(q, k, v, q_segment, kv_segment, block_q=16, block_k=16)
  out, grads = jax.value_and_grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
  assert all(np.isfinite(x).all() for x in (out, *grads))


def splash(q, k, v, q_segment, kv_segment):
  return attention.attend_splash(q, k, v, q_segment, kv_segment, interpret=True)


def cudnn_through_xla(q, k, v, q_segment, kv_segment):
  """The cudnn path's reshapes, padding and mask, with jax's own XLA attention in place of the cuDNN call."""
  return attention.attend_cudnn(q, k, v, q_segment, kv_segment, implementation="xla")


RUNNABLE = {
  "xla": attention.attend_xla,
  "chunked": lambda *a: attention.attend_chunked(*a, block_q=32, block_k=32),
  "splash": splash,
  "cudnn (xla hook)": cudnn_through_xla,
}


@pytest.mark.parametrize("impl", list(RUNNABLE))
def test_segments_isolate_samples(impl):
  """Sample 2 of a packed row is blind to sample 1 (randomising sample 1 leaves it unchanged, while causality
  alone would let it see sample 1) and equals the same sample alone at the start of a row."""
  fn = jax.jit(RUNNABLE[impl])
  t = 128
  segments = packed(t, [[40, 50]])
  q, k, v = inputs(segments, 2, 2)
  s = jnp.asarray(segments)
  out = np.asarray(fn(q, k, v, s, s))
  first, second = segments[0] == 1, segments[0] == 2
  noise = inputs(segments, 2, 2, seed=7)
  randomise = lambda x, n: jnp.where(first.reshape((1, t) + (1,) * (x.ndim - 2)), n, x)
  q2, k2, v2 = (randomise(x, n) for x, n in zip((q, k, v), noise))
  out2 = np.asarray(fn(q2, k2, v2, s, s))
  np.testing.assert_allclose(out2[0, second], out[0, second], atol=1e-6)
  assert np.abs(out2[0, first] - out[0, first]).max() > 1e-2  # the randomisation did change sample 1

  alone = np.zeros_like(segments)
  alone[0, :50] = 1
  move = lambda x: jnp.concatenate([x[:, second], x[:, first], x[:, segments[0] == 0]], axis=1)
  a = jnp.asarray(alone)
  out3 = np.asarray(fn(move(q), move(k), move(v), a, a))
  np.testing.assert_allclose(out3[0, :50], out[0, second], atol=1e-5)


@pytest.mark.parametrize("t", [128, 256])
def test_splash_interpret_equals_xla(t):
  segments = np.concatenate([packed(t, [[t // 3, t // 2]]), left_padded(t, [t - 5])])
  q, k, v = inputs(segments, 2, 2)
  want = forward_and_grads(attention.attend_xla, q, k, v, segments)
  assert_same(forward_and_grads(splash, q, k, v, segments), want, atol=2e-5)


def test_splash_pads_lengths_and_takes_mqa(splash_interpret):
  segments = packed(100, [[30, 60], [100]])  # 100: padded to 128 inside
  q, k, v = inputs(segments, 1, 4)
  s = jnp.asarray(segments)
  got = attention.attend(q, k, v, s, s, impl="splash")
  np.testing.assert_allclose(got, attention.attend_xla(q, k, v, s, s), atol=1e-5)


@pytest.mark.parametrize("kv_heads,groups,t", [(2, 2, 99), (1, 4, 64)])
def test_cudnn_path_around_the_call_equals_xla(kv_heads, groups, t):
  segments = np.concatenate([packed(t, [[20, 30]]), left_padded(t, [t - 9])])  # t = 99: padded to even inside
  q, k, v = inputs(segments, kv_heads, groups)
  want = forward_and_grads(attention.attend_xla, q, k, v, segments)
  assert_same(forward_and_grads(cudnn_through_xla, q, k, v, segments), want, atol=2e-5)


def test_cudnn_refuses_float32_with_one_line():
  segments = jnp.asarray(packed(8, [[8]]))
  q, k, v = inputs(segments, 1, 2)
  with pytest.raises(UserError, match="bfloat16") as info:
    attention.attend_cudnn(q, k, v, segments, segments)
  assert "\n" not in str(info.value)


def test_resolve():
  assert attention.resolve("auto", "cpu") == "auto"
  assert attention.resolve("auto", "gpu") == "cudnn"
  assert attention.resolve("auto", "tpu") == "splash"
  assert attention.resolve("cudnn", "gpu") == "cudnn"
  assert attention.resolve("splash", "tpu") == "splash"
  assert attention.resolve("xla", "tpu") == "xla" and attention.resolve("chunked", "cpu") == "chunked"
  assert attention.resolve("auto") == "auto"  # this machine's backend: cpu
  for name, pattern in [("cudnn", "needs a GPU"), ("splash", "needs a TPU"), ("flash", "unknown")]:
    with pytest.raises(UserError, match=pattern) as info:
      attention.resolve(name, "cpu")
    message = str(info.value)
    assert "\n" not in message and "xla" in message and "chunked" in message, message


def test_resolve_splash_off_tpu_when_interpret_is_allowed(monkeypatch):
  monkeypatch.setenv("OPID_SPLASH_INTERPRET", "1")
  assert attention.resolve("splash", "cpu") == "splash"
  monkeypatch.setenv("OPID_SPLASH_INTERPRET", "0")
  with pytest.raises(UserError):
    attention.resolve("splash", "cpu")
  monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)
  assert attention.resolve("splash", "cpu") == "splash"


def test_auto_on_cpu_picks_by_length(monkeypatch):
  calls = []
  for name in ("xla", "chunked"):
    real = attention._IMPLS[name]
    monkeypatch.setitem(attention._IMPLS, name, lambda *a, _n=name, _f=real: calls.append(_n) or _f(*a))
  monkeypatch.setattr(attention, "AUTO_CHUNKED_MIN_LENGTH", 64)
  for t in (63, 64):
    s = jnp.asarray(packed(t, [[t]]))
    q, k, v = inputs(s, 1, 2)
    np.testing.assert_allclose(
      attention.attend(q, k, v, s, s, impl="auto"), dense_reference(q, k, v, packed(t, [[t]])), atol=1e-5
    )
  assert calls == ["xla", "chunked"]


SHARDED_CHECK = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from opid_jax.model import attention
from opid_jax.model.sharding import use_rules
from opid_jax.parallel.mesh import make_mesh

attention.SPLASH_INTERPRET = True
mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 2})
rules = [("batch", ("data", "fsdp")), ("kv_heads", "tensor"), ("q_heads", "tensor")]
rng = np.random.default_rng(0)
q = jnp.asarray(rng.normal(size=(2, 128, 2, 2, 16)), jnp.float32)
k, v = (jnp.asarray(rng.normal(size=(2, 128, 2, 16)), jnp.float32) for _ in range(2))
s = np.zeros((2, 128), np.int32); s[0, 30:] = 1; s[1, :50] = 1; s[1, 50:100] = 2; s = jnp.asarray(s)
loss = lambda impl: lambda q, k, v: jnp.sum(attention.attend(q, k, v, s, s, impl=impl) ** 2)
want = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
q = jax.device_put(q, NamedSharding(mesh, P("data", None, "tensor")))
for impl in ("chunked", "splash"):
  with use_rules(mesh, rules):
    got = jax.jit(jax.value_and_grad(loss(impl), argnums=(0, 1, 2)))(q, k, v)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=5e-5, err_msg=impl)
print("ok")
"""


@pytest.mark.slow
def test_splash_and_chunked_on_a_sharded_mesh():
  """splash under shard_map over batch (data) and kv heads (tensor), chunked under GSPMD: 4 CPU devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  res = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(SHARDED_CHECK)],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
