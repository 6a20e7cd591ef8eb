"""Shared test fixtures (fixtures only)."""

from __future__ import annotations

import os
import sys
import tarfile

import pytest
from shared_data import ALFWORLD_ARCHIVE_DEFAULT, ROOT

ALFWORLD_ARCHIVE = os.environ.get("ALFWORLD_ARCHIVE") or ALFWORLD_ARCHIVE_DEFAULT
ALFWORLD_TEST_SPLITS = ("valid_seen", "valid_unseen")
CHATML_TEMPLATE = (
  "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True, scope="module")
def fresh_jax_caches():
  """Each test module leaves JAX's caches empty behind it: with a whole suite's compilations kept in one process,
  XLA's CPU compiler once crashed (a segfault inside backend_compile) near the end of `make test`, while the same
  tests pass alone."""
  yield
  import jax

  jax.clear_caches()


@pytest.fixture(scope="session")
def alfworld_games(tmp_path_factory) -> str:
  """A data dir holding the ALFWorld evaluation splits (valid_seen, valid_unseen), unpacked once."""
  if not os.path.isfile(ALFWORLD_ARCHIVE):
    raise FileNotFoundError(f"ALFWorld archive not found at {ALFWORLD_ARCHIVE} (set ALFWORLD_ARCHIVE)")
  data_dir = tmp_path_factory.mktemp("alfworld")
  with tarfile.open(ALFWORLD_ARCHIVE, "r:gz") as tar:
    for member in tar:
      parts = member.name.split("/")
      if member.isfile() and len(parts) > 1 and parts[1] in ALFWORLD_TEST_SPLITS:
        tar.extract(member, data_dir, filter="data")
  return str(data_dir)


@pytest.fixture(scope="session")
def chatml_tokenizer():
  """A tiny byte-level BPE tokenizer (any text round-trips) with ChatML tokens and template."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=600,
    show_progress=False,
    special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  corpus = [
    "You are an expert agent. Your task is to: put a mug in the sink. You arrive at desk 1.",
    "<think>I should go there.</think><action>go to desk 1</action>",
    "<search>Evan Morris</search><information>Doc 1(Title: x)</information>",
  ] * 20
  bpe.train_from_iterator(corpus, trainer)
  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
  )
  tokenizer.chat_template = CHATML_TEMPLATE
  return tokenizer


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
  """`tiny_policy_dir(arch="qwen3", seed=0)`: an HF folder with a tiny random model of that architecture
  (qwen2 / qwen3 / llama) and the tiny tokenizer, made once per (arch, seed) in the session."""
  from hf_fixtures import make_hf_model, save_tiny_tokenizer

  made: dict[tuple[str, int], str] = {}

  def make(arch: str = "qwen3", seed: int = 0) -> str:
    if (arch, seed) not in made:
      out = str(tmp_path_factory.mktemp(f"tiny_{arch}_{seed}"))
      save_tiny_tokenizer(out)
      make_hf_model(arch, out, seed=seed)
      made[arch, seed] = out
    return made[arch, seed]

  return make


@pytest.fixture(scope="session")
def model_dir(tiny_policy_dir) -> str:
  """The tiny random Qwen3 policy of the smoke-config runs."""
  return tiny_policy_dir("qwen3", 0)


@pytest.fixture(scope="session")
def train_cmd(model_dir):
  """`train_cmd(workdir, *overrides)`: the argv of `python -m opid_jax.train` on configs/smoke.py with the tiny
  policy (run it with cwd=ROOT)."""

  def command(workdir, *overrides) -> list[str]:
    return [
      sys.executable,
      "-m",
      "opid_jax.train",
      "--config=configs/smoke.py",
      f"--workdir={workdir}",
      f"--config.model.path={model_dir}",
      *(str(o) for o in overrides),
    ]

  assert os.path.isdir(os.path.join(ROOT, "configs"))
  return command
