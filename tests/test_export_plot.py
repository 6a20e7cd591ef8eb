"""export (a run's latest checkpoint -> an HF folder transformers loads) and plot (learning curves)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_fixtures import hf_logits, random_prompt

from opid_jax.checkpoint import run_files
from opid_jax.model import decoder, loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_policy_dir, train_cmd):
  model_dir = tiny_policy_dir("qwen2", 5)
  workdir = str(tmp_path_factory.mktemp("export") / "run")
  res = subprocess.run(
    train_cmd(workdir, f"--config.model.path={model_dir}", "--config.optim.lr=0.01"),
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return model_dir, workdir


def test_export_gives_transformers_the_trained_weights(trained_run, tmp_path):
  model_dir, workdir = trained_run
  out = str(tmp_path / "hf")
  res = subprocess.run(
    [sys.executable, "-m", "opid_jax.export", f"--workdir={workdir}", f"--out={out}"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert "exported iteration 2" in res.stdout
  ours = loading.load(model_dir)
  _, params = nnx.split(ours.model)
  restored, _ = run_files.restore_latest_params(workdir, params)
  nnx.update(ours.model, restored)
  ids = random_prompt(100, 512, seed=1)
  tokens = np.array([ids])
  mask = np.ones_like(tokens, bool)
  hidden, _ = ours.model(tokens, decoder.positions_from_mask(mask), mask)
  want = np.asarray(ours.model.logits(hidden))[0]
  exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  np.testing.assert_allclose(hf_logits(exported, ids), want, atol=1e-4)
  base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  assert np.abs(hf_logits(base, ids) - want).max() > 1e-3  # training changed the weights
  assert transformers.AutoTokenizer.from_pretrained(out).chat_template


def test_plot_overlays_runs(trained_run, tmp_path):
  _, workdir = trained_run
  out = str(tmp_path / "curves.png")
  res = subprocess.run(
    [sys.executable, "-m", "opid_jax.plot", workdir, workdir, f"--out={out}"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  res = subprocess.run(
    [sys.executable, "-m", "opid_jax.plot", str(tmp_path / "nope"), f"--out={out}"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ")
