"""PPO loss and gradient against NumPy; exact micro-batch accumulation; sharded updates equal single-device."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from update_check import run_update

from opid_jax.rl.loss import kl_penalty, ppo_loss

RNG = np.random.RandomState(0)
LOGP = RNG.uniform(-3, -0.1, (3, 5)).astype(np.float32)
OLD = (LOGP + RNG.uniform(-0.5, 0.5, (3, 5))).astype(np.float32)
REF = (LOGP + RNG.uniform(-0.3, 0.3, (3, 5))).astype(np.float32)
ADV = RNG.normal(size=(3, 5)).astype(np.float32) * 2
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], np.float32)


def numpy_ppo(logp, old, adv, mask, ref, eps_lo, eps_hi, dual, kl_coef):
  """Independent reference: loss and d loss / d logp, token-mean over valid tokens."""
  n = mask.sum()
  ratio = np.exp(logp - old)
  surr1, surr2 = -adv * ratio, -adv * np.clip(ratio, 1 - eps_lo, 1 + eps_hi)
  use_unclipped = surr1 >= surr2
  pg = np.maximum(surr1, surr2)
  d_pg = np.where(use_unclipped, -adv * ratio, np.where((ratio > 1 - eps_lo) & (ratio < 1 + eps_hi), -adv * ratio, 0.0))
  if dual > 0:
    capped = (adv < 0) & (pg > -adv * dual)
    pg = np.where(capped, -adv * dual, pg)
    d_pg = np.where(capped, 0.0, d_pg)
  kl = np.exp(ref - logp) - (ref - logp) - 1
  d_kl = -np.exp(ref - logp) + 1
  loss = ((pg + kl_coef * kl) * mask).sum() / n
  return loss, (d_pg + kl_coef * d_kl) * mask / n


@pytest.mark.parametrize("dual", [0.0, 1.5])
def test_ppo_loss_and_gradient_match_numpy(dual):
  kwargs = dict(clip_low=0.2, clip_high=0.28, dual_clip=dual, ref_logp=jnp.asarray(REF), kl_coef=0.05)
  fn = lambda lp: ppo_loss(lp, OLD, ADV, MASK, MASK.sum(), **kwargs)[0]
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(LOGP))
  want_loss, want_grad = numpy_ppo(LOGP, OLD, ADV, MASK, REF, 0.2, 0.28, dual, 0.05)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, atol=1e-6)


def test_kl_estimators_by_hand():
  lp, ref = jnp.array([-1.0]), jnp.array([-1.5])
  assert float(kl_penalty(lp, ref, "k1")[0]) == pytest.approx(0.5)
  assert float(kl_penalty(lp, ref, "k2")[0]) == pytest.approx(0.125)
  assert float(kl_penalty(lp, ref, "k3")[0]) == pytest.approx(np.exp(-0.5) + 0.5 - 1)
  assert float(kl_penalty(jnp.array([-20.0]), jnp.array([0.0]), "k3", clamp=10.0)[0]) == 10.0


def test_metrics_are_token_means():
  _, m = ppo_loss(jnp.asarray(OLD), OLD, ADV, MASK, MASK.sum(), entropy=jnp.ones_like(MASK) * 2.0)
  assert float(m["ppo/clip_frac"]) == 0.0 and float(m["ppo/approx_kl"]) == 0.0
  assert float(m["ppo/entropy"]) == pytest.approx(2.0)
  assert float(m["ppo/pg_loss"]) == pytest.approx(float(-(ADV * MASK).sum() / MASK.sum()), rel=1e-5)


def test_one_micro_batch_equals_four_accumulated():
  whole, m1 = run_update(micro_batch_size=16, sgd=True)
  parts, m4 = run_update(micro_batch_size=4, sgd=True)
  for name in whole:
    np.testing.assert_allclose(whole[name], parts[name], atol=1e-6, err_msg=name)
  for k in ("ppo/loss", "ppo/kl_ref", "ppo/entropy", "ppo/grad_norm"):
    assert m1[k] == pytest.approx(m4[k], rel=1e-5, abs=1e-7), k
  assert m1["ppo/grad_norm"] > 1e-3  # the gradients compared are not all zero


@pytest.mark.slow
def test_sharded_updates_equal_the_single_device_update(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  here = os.path.dirname(__file__)
  results = {}
  for name, sizes in [("single", ""), ("data8", "data=8"), ("fsdp8", "fsdp=8"), ("mixed", "data=2,fsdp=2,tensor=2")]:
    out = str(tmp_path / f"{name}.npz")
    args = [sys.executable, os.path.join(here, "update_check.py"), out] + ([sizes] if sizes else [])
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(here))
    assert res.returncode == 0, res.stderr[-3000:]
    results[name] = dict(np.load(out))
  base = results.pop("single")
  for name, got in results.items():
    for key in base:
      np.testing.assert_allclose(got[key], base[key], atol=1e-5, err_msg=f"{name}: {key}")


def test_length_bucketed_micro_batches_give_the_same_step():
  """Micro-batches padded to their own buckets (sorted by length) give the update of one stacked, fully padded
  mini-batch: the loss is a token sum over the mini-batch token count, so padding must not matter."""
  import optax
  from flax import nnx
  from tiny_models import tiny_model
  from update_check import fixed_samples

  from opid_jax.rl import batch as batch_lib, update

  samples = fixed_samples()
  samples[3].prompt_ids = list(range(1, 50))  # one long prompt: the stacked batch pads every row to it
  kwargs = dict(micro_batch_size=4, pad_id=0, prompt_buckets=(16, 32, 64), response_buckets=(8, 16), with_ref=True)
  stacked = batch_lib.stacked_micro_batches(samples, **kwargs)
  micros = batch_lib.length_sorted_micro_batches(samples, **kwargs)
  assert stacked["prompt_ids"].shape[2] == 64
  widths = [m["prompt_ids"].shape[1] for m in micros]
  assert widths == sorted(widths) and widths[-1] == 64 and widths[0] < 64
  assert sum(int(m["response_mask"].sum()) for m in micros) == int(stacked["response_mask"].sum())
  cfg = update.LossConfig(kl_coef=0.01, entropy_coef=0.001, dual_clip=3.0, chunk_size=8)
  graphdef, params = nnx.split(tiny_model(seed=0))
  tx = optax.sgd(1.0)  # the parameter change is the gradient itself
  copy = lambda: jax.tree.map(lambda x: x.copy(), params)  # noqa: E731 (steps donate their state)
  one, m_one = update.train_step(update.init_train_state(copy(), tx), stacked, graphdef=graphdef, tx=tx, cfg=cfg)
  many, m_many = update.train_step_micro_batches(
    update.init_train_state(copy(), tx), micros, graphdef=graphdef, tx=tx, cfg=cfg
  )
  for key in ("ppo/loss", "ppo/pg_loss", "ppo/kl_ref", "ppo/entropy", "ppo/grad_norm", "ppo/tokens"):
    np.testing.assert_allclose(float(m_many[key]), float(m_one[key]), rtol=2e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  assert int(many.step) == 1
