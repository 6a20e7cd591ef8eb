"""Per-layer remat changes memory, not numbers: loss and gradients equal the plain model's."""

import jax
import numpy as np
from flax import nnx
from tiny_models import tiny_model
from update_check import fixed_samples

from opid_jax.rl import batch as batch_lib, update


def grads_of(model):
  graphdef, params = nnx.split(model)
  batch = batch_lib.minibatches(
    fixed_samples(8),
    mini_batch_size=8,
    micro_batch_size=4,
    seed=0,
    pad_id=0,
    prompt_buckets=(32,),
    response_buckets=(16,),
    with_ref=True,
  )[0]
  grads, metrics = jax.jit(
    lambda p, b: update.accumulate_gradients(p, graphdef, b, update.LossConfig(kl_coef=0.01, chunk_size=8))
  )(params, batch)
  return jax.tree.leaves(grads), metrics


def test_remat_matches_the_plain_model():
  plain = tiny_model(seed=1)
  remat = tiny_model(seed=1, remat=True)
  assert remat.cfg.remat and not plain.cfg.remat
  g1, m1 = grads_of(plain)
  g2, m2 = grads_of(remat)
  np.testing.assert_allclose(float(m1["ppo/loss"]), float(m2["ppo/loss"]), rtol=1e-6)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, atol=1e-6)
