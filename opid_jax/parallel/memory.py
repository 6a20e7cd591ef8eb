"""Per-device memory of a training run, from shapes and shardings alone (no weights, no devices).

The parameter shapes come from `jax.eval_shape` over the model; each parameter's shards come from the same
logical-axis rules and `mesh.variable_sharding` the trainer uses, over an AbstractMesh, so a plan for 256
chips runs on a laptop. Optimizer state is AdamW's two moments (float32-shaped like the parameters).

Activation figure (an estimate, not a measurement), per device, for one update micro-batch of r rows x T tokens,
compute dtype c bytes, L layers, hidden D, MLP F, heads H, vocabulary V, t = their tensor-parallel split:
  rows: without packing, r = micro_batch_size rows of T = max_prompt_tokens + max_new_tokens tokens; with packing,
    r = max(1, micro_batch_tokens // pack_length) rows of T = pack_length tokens (every row assumed full length;
    the packer may bucket a batch of short rows lower). Per device: r over the batch axes (b ways), rounded up
    without packing; with packing the packer rounds the rows down to a multiple of b, at least b
    (`packing.micro_batch_rows` with row_multiple = the data-parallel size), so max(1, r // b) rows.
  with remat: L*r*T*D*c (each layer's saved input) + one layer recomputed: r*T*(10*D + 3*F/t)*c
              + the attention term A below + a 64-token vocabulary chunk r*64*(V/t)*4*3
  without remat: every layer keeps its working set: L times the one-layer figure (A included).
Attention term A, by `model.attention`:
  xla: float32 scores of one 256-query block against every key, r*(H/t)*min(256, T)*T*4 (the blocks run under
    jax.checkpoint, see `attend_masked` in model/attention.py), plus the boolean [r, T, T] mask it builds, r*T*T.
  chunked: one 256 x 256 block of float32 scores at a time (query blocks x key blocks) plus the float32 softmax
    statistics kept for the backward, r*(H/t)*min(256, T)**2*4 + r*(H/t)*T*4.
  splash, cudnn (fused flash kernels): score tiles live in on-chip memory; HBM holds the float32 softmax
    statistics only (log-sum-exp per query and head), r*(H/t)*T*4.
  auto: on an accelerator (what the planner models) the fused kernel, splash on TPU, cudnn on GPU.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from opid_jax.errors import UserError
from opid_jax.model.attention import CHUNKED_BLOCK, IMPLEMENTATIONS, QUERY_BLOCK
from opid_jax.model.config import ModelConfig
from opid_jax.model.decoder import abstract_model
from opid_jax.parallel import mesh as mesh_lib

GIB = 1024**3
# Memory per chip/GPU in bytes, and the share of it a plan may fill (the rest: XLA workspace, fragmentation).
DEVICES = {"v5e": 16 * GIB, "v4": 32 * GIB, "v5p": 95 * GIB, "h100": 80 * GIB, "h200": 141 * 10**9}
USABLE = 0.9
LOGIT_CHUNK = 64
TPU_DEVICES = ("v5e", "v4", "v5p")
ATTENTION = IMPLEMENTATIONS
FUSED_ATTENTION = ("cudnn", "splash")
KEY_BLOCK = CHUNKED_BLOCK  # queries and keys per block of the chunked attention


@dataclasses.dataclass(frozen=True)
class Workload:
  """The sizes of a run that matter for memory."""

  rollout_batch: int  # tasks_per_batch * group_size: sequences decoded together
  max_length: int  # max_prompt_tokens + max_new_tokens
  micro_batch: int  # update rows per forward/backward pass (global)
  with_reference: bool
  remat: bool
  packing: bool = False  # update micro-batches are packed rows (train.packing)
  pack_length: int = 0  # tokens per packed row (train.pack_length)
  micro_batch_tokens: int = 0  # tokens per update micro-batch when packing (ppo.micro_batch_tokens)
  attention: str = "xla"  # model.attention

  def __post_init__(self):
    if self.attention not in ATTENTION:
      raise UserError(f"model.attention={self.attention!r} is not one of {', '.join(ATTENTION)}")
    if self.packing and (self.pack_length <= 0 or self.micro_batch_tokens <= 0):
      raise UserError(
        f"packing needs train.pack_length > 0 and ppo.micro_batch_tokens > 0; got {self.pack_length}, "
        f"{self.micro_batch_tokens}"
      )

  @property
  def update_rows(self) -> int:
    """Rows of one update micro-batch (global)."""
    return max(1, self.micro_batch_tokens // self.pack_length) if self.packing else self.micro_batch

  @property
  def update_length(self) -> int:
    """Tokens per row of an update micro-batch."""
    return self.pack_length if self.packing else self.max_length


def planned_attention(attention: str, device: str) -> str:
  """The attention implementation the planner counts: `auto` is the fused kernel of the device's platform."""
  if attention != "auto":
    return attention
  return "splash" if device in TPU_DEVICES else "cudnn"


