"""The math of the paper's comparison rows (RLSD, SDAR / OPSD / GRPO+OPSD, Skill-SD) and of GiGPO's step level.

Notation per step sample (docs/baselines.md): `l_S` = per-token log-probs of the sampled response under the student
prompt (no skill), `l_T` = the same tokens under the teacher prompt (skill in context), `l_old` = the sampling
policy's log-probs, `A_seq` = the sample's GRPO group advantage, `sg` = stop-gradient.

Host side (numpy): GiGPO step-group advantages, discounted step returns, RLSD token advantages and its lambda schedule.
Update side (JAX): the SDAR and Skill-SD loss terms. Like `opid_jax.rl.loss.ppo_loss`, each is a *sum* over valid
tokens divided by the token count of the whole mini-batch, so micro-batch losses (and gradients) add up to the
mini-batch token-mean. Each returns (loss, metrics) with metrics normalised the same way. The loss is the unscaled
term L; the caller adds `coef * L` to the policy loss.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from opid_jax.rl.advantages import ADV_NORMS
from opid_jax.skills.analyzer import discounted_returns

SKILL_SD_EXP_CLAMP = 20.0  # k3 uses exp(min(l_T - l_S, 20))
SKILL_SD_RATIO_CLAMP = 10.0  # rho = exp(min(l_S - l_old, 10))


# ---------------------------------------------------------------- host side (numpy)


def discounted_step_returns(rewards_per_step: Sequence[float], gamma: float) -> np.ndarray:
  """G_t = sum_{u >= t} gamma^(u - t) r_u for every step t of one trajectory (float64).

  Same recursion as `opid_jax.skills.analyzer.discounted_returns` (which this calls), returned as an array.
  """
  return np.asarray(discounted_returns(list(rewards_per_step), gamma), np.float64).reshape(-1)


def step_group_advantages(
  anchors: Sequence[str],
  group_ids,
  step_returns,
  *,
  norm: str = "mean",
  eps: float = 1e-6,
) -> np.ndarray:
  """GiGPO's step-level advantage A_step, one value per step sample.

  Within one task group (`group_ids`), the step samples whose anchor observation string is identical (exact match)
  form a step group; the same anchor in a different task group is a different step group. A_step is the sample's
  discounted return G_t normalised within its step group: norm="mean" centres only (GiGPO's `mean_norm`, its default
  and the setting of OPID's reference scripts); norm="mean_std" also divides by the sample std (ddof=1) + eps.
  A singleton step group, or one whose returns are all equal, gets 0. GiGPO's total advantage is
  A = A_ep + w * A_step, with A_ep from `advantages.group_advantages` (w = 1.0 in GiGPO).
  """
  if norm not in ADV_NORMS:
    raise ValueError(f"norm must be one of {ADV_NORMS}, got {norm!r}")
  returns = np.asarray(step_returns, np.float64).reshape(-1)
  group_ids = np.asarray(group_ids).reshape(-1)
  if not len(anchors) == len(group_ids) == len(returns):
    raise ValueError(f"lengths differ: {len(anchors)} anchors, {len(group_ids)} group ids, {len(returns)} returns")
  members: dict[tuple, list[int]] = {}
  for i, (g, anchor) in enumerate(zip(group_ids.tolist(), anchors)):
    members.setdefault((g, anchor), []).append(i)
  adv = np.zeros_like(returns)
  for idx in members.values():
    values = returns[idx]
    if len(values) < 2 or np.ptp(values) == 0:
      continue
    centred = values - values.mean()
    adv[idx] = centred / (values.std(ddof=1) + eps) if norm == "mean_std" else centred
  return adv


def rlsd_lambda(step: int, lam0: float, warmdown_steps: int) -> float:
  """RLSD's mixing weight: lam0 * (1 - step / warmdown_steps) while step < warmdown_steps, then 0.

  `step` counts completed updates (0 at the first update). warmdown_steps = 0 disables the decay: lam0 for every
  step (RLSD without its weight, i.e. plain GRPO, is lam0 = 0 instead). The SDAR repository evaluates this with its
  1-based global step (its first update already sees lam0 * (1 - 1/warmdown)); pass step + 1 to reproduce that.
  """
  if warmdown_steps < 0:
    raise ValueError(f"warmdown_steps must be >= 0, got {warmdown_steps}")
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  if warmdown_steps == 0:
    return float(lam0)
  return float(lam0) * max(0.0, 1.0 - step / warmdown_steps)


def rlsd_advantages(
  a_seq: float, l_teacher: np.ndarray, l_student: np.ndarray, *, lam: float, eps: float
) -> np.ndarray:
  """RLSD's per-token advantage for one sample (float64, no gradient: a host-side constant):

    A_t = A_seq * ((1 - lam) + lam * clip(exp(sign(A_seq) * (l_T - l_S)), 1 - eps, 1 + eps)).

  For A_seq > 0 the tokens the skill makes more likely (l_T > l_S) get up to (1 + eps) of the credit; for A_seq < 0
  the tokens the skill makes less likely get up to (1 + eps) of the blame. A_seq = 0 gives zeros. The SDAR
  repository uses the sampling policy's log-probs (l_old) as l_S here.
  """
  l_teacher = np.asarray(l_teacher, np.float64)
  l_student = np.asarray(l_student, np.float64)
  weight = np.clip(np.exp(np.sign(a_seq) * (l_teacher - l_student)), 1.0 - eps, 1.0 + eps)
  return a_seq * ((1.0 - lam) + lam * weight)


# ---------------------------------------------------------------- update side (JAX)


def _masked_mean(x, valid, denom):
  """sum(x over valid tokens) / denom; `where` (not a product) so junk in padded positions cannot leak NaNs."""
  return jnp.sum(jnp.where(valid, x, 0.0)) / denom


def sdar_loss(l_teacher, l_student, mask, token_count, *, beta: float):
  """SDAR's gated distillation term (OPSD: the same with no PG term; GRPO+OPSD: beta = 0, gate constant 0.5).

    d_t = l_T - sg(l_S),  g_t = sg(sigmoid(beta * d_t)),  L = token-mean(g_t * (l_T - l_S)).

  Implemented exactly as written in docs/baselines.md: the gate carries no gradient; in L both l_T and l_S are
  differentiable. dL/dl_S = -g_t / token_count, so minimising coef * L raises the student's log-prob of each sampled
  token, most where the skill-conditioned teacher likes it more than the student does (g_t -> 1 for d_t >> 0).
  dL/dl_T = +g_t / token_count: if l_T comes from a forward pass that carries gradient, minimising L also LOWERS the
  teacher-context log-prob. The SDAR-style reference actor computes the teacher log-probs under no_grad and detaches
  them, i.e. gradient through l_S only; pass l_T as a constant (from a no-grad scoring pass, or wrapped in
  `jax.lax.stop_gradient`) to match it. The value of L is the same either way.

  Arrays are [batch, T]; `mask` marks the tokens the term covers; `token_count` is their number in the whole
  mini-batch. Returns (L, metrics): sdar/loss, sdar/gate_mean, sdar/gap_mean (mean d_t), sdar/gate_open_frac
  (share of tokens with g_t > 0.5), all sums / token_count.
  """
  valid = mask > 0
  denom = jnp.maximum(token_count, 1.0)
  gap = l_teacher - jax.lax.stop_gradient(l_student)
  gate = jax.lax.stop_gradient(jax.nn.sigmoid(beta * gap))
  loss = _masked_mean(gate * (l_teacher - l_student), valid, denom)
  metrics = {
    "sdar/loss": loss,
    "sdar/gate_mean": _masked_mean(gate, valid, denom),
    "sdar/gap_mean": jax.lax.stop_gradient(_masked_mean(gap, valid, denom)),
    "sdar/gate_open_frac": _masked_mean((gate > 0.5).astype(gate.dtype), valid, denom),
  }
  return loss, metrics


def skill_sd_loss(l_student, l_teacher, l_old, mask, token_count):
  """Skill-SD's importance-weighted reverse-KL term:

    u = l_S - l_T,  k3 = exp(min(-u, 20)) - 1 + u,  rho = sg(exp(min(l_S - l_old, 10))),  L = token-mean(rho * k3).

  k3 is Schulman's estimator of KL(student || teacher) from tokens the student sampled (>= 0 without the clamp, 0 at
  u = 0). Gradient: dL/dl_S = rho * (1 - exp(-u)) / token_count, dL/dl_T = -dL/dl_S; minimising pulls l_S toward l_T
  (and, if l_T carries gradient, l_T toward l_S; the SDAR repository's teacher log-probs come from a no-grad pass,
  so pass l_T as a constant to match it). Where -u > 20 the clamp freezes the exponential, leaving dk3/du = 1 there.
  rho and l_old carry no gradient.

  Arrays are [batch, T]; `token_count` counts the covered tokens of the whole mini-batch. Returns (L, metrics):
  skill_sd/loss, skill_sd/k3_mean, skill_sd/rho_mean, skill_sd/rho_clamp_frac (share with l_S - l_old > 10), all
  sums / token_count.
  """
  valid = mask > 0
  denom = jnp.maximum(token_count, 1.0)
  u = l_student - l_teacher
  k3 = jnp.exp(jnp.minimum(-u, SKILL_SD_EXP_CLAMP)) - 1.0 + u
  log_ratio = jax.lax.stop_gradient(l_student - l_old)
  rho = jnp.exp(jnp.minimum(log_ratio, SKILL_SD_RATIO_CLAMP))
  loss = _masked_mean(rho * k3, valid, denom)
  metrics = {
    "skill_sd/loss": loss,
    "skill_sd/k3_mean": jax.lax.stop_gradient(_masked_mean(k3, valid, denom)),
    "skill_sd/rho_mean": _masked_mean(rho, valid, denom),
    "skill_sd/rho_clamp_frac": _masked_mean((log_ratio > SKILL_SD_RATIO_CLAMP).astype(rho.dtype), valid, denom),
  }
  return loss, metrics
