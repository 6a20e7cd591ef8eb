"""Causal self-attention over packed rows, one function behind a switch: `attend(..., impl=NAME)`.

Shapes everywhere: q [b, t, kv_heads, groups, h] (GQA: query head n = kv_head * groups + g); k, v [b, t, kv_heads, h];
q_segment, kv_segment [b, t] int32, 0 = padding, > 0 = the segment (sample) a token belongs to. Token i attends to
token j iff j <= i and q_segment[i] == kv_segment[j]. Scale h ** -0.5, scores and softmax in float32, output in
q.dtype. Implementations:

  xla      the reference: a [b, t, t] mask and `attend_masked` (float32 scores, query blocks under checkpoint).
  chunked  pure-JAX flash attention: online softmax over key blocks, block pairs above the causal diagonal or of
           different segments (packed samples) skipped, memory linear in t, a hand-written FlashAttention-2
           backward. Any backend.
  cudnn    jax.nn.dot_product_attention(implementation="cudnn"), GPU only, bfloat16/float16 only.
  splash   the Pallas TPU splash-attention kernel; on other backends only in Pallas interpret mode, when
           SPLASH_INTERPRET (or the environment variable OPID_SPLASH_INTERPRET=1) allows it (slow: for tests).
  auto     `resolve` picks splash on TPU, cudnn on GPU; on CPU it stays "auto": xla for rows shorter than
           AUTO_CHUNKED_MIN_LENGTH, chunked from there on (decided from the static shape inside `attend`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from opid_jax.errors import UserError
from opid_jax.model.sharding import active_mesh_and_rules, fit_spec, logical_to_spec

IMPLEMENTATIONS = ("xla", "chunked", "cudnn", "splash", "auto")
# "auto" on CPU: rows at least this long go through "chunked" (measured on 2 cores, 4 rows, 4 heads x 64: chunked's
# forward 1.3x xla's at 512 tokens, 2.4x at 1,024, 4x at 8,192; its backward too from 256 on).
AUTO_CHUNKED_MIN_LENGTH = 512
QUERY_BLOCK = 256  # attend_masked's query block
# attend_chunked's query and key blocks. 256 rather than 512: finer blocks skip more of the causal triangle and of
# the other samples in packed rows (2 CPU cores, forward + backward: 4 x 2,048 dense rows 1.6x faster, packed rows of
# ~370-token samples 2.2x, 4 x 8,192 dense 1.4x).
CHUNKED_BLOCK = 256
SPLASH_INTERPRET = False  # allow "splash" off TPU, in Pallas interpret mode (also: OPID_SPLASH_INTERPRET=1)
SPLASH_PAD = 128  # splash needs lengths that are a multiple of its (128-multiple) blocks

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: masked scores never make inf - inf = NaN
_NO_KEYS_LSE = float(np.finfo(np.float32).max)  # the log-sum-exp of a row that sees no key: exp(s - it) == 0


def _splash_interpret_allowed() -> bool:
  return SPLASH_INTERPRET or os.environ.get("OPID_SPLASH_INTERPRET", "") not in ("", "0")


def resolve(name: str, backend: str | None = None) -> str:
  """Validates `name` against the backend (default jax.default_backend()) and returns the implementation to use.

  'auto' -> 'splash' on TPU, 'cudnn' on GPU, 'auto' elsewhere (xla or chunked by row length, inside `attend`).
  """
  backend = backend or jax.default_backend()
  if name not in IMPLEMENTATIONS:
    raise UserError(f"attention: unknown implementation {name!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
  if name == "auto":
    return {"tpu": "splash", "gpu": "cudnn"}.get(backend, "auto")
  if name == "cudnn" and backend != "gpu":
    raise UserError(f"attention: 'cudnn' needs a GPU but the backend is {backend}; choose one of xla, chunked, auto")
  if name == "splash" and backend != "tpu" and not _splash_interpret_allowed():
    raise UserError(
      f"attention: 'splash' needs a TPU but the backend is {backend} (OPID_SPLASH_INTERPRET=1 runs it slowly in "
      "Pallas interpret mode); choose one of xla, chunked, auto"
    )
  return name


def attend(q, k, v, q_segment, kv_segment, *, impl: str) -> jax.Array:
  """Causal self-attention over packed rows (shapes and semantics in the module docstring).

  Padding rows may return any finite values. Differentiable through q, k, v for every implementation.
  """
  impl = resolve(impl)
  if impl == "auto":
    impl = "chunked" if q.shape[1] >= AUTO_CHUNKED_MIN_LENGTH else "xla"
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  return _IMPLS[impl](q, k, v, q_segment, kv_segment)


# ---------------------------------------------------------------------------------------------------------- xla


def attend_xla(q, k, v, q_segment, kv_segment):
  t = q.shape[1]
  causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
  allowed = causal[None] & (q_segment[:, :, None] == kv_segment[:, None, :])  # [b, t, t]
  return attend_masked(q, k, v, allowed)


def attend_masked(q, k, v, allowed):
  """q: [b, t, kv_heads, groups, h]; k, v: [b, s, kv_heads, h]; allowed: [b, t, s] (keys may be a longer cache).

  Long inputs go through blocks of QUERY_BLOCK queries, each under jax.checkpoint: the [t, s] score matrix
  never exists whole, in the forward or the backward pass (memory O(block x s) instead of O(t x s)).
  """
  t = q.shape[1]
  if t <= QUERY_BLOCK:
    return _attend_block(q, k, v, allowed)
  n = -(-t // QUERY_BLOCK)
  extra = n * QUERY_BLOCK - t  # padded queries attend to nothing useful and are dropped below
  q = jnp.pad(q, [(0, 0), (0, extra)] + [(0, 0)] * (q.ndim - 2))
  allowed = jnp.pad(allowed, [(0, 0), (0, extra), (0, 0)])
  q_blocks = q.reshape(q.shape[0], n, QUERY_BLOCK, *q.shape[2:]).swapaxes(0, 1)
  mask_blocks = allowed.reshape(allowed.shape[0], n, QUERY_BLOCK, allowed.shape[-1]).swapaxes(0, 1)
  block = jax.checkpoint(lambda qm: _attend_block(qm[0], k, v, qm[1]))
  out = jax.lax.map(block, (q_blocks, mask_blocks))  # [n, b, block, k, g, h]
  return out.swapaxes(0, 1).reshape(q.shape)[:, :t]


def _attend_block(q, k, v, allowed):
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
  scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs, v)


# ------------------------------------------------------------------------------------------------------ chunked


def attend_chunked(q, k, v, q_segment, kv_segment, *, block_q: int | None = None, block_k: int | None = None):
  """Flash attention in plain JAX. Blocks (default CHUNKED_BLOCK) are clipped to t; t need not be a multiple of
  them (padded inside)."""
  t = q.shape[1]
  bq, bk = min(block_q or CHUNKED_BLOCK, t), min(block_k or CHUNKED_BLOCK, t)
  # Padded queries and keys get segment 0 and positions >= t: no real query sees a padded key (causality).
  q, q_segment = (_pad_time(x, -t % bq) for x in (q, q_segment))
  k, v, kv_segment = (_pad_time(x, -t % bk) for x in (k, v, kv_segment))
  return _flash(q, k, v, q_segment, kv_segment, bq, bk)[:, :t]


def _pad_time(x, extra):
  return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2)) if extra else x


def _rows(x, i, size, axis=1):
  """Block i of `size` along the time axis."""
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def _put(x, block, i, axis=1):
  return jax.lax.dynamic_update_slice_in_dim(x, block.astype(x.dtype), i * block.shape[axis], axis=axis)


def _block_mask(i, j, q_seg, kv_seg, bq, bk):
  """[b, 1, bq, 1, bk]: may query i * bq + r see key j * bk + c? (broadcasts over kv_heads and groups)."""
  causal = j * bk + jnp.arange(bk)[None, :] <= i * bq + jnp.arange(bq)[:, None]
  return (causal[None] & (q_seg[:, :, None] == kv_seg[:, None, :]))[:, None, :, None, :]


def _block_visibility(q_seg, kv_seg, bq, bk):
  """[nq, nk] bool: may some query of block i see some key of block j, in any row? Causal, and the two blocks'
  segment-id ranges overlap in some row. Conservative (true wherever one pair is allowed), so skipping the blocks
  where it is false changes nothing; in packed rows it skips every block pair of two different samples."""
  b = q_seg.shape[0]
  q_blocks, kv_blocks = q_seg.reshape(b, -1, bq), kv_seg.reshape(b, -1, bk)
  q_lo, q_hi, kv_lo, kv_hi = q_blocks.min(-1), q_blocks.max(-1), kv_blocks.min(-1), kv_blocks.max(-1)
  overlap = (q_lo[:, :, None] <= kv_hi[:, None, :]) & (kv_lo[:, None, :] <= q_hi[:, :, None])
  causal = jnp.arange(kv_blocks.shape[1])[None, :] * bk <= jnp.arange(1, q_blocks.shape[1] + 1)[:, None] * bq - 1
  return overlap.any(0) & causal


def _visible_range(visible):
  """(first, last + 1) of the true entries of a bool vector; (0, 0) when none is."""
  index = jnp.arange(visible.shape[0])
  first = jnp.min(jnp.where(visible, index, visible.shape[0]))
  last = jnp.max(jnp.where(visible, index + 1, 0))
  return jnp.minimum(first, last), last


def _scores(q, k):
  """q [b, bq, kv_heads, groups, h], k [b, bk, kv_heads, h] -> float32 [b, kv_heads, bq, groups, bk]."""
  return jnp.einsum("bqkgh,bckh->bkqgc", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)


def _flash_forward(q, k, v, q_seg, kv_seg, bq, bk):
  """(out like q, log-sum-exp [b, kv_heads, t, groups] float32), written block by block in place."""
  b, t, kh, g, _ = q.shape
  visible = _block_visibility(q_seg, kv_seg, bq, bk)

  def query_block(i, carry):
    out, lse = carry
    q_i, q_seg_i = _rows(q, i, bq), _rows(q_seg, i, bq)

    def key_block(j, carry):
      return jax.lax.cond(visible[i, j], attend_key_block, lambda j, carry: carry, j, carry)

    def attend_key_block(j, carry):
      m, l, acc = carry
      s = _scores(q_i, _rows(k, j, bk))
      mask = _block_mask(i, j, q_seg_i, _rows(kv_seg, j, bk), bq, bk)
      m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, _MASK_VALUE), axis=-1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      pv = jnp.einsum("bkqgc,bckh->bkqgh", p.astype(v.dtype), _rows(v, j, bk), preferred_element_type=jnp.float32)
      return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

    stats = jnp.full((b, kh, bq, g), _MASK_VALUE, jnp.float32)
    init = (stats, jnp.zeros_like(stats), jnp.zeros((b, kh, bq, g, q.shape[-1]), jnp.float32))
    first, last = _visible_range(visible[i])
    m, l, acc = jax.lax.fori_loop(first, last, key_block, init)
    seen = l > 0  # false only for a row that sees no key at all: output 0, and exp(s - lse) == 0 in the backward
    l = jnp.where(seen, l, 1.0)
    out = _put(out, (acc / l[..., None]).transpose(0, 2, 1, 3, 4), i)
    return out, _put(lse, jnp.where(seen, m + jnp.log(l), _NO_KEYS_LSE), i, axis=2)

  init = (jnp.zeros_like(q), jnp.zeros((b, kh, t, g), jnp.float32))
  return jax.lax.fori_loop(0, t // bq, query_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, q_seg, kv_seg, bq, bk):
  return _flash_forward(q, k, v, q_seg, kv_seg, bq, bk)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, bq, bk):
  out, lse = _flash_forward(q, k, v, q_seg, kv_seg, bq, bk)
  return out, (q, k, v, q_seg, kv_seg, out, lse)


def _flash_bwd(bq, bk, residuals, d_out):
  """FlashAttention-2 backward: probabilities recomputed block by block from the log-sum-exp; D = rowsum(dO * O),
  dS = P * (dP - D). Outer loop over key blocks (their dk, dv accumulate in the carry), inner loop over the query
  blocks that can see the key block (_block_visibility), dq accumulated in a float32 buffer."""
  q, k, v, q_seg, kv_seg, out, lse = residuals
  nk = k.shape[1] // bk
  visible = _block_visibility(q_seg, kv_seg, bq, bk)
  scale = q.shape[-1] ** -0.5
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1, 3)  # like lse

  def key_block(j, carry):
    dq, dk, dv = carry
    k_j, v_j, kv_seg_j = _rows(k, j, bk), _rows(v, j, bk), _rows(kv_seg, j, bk)

    def query_block(i, carry):
      return jax.lax.cond(visible[i, j], attend_query_block, lambda i, carry: carry, i, carry)

    def attend_query_block(i, carry):
      dq, dk_j, dv_j = carry
      q_i, do_i = _rows(q, i, bq), _rows(d_out, i, bq)
      mask = _block_mask(i, j, _rows(q_seg, i, bq), kv_seg_j, bq, bk)
      p = jnp.where(mask, jnp.exp(_scores(q_i, k_j) - _rows(lse, i, bq, axis=2)[..., None]), 0.0)
      dv_j = dv_j + jnp.einsum("bkqgc,bqkgh->bckh", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqkgh,bckh->bkqgc", do_i, v_j, preferred_element_type=jnp.float32)
      ds = (p * (dp - _rows(delta, i, bq, axis=2)[..., None]) * scale).astype(q.dtype)
      dq_i = _rows(dq, i, bq) + jnp.einsum("bkqgc,bckh->bqkgh", ds, k_j, preferred_element_type=jnp.float32)
      dk_j = dk_j + jnp.einsum("bkqgc,bqkgh->bckh", ds, q_i, preferred_element_type=jnp.float32)
      return _put(dq, dq_i, i), dk_j, dv_j

    zeros = jnp.zeros(k_j.shape, jnp.float32)
    first, last = _visible_range(visible[:, j])
    dq, dk_j, dv_j = jax.lax.fori_loop(first, last, query_block, (dq, zeros, zeros))
    return dq, _put(dk, dk_j, j), _put(dv, dv_j, j)

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k), jnp.zeros_like(v))
  dq, dk, dv = jax.lax.fori_loop(0, nk, key_block, init)
  return dq.astype(q.dtype), dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# -------------------------------------------------------------------------------------------------------- cudnn


def attend_cudnn(q, k, v, q_segment, kv_segment, *, implementation: str = "cudnn"):
  """cuDNN fused attention through jax.nn.dot_product_attention (`implementation` is a test hook: "xla" runs the
  same reshapes and mask through XLA on any backend).

  Segments: jax.nn.dot_product_attention has no segment ids. Its cuDNN path offers (a) query/key lengths, which
  only express one right-padded segment per row (wrong for left padding and for packed rows), and (b) a boolean
  `mask`, which it turns into an additive bias. We use (b) with is_causal=True (so cuDNN still skips the tiles
  above the diagonal): exact for any segments, but the bias is a materialised [b, 1, t, t] array in q.dtype
  (O(t^2) memory, like xla's mask; 8192 tokens: 128 MiB per row in bfloat16) and the backward computes its unused
  gradient (same size). cuDNN's packed THD layout (per-segment offsets, no bias) would avoid both, but it is only
  in jax's private cudnn module, needs Hopper and a static maximum segment count per row: not used.
  cuDNN also needs bfloat16/float16 inputs and, with a bias in training, even lengths (padded here).
  """
  b, t, kh, g, h = q.shape
  if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
    raise UserError(
      f"attention: 'cudnn' needs bfloat16 or float16 activations, got {q.dtype}; set dtype: bfloat16 or use "
      "attention: chunked"
    )
  extra = t % 2
  q, k, v, q_segment, kv_segment = (_pad_time(x, extra) for x in (q, k, v, q_segment, kv_segment))
  mask = (q_segment[:, :, None] == kv_segment[:, None, :])[:, None]  # [b, 1, t, t], broadcast over heads
  out = jax.nn.dot_product_attention(
    q.reshape(b, t + extra, kh * g, h),  # heads kv_head * groups + g: jax's GQA grouping too
    k,
    v,
    mask=mask,
    scale=h**-0.5,
    is_causal=True,
    implementation=implementation,
  )
  return out.reshape(b, t + extra, kh, g, h)[:, :t]


# ------------------------------------------------------------------------------------------------------- splash


def attend_splash(q, k, v, q_segment, kv_segment, *, interpret: bool | None = None):
  """The Pallas splash kernel (MHA form, which takes fewer kv heads than query heads natively: no repeat), vmapped
  over rows. Interpret mode by default off TPU. With an active multi-device mesh the kernel runs under
  jax.shard_map over the batch and kv-head mesh axes (the sequence is never sharded)."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  local = functools.partial(_splash_local, interpret=interpret)
  active = active_mesh_and_rules()
  if active is None or active[0].size == 1:
    return local(q, k, v, q_segment, kv_segment)
  mesh, rules = active
  spec = fit_spec(logical_to_spec(("batch", None, "kv_heads", None, None), rules), q.shape, mesh)
  q_spec, kv_spec, seg_spec = spec, PartitionSpec(*spec[:3], None), PartitionSpec(spec[0], None)
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(q_spec, kv_spec, kv_spec, seg_spec, seg_spec),
    out_specs=q_spec,
    check_vma=False,
  )(q, k, v, q_segment, kv_segment)


