"""Token-level clipped PPO with optional dual clip, a KL penalty to a reference, and an entropy bonus.

Every term is a *sum* over valid tokens divided by the token count of the whole mini-batch, so summing the
losses (and gradients) of micro-batches gives exactly the mini-batch token-mean.
"""

from __future__ import annotations

import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp, ref_logp, estimator: str = "k3", clamp: float = 10.0):
  """Per-token KL(pi || ref) estimates from samples of pi (Schulman's k1/k2/k3)."""
  log_ratio = ref_logp - logp
  if estimator == "k1":
    kl = -log_ratio
  elif estimator == "k2":
    kl = 0.5 * jnp.square(log_ratio)
  elif estimator == "k3":
    kl = jnp.exp(log_ratio) - log_ratio - 1.0
  else:
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
  return jnp.clip(kl, -clamp, clamp)


def ppo_loss(
  logp,
  old_logp,
  advantages,
  mask,
  token_count,
  *,
  clip_low: float = 0.2,
  clip_high: float = 0.2,
  dual_clip: float = 0.0,
  ref_logp=None,
  kl_coef: float = 0.0,
  kl_estimator: str = "k3",
  kl_clamp: float = 10.0,
  entropy=None,
  entropy_coef: float = 0.0,
  pg_weight: float = 1.0,
):
  """Returns (loss, metric sums). All token arrays are [batch, length]; `token_count` is the number of valid
  tokens in the whole mini-batch. Metric sums are divided by the same count (so they accumulate too).
  `pg_weight` scales the policy-gradient term alone (0: a distillation-only objective keeps the KL and entropy)."""
  mask = mask.astype(jnp.float32)
  denom = jnp.maximum(token_count, 1.0)
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  pg = jnp.maximum(unclipped, clipped)
  if dual_clip > 0:
    pg = jnp.where(advantages < 0, jnp.minimum(pg, -advantages * dual_clip), pg)
  loss_tokens = pg_weight * pg if pg_weight != 1.0 else pg
  metrics = {
    "ppo/pg_loss": jnp.sum(pg * mask) / denom,
    "ppo/clip_frac": jnp.sum((clipped > unclipped) * mask) / denom,
    "ppo/approx_kl": jnp.sum(0.5 * jnp.square(log_ratio) * mask) / denom,
  }
  if ref_logp is not None and kl_coef > 0:
    kl = kl_penalty(logp, ref_logp, kl_estimator, kl_clamp)
    loss_tokens = loss_tokens + kl_coef * kl
    metrics["ppo/kl_ref"] = jnp.sum(kl * mask) / denom
  if entropy is not None:
    metrics["ppo/entropy"] = jnp.sum(entropy * mask) / denom
    if entropy_coef > 0:
      loss_tokens = loss_tokens - entropy_coef * entropy
  loss = jnp.sum(loss_tokens * mask) / denom
  metrics["ppo/loss"] = loss
  return loss, metrics


def nll_loss(logp, mask, token_count):
  """Behaviour cloning: the mean negative log-likelihood of the masked (response) tokens, as a sum over this
  micro-batch divided by the mini-batch token count (so micro-batches accumulate exactly like `ppo_loss`)."""
  mask = mask.astype(jnp.float32)
  loss = -jnp.sum(logp * mask) / jnp.maximum(token_count, 1.0)
  return loss, {"sft/nll": loss, "ppo/loss": loss}