@dataclasses.dataclass
class Plan:
  mesh: dict[str, int]
  params: int
  grads: int
  optimizer: int
  reference: int
  kv_cache: int
  activations: int

  @property
  def total(self) -> int:
    # Training and rollout do not overlap in time: the larger of the two phases' transient memory counts.
    resident = self.params + self.optimizer + self.reference
    return resident + max(self.grads + self.activations, self.kv_cache)

  def rows(self) -> list[tuple[str, int]]:
    return [
      ("params", self.params),
      ("grads", self.grads),
      ("optimizer (AdamW mu+nu)", self.optimizer),
      ("reference params", self.reference),
      ("rollout KV cache", self.kv_cache),
      ("activations (1 micro-batch)", self.activations),
      ("total", self.total),
    ]


def abstract_mesh(sizes: dict[str, int]) -> AbstractMesh:
  return AbstractMesh(tuple(int(sizes[a]) for a in mesh_lib.MESH_AXES), mesh_lib.MESH_AXES)


def abstract_params(cfg: ModelConfig):
  return nnx.state(abstract_model(cfg), nnx.Param)


def sharded_param_bytes(params, mesh: AbstractMesh, rules, dtype) -> int:
  """Bytes one device holds of a parameter-shaped tree stored in `dtype`."""
  itemsize = np.dtype(dtype).itemsize
  total = 0
  for var in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    shard = mesh_lib.variable_sharding(var, mesh, rules).shard_shape(tuple(var.shape))
    total += int(np.prod(shard)) * itemsize
  return total


def _shards(mesh: AbstractMesh, axes: Sequence[str]) -> int:
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def _tensor_split(count: int, mesh: AbstractMesh, rules, logical: str) -> int:
  """How many ways `count` (heads, MLP width, vocabulary) is split: its mesh axes, if they divide it."""
  target = dict(rules).get(logical)
  axes = (target,) if isinstance(target, str) else tuple(target or ())
  ways = _shards(mesh, axes)
  return ways if count % ways == 0 else 1


