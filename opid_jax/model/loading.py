"""One entry point for every model source: an HF folder, a hub id, or a .gguf file."""

from __future__ import annotations

import dataclasses

from opid_jax.model import attention as attention_lib, gguf_io, hf_io, tokenizer as tok
from opid_jax.model.config import ModelConfig
from opid_jax.model.decoder import Decoder


@dataclasses.dataclass
class LoadedModel:
  model: Decoder
  config: ModelConfig
  tokenizer: object  # a transformers tokenizer
  stop_ids: list[int]
  pad_id: int
  source: str  # the local folder or file the weights came from


def load(
  path: str,
  *,
  dtype: str | None = None,
  param_dtype: str | None = None,
  remat: bool = False,
  attention: str = "xla",
  shardings=None,
  with_tokenizer: bool = True,
) -> LoadedModel:
  attention = attention_lib.resolve(attention)  # a kernel this backend cannot run stops here, with one line
  if path.endswith(".gguf"):
    model, cfg = gguf_io.load_gguf(
      path, dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention, shardings=shardings
    )
    source, config_dir = path, None
  else:
    model, cfg, source = hf_io.load_hf(
      path, dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention, shardings=shardings
    )
    config_dir = source
  tokenizer = tok.load_tokenizer(source) if with_tokenizer else None
  stops = tok.stop_ids(tokenizer, config_dir) if tokenizer is not None else [int(i) for i in _eos_from_config(cfg)]
  pad = tok.pad_id(tokenizer, stops) if tokenizer is not None else stops[0]
  return LoadedModel(model, cfg, tokenizer, stops, pad, source)


def _eos_from_config(cfg: ModelConfig) -> list[int]:
  eos = dict(cfg.extra_hf).get("eos_token_id")
  return list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
