"""Weights in and out: HF folders (single or sharded safetensors), hub ids, GGUF files; export to HF.

Tensors are read one at a time from memory-mapped files, reshaped to our per-head layout, cast, and placed
on devices (with a sharding when one is given), so the host never holds a second full copy of the model.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from opid_jax.errors import UserError
from opid_jax.model.config import ModelConfig
from opid_jax.model.decoder import Decoder, abstract_model

# HF tensor name -> (our parameter path, whether HF stores it as a [out, in] linear weight to transpose).
# Linear weights become (in, out) and are then reshaped to the per-head shape of the parameter.
_HF_TO_OURS = [
  (r"model\.embed_tokens\.weight", "embed", False),
  (r"lm_head\.weight", "lm_head", True),
  (r"model\.norm\.weight", "final_norm.scale", False),
  (r"model\.layers\.(\d+)\.input_layernorm\.weight", "layers.{0}.attn_norm.scale", False),
  (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{0}.mlp_norm.scale", False),
  (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight", "layers.{0}.attn.{1}", True),
  (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias", "layers.{0}.attn.{1}_bias", False),
  (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "layers.{0}.attn.o", True),
  (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", "layers.{0}.attn.{1}_norm.scale", False),
  (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{1}", True),
]
_COMPILED = [(re.compile(p + "$"), target, t) for p, target, t in _HF_TO_OURS]

_ST_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def hf_name_to_path(name: str) -> tuple[str, bool] | None:
  for pattern, target, transpose in _COMPILED:
    m = pattern.match(name)
    if m:
      return target.format(*m.groups()), transpose
  return None


# ----------------------------------------------------------------------------------------------------
# safetensors: a tiny memory-mapped reader (no framework copy, bf16 included)


def read_safetensors_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  return header, 8 + n


def iter_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
  header, offset = read_safetensors_header(path)
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
  for name, entry in header.items():
    start, end = entry["data_offsets"]
    dtype = _ST_DTYPES.get(entry["dtype"])
    if dtype is None:
      raise UserError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
    yield name, data[start:end].view(dtype).reshape(entry["shape"])


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
  header, offset, blobs = {}, 0, []
  for name, arr in tensors.items():
    arr = np.ascontiguousarray(arr)
    blob = arr.tobytes()
    header[name] = {
      "dtype": _NP_TO_ST[arr.dtype],
      "shape": list(arr.shape),
      "data_offsets": [offset, offset + len(blob)],
    }
    offset += len(blob)
    blobs.append(blob)
  header["__metadata__"] = metadata or {"format": "pt"}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for blob in blobs:
      f.write(blob)


# ----------------------------------------------------------------------------------------------------
# locating a model


def resolve_model_dir(path_or_id: str) -> str:
  """A local folder as is; otherwise a hub id downloaded into the HF cache (a clear error offline)."""
  if os.path.isdir(path_or_id) or os.path.isfile(path_or_id):
    return path_or_id
  looks_like_hub_id = re.fullmatch(r"[\w.\-]+/[\w.\-]+", path_or_id) is not None
  if not looks_like_hub_id:
    raise UserError(f"model path {path_or_id!r} does not exist")
  try:
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_id, allow_patterns=_WEIGHT_PATTERNS)
  except Exception as e:  # offline, unknown repo, gated repo: all the same to a user
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(
      f"model {path_or_id!r} is not a local path and could not be downloaded from the hub ({reason})"
    ) from None


def safetensors_files(model_dir: str) -> list[str]:
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(model_dir, f) for f in files]
  single = os.path.join(model_dir, "model.safetensors")
  if os.path.exists(single):
    return [single]
  found = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
  if not found:
    raise UserError(f"model folder {model_dir} has no *.safetensors weights")
  return [os.path.join(model_dir, f) for f in found]


def read_hf_config(model_dir: str) -> dict:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"model folder {model_dir} has no config.json")
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------------------------------
# filling a model from named tensors


def _dotted(path) -> str:
  return ".".join(str(k) for k in path)


def _target_leaves(model: Decoder) -> dict[str, nnx.Variable]:
  return {_dotted(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def build_model(
  cfg: ModelConfig,
  tensors: Iterator[tuple[str, np.ndarray]],
  *,
  source: str,
  shardings: Callable[[nnx.Variable], jax.sharding.Sharding | None] | None = None,
) -> Decoder:
  """Creates the model from (HF name, array) pairs, placing each parameter as soon as it is read.

  `shardings` maps a parameter's abstract Variable (shape + `logical_axes` metadata) to its sharding.
  """
  graphdef, state = nnx.split(abstract_model(cfg))
  flat = list(nnx.to_flat_state(state))
  targets = {_dotted(path): var for path, var in flat}
  filled: dict[str, jax.Array] = {}
  for name, array in tensors:
    mapped = hf_name_to_path(name)
    if mapped is None:
      continue  # e.g. rotary caches in old checkpoints
    path, transpose = mapped
    if path == "lm_head" and cfg.tie_word_embeddings:
      continue
    if path not in targets:
      raise UserError(f"{source}: tensor {name} does not fit a {cfg.model_type} model of this config")
    target = targets[path]
    value = np.asarray(array)
    if transpose:
      value = value.T
    if value.size != int(np.prod(target.shape)):
      raise UserError(
        f"{source}: tensor {name} has shape {list(array.shape)}, expected "
        f"{int(np.prod(target.shape))} elements for {path}"
      )
    value = value.reshape(target.shape).astype(jnp.dtype(cfg.param_dtype))
    sharding = shardings(target) if shardings else None
    filled[path] = jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
  missing = sorted(set(targets) - set(filled))
  if missing:
    raise UserError(f"{source}: weights missing for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
  new_flat = [(path, var.replace(filled[_dotted(path)])) for path, var in flat]
  return nnx.merge(graphdef, nnx.from_flat_state(new_flat))


def load_hf(
  path_or_id: str,
  *,
  dtype: str | None = None,
  param_dtype: str | None = None,
  remat: bool = False,
  attention: str = "xla",
  shardings=None,
) -> tuple[Decoder, ModelConfig, str]:
  """Loads an HF folder or hub id. Returns the model, its config and the local folder."""
  model_dir = resolve_model_dir(path_or_id)
  hf = read_hf_config(model_dir)
  stored = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  overrides = dict(
    dtype=dtype or "float32",
    param_dtype=param_dtype or ("bfloat16" if stored == "bfloat16" else "float32"),
    remat=remat,
    attention=attention,
  )
  cfg = ModelConfig.from_hf_dict(hf, **overrides)
  files = safetensors_files(model_dir)

  def tensors():
    for f in files:
      yield from iter_safetensors(f)

  return build_model(cfg, tensors(), source=model_dir, shardings=shardings), cfg, model_dir


# ----------------------------------------------------------------------------------------------------
# export


def to_hf_tensors(model: Decoder, dtype: str | None = None) -> dict[str, np.ndarray]:
  """Our parameters as HF-named numpy arrays ([out, in] linear weights)."""
  cfg = model.cfg
  out = {}
  for path, var in _target_leaves(model).items():
    value = np.asarray(jax.device_get(var[...]))
    name, n_in = _ours_to_hf(path)
    if n_in:
      value = value.reshape(int(np.prod(value.shape[:n_in])), -1).T
    elif path.endswith("_bias"):
      value = value.reshape(-1)
    out[name] = value.astype(jnp.dtype(dtype or cfg.param_dtype))
  return out


def _ours_to_hf(path: str) -> tuple[str, int]:
  """(HF name, number of leading 'in' axes to flatten before transposing; 0 = no transpose)."""
  parts = path.split(".")
  if path == "embed":
    return "model.embed_tokens.weight", 0
  if path == "lm_head":
    return "lm_head.weight", 1
  if path == "final_norm.scale":
    return "model.norm.weight", 0
  i, rest = parts[1], ".".join(parts[2:])
  prefix = f"model.layers.{i}."
  table = {
    "attn_norm.scale": ("input_layernorm.weight", 0),
    "mlp_norm.scale": ("post_attention_layernorm.weight", 0),
    "attn.q": ("self_attn.q_proj.weight", 1),
    "attn.k": ("self_attn.k_proj.weight", 1),
    "attn.v": ("self_attn.v_proj.weight", 1),
    "attn.o": ("self_attn.o_proj.weight", 2),
    "attn.q_bias": ("self_attn.q_proj.bias", 0),
    "attn.k_bias": ("self_attn.k_proj.bias", 0),
    "attn.v_bias": ("self_attn.v_proj.bias", 0),
    "attn.q_norm.scale": ("self_attn.q_norm.weight", 0),
    "attn.k_norm.scale": ("self_attn.k_norm.weight", 0),
    "mlp.gate": ("mlp.gate_proj.weight", 1),
    "mlp.up": ("mlp.up_proj.weight", 1),
    "mlp.down": ("mlp.down_proj.weight", 1),
  }
  name, n_in = table[rest]
  return prefix + name, n_in


def export_hf(
  model: Decoder, out_dir: str, tokenizer=None, generation_config: dict | None = None, dtype: str | None = None
) -> None:
  """Writes config.json, model.safetensors, generation_config.json and tokenizer files."""
  os.makedirs(out_dir, exist_ok=True)
  hf = model.cfg.to_hf_dict()
  if dtype:
    hf["dtype"] = dtype
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  write_safetensors(os.path.join(out_dir, "model.safetensors"), to_hf_tensors(model, dtype))
  gen = dict(generation_config or {})
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    if key not in gen and key in hf:
      gen[key] = hf[key]
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump(gen, f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
