"""The generate / score tools as a user runs them, and their one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_fixtures import hf_logits

from opid_jax.generation.sampler import Sampler, SamplingParams
from opid_jax.model import loading, tokenizer as tok

ENV = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")


def run_tool(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tiny_policy_dir):
  return tiny_policy_dir("qwen3", 2)


def test_generate_prints_the_greedy_continuation(model_dir):
  res = run_tool(
    "opid_jax.generate",
    f"--model={model_dir}",
    "--prompt=Your task is to: put a mug",
    "--chat",
    "--greedy",
    "--max_new_tokens=12",
  )
  assert res.returncode == 0, res.stderr
  loaded = loading.load(model_dir)
  ids = tok.prompt_ids(loaded.tokenizer, "Your task is to: put a mug", chat=True)
  assert ids[:1] == loaded.tokenizer.convert_tokens_to_ids(["<|im_start|>"])
  out = Sampler(loaded.model, loaded.stop_ids, loaded.pad_id).generate(
    [ids], SamplingParams(temperature=0.0, max_new_tokens=12)
  )
  assert res.stdout == loaded.tokenizer.decode(out.tokens[0], skip_special_tokens=True) + "\n"


def test_score_prints_tokens_and_logprobs(model_dir):
  prompt, response = "You are in the middle of a room.", "<action>go to cabinet 1</action>"
  res = run_tool("opid_jax.score", f"--model={model_dir}", f"--prompt={prompt}", f"--response={response}")
  assert res.returncode == 0, res.stderr
  got = json.loads(res.stdout)
  loaded = loading.load(model_dir)
  p_ids, r_ids = tok.encode(loaded.tokenizer, prompt), tok.encode(loaded.tokenizer, response)
  assert got["tokens"] == r_ids
  import transformers

  ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  logp = torch.log_softmax(torch.tensor(hf_logits(ref, p_ids + r_ids)[len(p_ids) - 1 : -1]), -1)
  want = logp[torch.arange(len(r_ids)), torch.tensor(r_ids)].numpy()
  np.testing.assert_allclose(got["logprobs"], want, atol=1e-4)


def test_stop_ids_include_the_chat_end_token(model_dir):
  loaded = loading.load(model_dir)
  assert loaded.tokenizer.convert_tokens_to_ids("<|im_end|>") in loaded.stop_ids


def _assert_one_line_error(res, *needles):
  assert res.returncode == 2, (res.returncode, res.stderr)
  lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
  assert lines[-1].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
  for needle in needles:
    assert needle in lines[-1], lines[-1]


def test_missing_path(tmp_path):
  res = run_tool("opid_jax.generate", f"--model={tmp_path}/nope", "--prompt=hi")
  _assert_one_line_error(res, "does not exist")


def test_folder_without_weights(tmp_path, model_dir):
  import shutil

  shutil.copy(os.path.join(model_dir, "config.json"), tmp_path / "config.json")
  res = run_tool("opid_jax.score", f"--model={tmp_path}", "--prompt=hi", "--response=there")
  _assert_one_line_error(res, "no *.safetensors")


def test_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  res = run_tool("opid_jax.generate", f"--model={tmp_path}", "--prompt=hi")
  _assert_one_line_error(res, "unsupported model_type 'gpt2'")


# An over-long prompt (refused, or cut with --truncate_left): tests/test_prompt_length.py.


def test_hub_id_offline_is_one_line():
  res = run_tool("opid_jax.generate", "--model=Qwen/Qwen2.5-0.5B-Instruct-does-not-exist", "--prompt=hi")
  _assert_one_line_error(res, "could not be downloaded")
