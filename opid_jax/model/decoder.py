"""The decoder: Qwen2/2.5 (q/k/v bias), Qwen3 (per-head q/k RMSNorm), Llama family, in Flax NNX.

Weights are laid out per head for einsums (q: (embed, heads, head_dim), o: (heads, head_dim, embed)), so
the head axis shards directly. Every parameter carries `logical_axes` metadata; activations are constrained
by logical name (a no-op without a mesh). One forward serves scoring/training (no cache) and sampling (a
dense KV cache written at `cache_index`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opid_jax.model import attention as attention_lib
from opid_jax.model.config import ModelConfig
from opid_jax.model.sharding import constrain


class LayerCache(NamedTuple):
  # Laid out for the decode step, where both attention products become batched matrix-vector products over
  # contiguous memory (on CPU 2-3x faster than the activations' [batch, length, kv_heads, head_dim] layout).
  k: jax.Array  # [batch, kv_heads, head_dim, cache_len]
  v: jax.Array  # [batch, kv_heads, cache_len, head_dim]


def _param(shape, dtype, axes, init=None, rngs=None):
  if init is None:
    value = jnp.zeros(shape, dtype)
  else:
    value = init(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=axes)


_normal = jax.nn.initializers.normal(0.02)


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, param_dtype, axes=("norm",)):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=axes)

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return xf.astype(x.dtype) * self.scale[...].astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array):
  """cos/sin of shape [batch, length, head_dim] in float32 (rotate-half convention)."""
  inv_freq = jnp.asarray(cfg.rope_inv_freq())
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  """x: [batch, length, heads, head_dim]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg = cfg
    self.q = _param((d, n, h), pd, ("embed", "q_heads", "head_dim"), _normal, rngs)
    self.k = _param((d, k, h), pd, ("embed", "kv_heads", "head_dim"), _normal, rngs)
    self.v = _param((d, k, h), pd, ("embed", "kv_heads", "head_dim"), _normal, rngs)
    self.o = _param((n, h, d), pd, ("q_heads", "head_dim", "embed"), _normal, rngs)
    if cfg.qkv_bias:
      self.q_bias = _param((n, h), pd, ("q_heads", "head_dim"))
      self.k_bias = _param((k, h), pd, ("kv_heads", "head_dim"))
      self.v_bias = _param((k, h), pd, ("kv_heads", "head_dim"))
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg.rms_norm_eps, pd, ("head_dim",))
      self.k_norm = RMSNorm(h, cfg.rms_norm_eps, pd, ("head_dim",))

  def _project(self, x, name):
    dt = x.dtype
    y = jnp.einsum("btd,dnh->btnh", x, getattr(self, name)[...].astype(dt))
    if self.cfg.qkv_bias:
      y = y + getattr(self, name + "_bias")[...].astype(dt)
    return y

  def __call__(self, x, cos, sin, kv_valid, cache: LayerCache | None, cache_index, segment_ids=None):
    cfg = self.cfg
    q, k, v = self._project(x, "q"), self._project(x, "k"), self._project(x, "v")
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = constrain(q, ("batch", "length", "q_heads", "head_dim"))
    k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
    b, t, n, h = q.shape
    q = q.reshape(b, t, cfg.num_kv_heads, n // cfg.num_kv_heads, h)
    if cache is not None:
      cache = _write_cache(cache, k, v, cache_index)
      if t == 1:  # a decode step: one query against the whole cache, in the cache's own layout
        allowed = kv_valid & (jnp.arange(kv_valid.shape[1])[None] <= jnp.reshape(cache_index, (-1, 1)))  # [b, s]
        out = _attend_one_query(q[:, 0], cache.k.astype(q.dtype), cache.v.astype(q.dtype), allowed)
        return self._output(out.reshape(b, 1, n, h), x.dtype), cache
      if not (isinstance(cache_index, int) and cache_index == 0):  # appending after cached tokens
        k = constrain(cache.k.transpose(0, 3, 1, 2), ("batch", "cache_length", "kv_heads", "head_dim"))
        v = constrain(cache.v.swapaxes(1, 2), ("batch", "cache_length", "kv_heads", "head_dim"))
        query_slot = cache_index + jnp.arange(t)
        allowed = (jnp.arange(k.shape[1])[None, :] <= query_slot[:, None])[None] & kv_valid[:, None, :]
        out = attention_lib.attend_masked(q, k.astype(q.dtype), v.astype(q.dtype), allowed)
        return self._output(out.reshape(b, t, n, h), x.dtype), cache
    # Self-attention over the fresh tokens: queries at slots < t see only keys at slots < t, of their own segment.
    segments = segment_ids if segment_ids is not None else kv_valid[:, :t].astype(jnp.int32)
    out = attention_lib.attend(q, k, v, segments, segments, impl=cfg.attention)
    return self._output(out.reshape(b, t, n, h), x.dtype), cache

  def _output(self, heads, dtype):
    """[b, t, heads, head_dim] -> [b, t, embed]."""
    return jnp.einsum("btnh,nhd->btd", heads, self.o[...].astype(dtype))


def _write_cache(cache: LayerCache, k, v, cache_index) -> LayerCache:
  """Writes keys and values [b, t, kv_heads, h] at slot cache_index: one slot for the whole batch, or (a decode
  step, t = 1) one slot per row, a [b] array (the continuous engine's sequences each have their own length)."""
  if jnp.ndim(cache_index) == 1:
    rows = jnp.arange(k.shape[0])
    new_k = cache.k.at[rows, :, :, cache_index].set(k[:, 0].astype(cache.k.dtype))
    new_v = cache.v.at[rows, :, cache_index, :].set(v[:, 0].astype(cache.v.dtype))
  else:
    new_k = jax.lax.dynamic_update_slice_in_dim(
      cache.k, k.transpose(0, 2, 3, 1).astype(cache.k.dtype), cache_index, axis=3
    )
    new_v = jax.lax.dynamic_update_slice_in_dim(cache.v, v.swapaxes(1, 2).astype(cache.v.dtype), cache_index, axis=2)
  return LayerCache(
    constrain(new_k, ("batch", "kv_heads", "head_dim", "cache_length")),
    constrain(new_v, ("batch", "kv_heads", "cache_length", "head_dim")),
  )


def _attend_one_query(q, k, v, allowed):
  """The decode step: q [b, kv_heads, groups, h]; k [b, kv_heads, h, s]; v [b, kv_heads, s, h]; allowed [b, s].
  Returns [b, kv_heads, groups, h]."""
  scores = jnp.einsum("bkgh,bkhs->bkgs", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
  scores = jnp.where(allowed[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.sum(probs[..., None] * v[:, :, None], axis=-2)


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate = _param((d, f), pd, ("embed", "mlp"), _normal, rngs)
    self.up = _param((d, f), pd, ("embed", "mlp"), _normal, rngs)
    self.down = _param((f, d), pd, ("mlp", "embed"), _normal, rngs)

  def __call__(self, x):
    dt = x.dtype
    gate = jnp.einsum("btd,df->btf", x, self.gate[...].astype(dt))
    up = jnp.einsum("btd,df->btf", x, self.up[...].astype(dt))
    hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return jnp.einsum("btf,fd->btd", hidden, self.down[...].astype(dt))


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, cos, sin, kv_valid, cache, cache_index, segment_ids=None):
    with jax.named_scope("attention"):
      attn_out, cache = self.attn(self.attn_norm(x), cos, sin, kv_valid, cache, cache_index, segment_ids)
      x = x + attn_out
    with jax.named_scope("mlp"):
      x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ("batch", "length", "embed")), cache


def _run_block(block, x, cos, sin, kv_valid, cache, cache_index, segment_ids):
  return block(x, cos, sin, kv_valid, cache, cache_index, segment_ids)


def _run_block_remat(block, x, cos, sin, kv_valid, cache, cache_index, segment_ids):
  """The block under jax.checkpoint, its parameters passed explicitly (a pure function of arrays), so it
  composes with any enclosing jit / grad / scan / eval_shape."""
  graphdef, state = nnx.split(block)

  @jax.checkpoint
  def run(state, x, cos, sin, kv_valid, segment_ids):
    out, _ = nnx.merge(graphdef, state)(x, cos, sin, kv_valid, None, 0, segment_ids)
    return out

  return run(state, x, cos, sin, kv_valid, segment_ids), cache


class Decoder(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    self.embed = _param((cfg.vocab_size, cfg.hidden_size), pd, ("vocab", "embed"), _normal, rngs)
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    if not cfg.tie_word_embeddings:
      self.lm_head = _param((cfg.hidden_size, cfg.vocab_size), pd, ("embed", "vocab"), _normal, rngs)

  def __call__(
    self, tokens, positions, kv_valid, cache: list[LayerCache] | None = None, cache_index=0, segment_ids=None
  ):
    """Final-norm hidden states [batch, length, embed] and the updated cache.

    tokens, positions: [batch, length]; kv_valid: [batch, keys] (keys = length without a cache, the cache
    length with one) marks which key slots hold real tokens; queries attend causally by slot. segment_ids
    [batch, length] (packed rows, no cache; 0 = padding): queries attend only to keys of their own segment.
    """
    dt = jnp.dtype(self.cfg.dtype)
    with jax.named_scope("embed"):
      x = self.embed[...][tokens].astype(dt)
      x = constrain(x, ("batch", "length", "embed"))
    with jax.named_scope("rope"):
      cos, sin = rope_tables(self.cfg, positions)
    run = _run_block_remat if (self.cfg.remat and cache is None) else _run_block
    new_cache = []
    for i, block in enumerate(self.layers):
      with jax.named_scope(f"layer_{i}"):
        layer_cache = None if cache is None else cache[i]
        x, layer_cache = run(block, x, cos, sin, kv_valid, layer_cache, cache_index, segment_ids)
      new_cache.append(layer_cache)
    with jax.named_scope("final_norm"):
      x = self.final_norm(x)
    return x, (new_cache if cache is not None else None)

  def logits(self, hidden, dtype=None) -> jax.Array:
    """Float32 logits for (a few) hidden states; never call this on a whole long batch.

    The projection runs in the compute dtype, or in `dtype` (scoring projects in float32). Tied models contract
    directly against the (vocab, embed) table: no transposed copy of it is made.
    """
    dt = jnp.dtype(dtype or self.cfg.dtype)
    hidden = hidden.astype(dt)
    with jax.named_scope("logits"):
      if self.cfg.tie_word_embeddings:
        return jnp.einsum("...d,vd->...v", hidden, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
      return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> list[LayerCache]:
  dtype = jnp.dtype(dtype or cfg.dtype)
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, length)
  v_shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  return [LayerCache(jnp.zeros(k_shape, dtype), jnp.zeros(v_shape, dtype)) for _ in range(cfg.num_layers)]


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Per-row positions for a left-padded batch: 0 at each row's first real token (pads clamp to 0)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def create_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
  return Decoder(cfg, nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> Decoder:
  """The model with ShapeDtypeStruct leaves: for loaders that fill parameters one by one."""
  return nnx.eval_shape(lambda: create_model(cfg))


def param_count(model: Decoder) -> int:
  state = nnx.state(model, nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