def _splash_local(q, k, v, q_segment, kv_segment, *, interpret):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

  b, t, kh, g, h = q.shape
  extra = -t % SPLASH_PAD
  q, k, v, q_segment, kv_segment = (_pad_time(x, extra) for x in (q, k, v, q_segment, kv_segment))
  length = t + extra
  kernel = _splash_kernel(length, kh * g, interpret)
  qh = (q * h**-0.5).transpose(0, 2, 3, 1, 4).reshape(b, kh * g, length, h)  # the kernel does not scale
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kv_heads, length, h]
  row = lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=splash.SegmentIds(qs, ks))
  out = jax.vmap(row)(qh, kt, vt, q_segment, kv_segment)  # [b, heads, length, h]
  return out.reshape(b, kh, g, length, h).transpose(0, 3, 1, 2, 4)[:, :t]


def _splash_kernel(length: int, heads: int, interpret: bool):
  """Built per trace, not cached: it holds arrays, which are tracers inside shard_map (the numpy mask analysis
  behind it is cached by jax)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as splash,
    splash_attention_mask as masks,
  )

  block = next(size for size in (512, 256, 128) if length % size == 0)
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  mask = masks.MultiHeadMask([masks.CausalMask((length, length))] * heads)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


_IMPLS = {"xla": attend_xla, "chunked": attend_chunked, "cudnn": attend_cudnn, "splash": attend_splash}