def kv_cache_bytes(cfg: ModelConfig, work: Workload, mesh: AbstractMesh, rules) -> int:
  rows = -(-work.rollout_batch // _shards(mesh, mesh_lib.batch_axes(rules)))
  heads = cfg.num_kv_heads // _tensor_split(cfg.num_kv_heads, mesh, rules, "kv_heads")
  return 2 * cfg.num_layers * rows * work.max_length * heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize


def attention_bytes(attention: str, rows: int, heads: int, t: int) -> int:
  """Transient attention memory of one layer for `rows` rows of `t` tokens and `heads` query heads (per device)."""
  if attention == "xla":
    return rows * heads * min(QUERY_BLOCK, t) * t * 4 + rows * t * t  # score block, boolean mask
  if attention == "chunked":
    return rows * heads * min(KEY_BLOCK, t) ** 2 * 4 + rows * heads * t * 4
  if attention in FUSED_ATTENTION or attention == "auto":
    return rows * heads * t * 4  # softmax statistics; the score tiles never reach HBM
  raise ValueError(f"attention={attention!r} is not one of {', '.join(ATTENTION)}")


def activation_bytes(cfg: ModelConfig, work: Workload, mesh: AbstractMesh, rules) -> int:
  batch_shards = _shards(mesh, mesh_lib.batch_axes(rules))
  if work.packing:
    rows = max(1, work.update_rows // batch_shards)
  else:
    rows = -(-work.micro_batch // batch_shards)
  t, c = work.update_length, np.dtype(cfg.dtype).itemsize
  heads = cfg.num_heads // _tensor_split(cfg.num_heads, mesh, rules, "q_heads")
  mlp = cfg.intermediate_size // _tensor_split(cfg.intermediate_size, mesh, rules, "mlp")
  vocab = cfg.vocab_size // _tensor_split(cfg.vocab_size, mesh, rules, "vocab")
  one_layer = rows * t * (10 * cfg.hidden_size + 3 * mlp) * c + attention_bytes(work.attention, rows, heads, t)
  logits = rows * LOGIT_CHUNK * vocab * 4 * 3
  if work.remat:
    return cfg.num_layers * rows * t * cfg.hidden_size * c + one_layer + logits
  return cfg.num_layers * one_layer + logits


def plan(cfg: ModelConfig, work: Workload, sizes: dict[str, int], rules, params=None) -> Plan:
  mesh = abstract_mesh(sizes)
  params = abstract_params(cfg) if params is None else params
  p = sharded_param_bytes(params, mesh, rules, cfg.param_dtype)
  return Plan(
    mesh=dict(sizes),
    params=p,
    grads=p,
    optimizer=2 * sharded_param_bytes(params, mesh, rules, "float32"),
    reference=p if work.with_reference else 0,
    kv_cache=kv_cache_bytes(cfg, work, mesh, rules),
    activations=activation_bytes(cfg, work, mesh, rules),
  )


def candidate_meshes(num_devices: int, max_tensor: int = 8) -> list[dict[str, int]]:
  """data x fsdp x tensor = num_devices, most data-parallel first (least communication), then less tensor."""
  meshes = []
  for tensor, fsdp in itertools.product(range(1, max_tensor + 1), range(1, num_devices + 1)):
    if num_devices % (tensor * fsdp) == 0:
      meshes.append({"data": num_devices // (tensor * fsdp), "fsdp": fsdp, "tensor": tensor})
  return sorted(meshes, key=lambda m: (-m["data"], m["tensor"], m["fsdp"]))


def suggest(
  cfg: ModelConfig, work: Workload, num_devices: int, device_bytes: int, rules, mini_batch: int
) -> tuple[Plan, int] | None:
  """The first mesh (in `candidate_meshes` order) that fits with the largest micro-batch that still fits.

  Micro-batches are multiples of the data-parallel size that divide the mini-batch; None when nothing fits.
  With packing the micro-batch is `work.micro_batch_tokens` whatever the micro-batch size: only the mesh is
  searched, and the micro-batch size returned is the workload's.
  """
  params = abstract_params(cfg)
  budget = int(device_bytes * USABLE)
  for sizes in candidate_meshes(num_devices):
    dp = sizes["data"] * sizes["fsdp"]
    if work.rollout_batch % dp or mini_batch % dp:
      continue
    fits = []
    micros = [m for m in range(dp, mini_batch + 1, dp) if mini_batch % m == 0]
    for micro in [work.micro_batch] if work.packing else micros:
      candidate = plan(cfg, dataclasses.replace(work, micro_batch=micro), sizes, rules, params)
      if candidate.total <= budget:
        fits.append((candidate, micro))
    if fits:
      return fits[-1]
  return None
