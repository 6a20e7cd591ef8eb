"""The comparison rows' math (GiGPO step groups, RLSD, SDAR, Skill-SD) against numbers worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opid_jax.rl import algorithms as alg
from opid_jax.skills.analyzer import discounted_returns

E = math.exp


def sigmoid(x: float) -> float:
  return 1.0 / (1.0 + E(-x))


# ---------------------------------------------------------------- GiGPO

# Two task groups, interleaved. Group 0: anchor "A" three times (returns 1.0, 0.0, 0.5), "B" and "C" once each.
# Group 1: anchor "A" twice (0.0, 0.4) -- the same string as group 0's "A" but a different step group -- and
# anchor "B" twice with equal returns (0.3, 0.3).
ANCHORS = ["A", "A", "B", "A", "B", "A", "A", "B", "C"]
GROUPS = [0, 1, 0, 0, 1, 0, 1, 1, 0]
RETURNS = [1.0, 0.0, 0.5, 0.0, 0.3, 0.5, 0.4, 0.3, 0.9]


def test_step_groups_mean_norm():
  got = alg.step_group_advantages(ANCHORS, GROUPS, RETURNS, norm="mean")
  # (0, "A"): [1.0, 0.0, 0.5], mean 0.5 -> [0.5, -0.5, 0.0]
  # (1, "A"): [0.0, 0.4], mean 0.2 -> [-0.2, 0.2]   (pooled with group 0 the mean would be 1.9 / 5 = 0.38)
  # (0, "B"), (0, "C"): singletons -> 0; (1, "B"): equal returns -> 0
  want = [0.5, -0.2, 0.0, -0.5, 0.0, 0.0, 0.2, 0.0, 0.0]
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert got.dtype == np.float64 and got.shape == (9,)


def test_step_groups_mean_std_norm():
  eps = 1e-6
  got = alg.step_group_advantages(ANCHORS, GROUPS, RETURNS, norm="mean_std", eps=eps)
  # (0, "A"): sample var = (0.25 + 0.25 + 0) / 2 = 0.25, std 0.5
  # (1, "A"): sample var = (0.04 + 0.04) / 1 = 0.08, std sqrt(0.08) = 0.2828427
  s0, s1 = 0.5 + eps, math.sqrt(0.08) + eps
  want = [0.5 / s0, -0.2 / s1, 0.0, -0.5 / s0, 0.0, 0.0, 0.2 / s1, 0.0, 0.0]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert abs(got[1] + 1 / math.sqrt(2)) < 1e-5


def test_step_groups_string_group_ids_and_errors():
  got = alg.step_group_advantages(["s", "s"], ["uid-a", "uid-a"], [2.0, 0.0])
  np.testing.assert_allclose(got, [1.0, -1.0])
  np.testing.assert_allclose(alg.step_group_advantages(["s", "s"], ["uid-a", "uid-b"], [2.0, 0.0]), [0.0, 0.0])
  assert alg.step_group_advantages([], [], []).shape == (0,)
  with pytest.raises(ValueError):
    alg.step_group_advantages(["s"], [0], [1.0], norm="std")
  with pytest.raises(ValueError):
    alg.step_group_advantages(["s", "t"], [0], [1.0, 2.0])


def test_discounted_step_returns():
  # terminal reward 10, gamma 0.95: G2 = 10, G1 = 0.95 * 10 = 9.5, G0 = 0.95 * 9.5 = 9.025
  np.testing.assert_allclose(alg.discounted_step_returns([0.0, 0.0, 10.0], 0.95), [9.025, 9.5, 10.0], rtol=1e-12)
  # with an intermediate reward: G3 = 10, G2 = 9.5, G1 = 1 + 0.95 * 9.5 = 10.025, G0 = 0.95 * 10.025 = 9.52375
  got = alg.discounted_step_returns([0.0, 1.0, 0.0, 10.0], 0.95)
  np.testing.assert_allclose(got, [9.52375, 10.025, 9.5, 10.0], rtol=1e-12)
  np.testing.assert_allclose(got, discounted_returns([0.0, 1.0, 0.0, 10.0], 0.95))
  assert alg.discounted_step_returns([], 0.95).shape == (0,)


# ---------------------------------------------------------------- RLSD

# d = l_T - l_S = [0.1, 0.5, -1.0]
L_T = np.array([-1.0, -0.5, -2.0])
L_S = np.array([-1.1, -1.0, -1.0])


def test_rlsd_positive_advantage_clips_both_sides():
  got = alg.rlsd_advantages(2.0, L_T, L_S, lam=0.5, eps=0.2)
  # exp(+d) = [1.1051709, 1.6487213, 0.3678794] -> clip to [0.8, 1.2] -> [1.1051709, 1.2, 0.8]
  # A_t = 2 * (0.5 + 0.5 * w) = 1 + w
  want = [1 + E(0.1), 1 + 1.2, 1 + 0.8]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(got, [2.1051709, 2.2, 1.8], rtol=1e-7)


def test_rlsd_negative_advantage_flips_the_weight():
  got = alg.rlsd_advantages(-1.0, L_T, L_S, lam=0.5, eps=0.2)
  # exp(-d) = [0.9048374, 0.6065307, 2.7182818] -> clip -> [0.9048374, 0.8, 1.2]; A_t = -(0.5 + 0.5 * w)
  want = [-(0.5 + 0.5 * E(-0.1)), -(0.5 + 0.4), -(0.5 + 0.6)]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(got, [-0.9524187, -0.9, -1.1], rtol=1e-7)


def test_rlsd_edge_weights():
  np.testing.assert_allclose(alg.rlsd_advantages(0.0, L_T, L_S, lam=0.5, eps=0.2), [0.0, 0.0, 0.0])
  np.testing.assert_allclose(alg.rlsd_advantages(3.0, L_T, L_S, lam=0.0, eps=0.2), [3.0, 3.0, 3.0])
  np.testing.assert_allclose(alg.rlsd_advantages(1.0, L_T, L_S, lam=1.0, eps=0.2), [E(0.1), 1.2, 0.8], rtol=1e-12)


def test_rlsd_lambda_decays_linearly():
  assert alg.rlsd_lambda(0, 0.5, 100) == 0.5
  assert alg.rlsd_lambda(25, 0.5, 100) == pytest.approx(0.375)
  assert alg.rlsd_lambda(50, 0.5, 100) == pytest.approx(0.25)
  assert alg.rlsd_lambda(100, 0.5, 100) == 0.0
  assert alg.rlsd_lambda(150, 0.5, 100) == 0.0
  assert alg.rlsd_lambda(1000, 0.5, 0) == 0.5  # warmdown 0: no decay
  with pytest.raises(ValueError):
    alg.rlsd_lambda(0, 0.5, -1)
  with pytest.raises(ValueError):
    alg.rlsd_lambda(-1, 0.5, 100)


# ---------------------------------------------------------------- SDAR

# Row 0: d = l_T - l_S = [0.5, -0.5, 0.0]. Row 1: d = 0.2 on its one valid token; the padded tokens hold junk.
SD_T = np.array([[-0.5, -2.0, -1.0], [-0.2, 30.0, -30.0]], np.float32)
SD_S = np.array([[-1.0, -1.5, -1.0], [-0.4, -30.0, 30.0]], np.float32)
SD_MASK = np.array([[1, 1, 1], [1, 0, 0]], np.float32)


def test_sdar_gate_and_loss_beta_5():
  loss, m = alg.sdar_loss(jnp.asarray(SD_T), jnp.asarray(SD_S), jnp.asarray(SD_MASK), 4.0, beta=5.0)
  g = [sigmoid(2.5), sigmoid(-2.5), 0.5, sigmoid(1.0)]  # [0.9241418, 0.0758582, 0.5, 0.7310586]
  want_loss = (g[0] * 0.5 + g[1] * -0.5 + g[2] * 0.0 + g[3] * 0.2) / 4  # (0.4620709 - 0.0379291 + 0.1462117) / 4
  assert float(loss) == pytest.approx(want_loss, rel=1e-6)
  assert float(loss) == pytest.approx(0.1425884, rel=1e-6)
  assert float(m["sdar/loss"]) == pytest.approx(want_loss, rel=1e-6)
  assert float(m["sdar/gate_mean"]) == pytest.approx(sum(g) / 4, rel=1e-6)  # (1.5 + 0.7310586) / 4 = 0.5577647
  assert float(m["sdar/gap_mean"]) == pytest.approx(0.2 / 4, rel=1e-5)
  assert float(m["sdar/gate_open_frac"]) == pytest.approx(2 / 4)


def test_sdar_beta_0_is_a_constant_half_gate():
  loss, m = alg.sdar_loss(jnp.asarray(SD_T), jnp.asarray(SD_S), jnp.asarray(SD_MASK), 4.0, beta=0.0)
  assert float(m["sdar/gate_mean"]) == pytest.approx(0.5)
  assert float(loss) == pytest.approx(0.5 * (0.5 - 0.5 + 0.0 + 0.2) / 4, rel=1e-5)  # 0.025


def test_sdar_under_jit():
  fn = jax.jit(alg.sdar_loss, static_argnames="beta")
  loss, _ = fn(jnp.asarray(SD_T), jnp.asarray(SD_S), jnp.asarray(SD_MASK), jnp.float32(4.0), beta=5.0)
  assert float(loss) == pytest.approx(0.1425884, rel=1e-6)


# ---------------------------------------------------------------- Skill-SD


def test_skill_sd_k3_and_rho():
  l_s = jnp.array([[-1.0, -2.0], [-0.7, 5.0]])
  l_t = jnp.array([[-1.5, -1.0], [-0.7, -5.0]])
  l_old = jnp.array([[-1.2, -2.0], [-0.9, 0.0]])
  mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  loss, m = alg.skill_sd_loss(l_s, l_t, l_old, mask, 3.0)
  # u = l_S - l_T = [0.5, -1.0, 0.0]; k3 = exp(-u) - 1 + u
  k3 = [E(-0.5) - 0.5, E(1.0) - 2.0, 0.0]  # [0.1065307, 0.7182818, 0.0]
  # rho = exp(l_S - l_old) = [exp(0.2), exp(0), exp(0.2)]
  rho = [E(0.2), 1.0, E(0.2)]  # [1.2214028, 1.0, 1.2214028]
  want = sum(r * k for r, k in zip(rho, k3)) / 3  # (0.1301168 + 0.7182818) / 3 = 0.2827996
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(loss) == pytest.approx(0.2827996, rel=1e-6)
  assert float(m["skill_sd/k3_mean"]) == pytest.approx(sum(k3) / 3, rel=1e-6)
  assert float(m["skill_sd/rho_mean"]) == pytest.approx(sum(rho) / 3, rel=1e-6)
  assert float(m["skill_sd/rho_clamp_frac"]) == 0.0


def test_skill_sd_clamps():
  # token 0: -u = l_T - l_S = -5 - (-30) = 25 > 20 -> k3 = exp(20) - 1 - 25 (not exp(25) - 26); rho = exp(0) = 1
  # token 1: l_S - l_old = -0.5 - (-15) = 14.5 > 10 -> rho = exp(10) (not exp(14.5)); u = 0.5 -> k3 = exp(-0.5) - 0.5
  l_s = jnp.array([[-30.0, -0.5]])
  l_t = jnp.array([[-5.0, -1.0]])
  l_old = jnp.array([[-30.0, -15.0]])
  mask = jnp.ones((1, 2))
  k3 = [E(20.0) - 26.0, E(-0.5) - 0.5]  # [485165169.4097903, 0.1065307]
  rho = [1.0, E(10.0)]  # [1.0, 22026.4657948]
  loss, m = alg.skill_sd_loss(l_s, l_t, l_old, mask, 2.0)
  assert float(loss) == pytest.approx((k3[0] + rho[1] * k3[1]) / 2, rel=1e-6)
  assert float(m["skill_sd/k3_mean"]) == pytest.approx(sum(k3) / 2, rel=1e-6)
  assert float(m["skill_sd/rho_mean"]) == pytest.approx(sum(rho) / 2, rel=1e-6)
  assert float(m["skill_sd/rho_clamp_frac"]) == pytest.approx(0.5)
  assert np.isfinite(float(loss))


# ---------------------------------------------------------------- gradients (float64)


def central_fd(f, x: np.ndarray, h: float) -> np.ndarray:
  """d f / d x by central differences, one element at a time."""
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (f(up) - f(down)) / (2 * h)
  return grad


RNG = np.random.default_rng(0)
G_T = RNG.uniform(-2.0, -0.1, (2, 3))
G_S = RNG.uniform(-2.0, -0.1, (2, 3))
G_OLD = G_S + RNG.uniform(-0.3, 0.3, (2, 3))
G_MASK = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
G_COUNT = 5.0


def test_sdar_gradients_match_finite_differences_with_the_gate_frozen():
  with jax.enable_x64(True):
    beta = 5.0
    loss_fn = lambda t, s: alg.sdar_loss(t, s, jnp.asarray(G_MASK), G_COUNT, beta=beta)[0]
    g_t, g_s = jax.grad(loss_fn, argnums=(0, 1))(jnp.asarray(G_T), jnp.asarray(G_S))
    gate = 1.0 / (1.0 + np.exp(-beta * (G_T - G_S)))
    # the gate is a constant for the gradient: L(t, s) = sum(gate * (t - s) * mask) / count with gate held fixed
    frozen = lambda t, s: float(np.sum(gate * (t - s) * G_MASK) / G_COUNT)
    np.testing.assert_allclose(g_t, central_fd(lambda t: frozen(t, G_S), G_T, 1e-6), atol=1e-8)
    np.testing.assert_allclose(g_s, central_fd(lambda s: frozen(G_T, s), G_S, 1e-6), atol=1e-8)
    # closed form: dL/dl_S = -g / count, dL/dl_T = +g / count on valid tokens, 0 on padding
    np.testing.assert_allclose(g_s, -gate * G_MASK / G_COUNT, rtol=1e-12)
    np.testing.assert_allclose(g_t, gate * G_MASK / G_COUNT, rtol=1e-12)
    # the true derivative of the loss value (gate included) differs: the gate really gets no gradient
    full = central_fd(lambda s: float(loss_fn(jnp.asarray(G_T), jnp.asarray(s))), G_S, 1e-6)
    assert np.max(np.abs(full - np.asarray(g_s))) > 1e-3
    # beta = 0: gate 0.5, gradient -0.5 / count per valid token
    g0 = jax.grad(lambda s: alg.sdar_loss(jnp.asarray(G_T), s, jnp.asarray(G_MASK), G_COUNT, beta=0.0)[0])
    np.testing.assert_allclose(g0(jnp.asarray(G_S)), -0.5 * G_MASK / G_COUNT, rtol=1e-12)


def test_skill_sd_gradients_match_finite_differences():
  with jax.enable_x64(True):
    mask = jnp.asarray(G_MASK)
    loss_fn = lambda s, t, o: alg.skill_sd_loss(s, t, o, mask, G_COUNT)[0]
    args = (jnp.asarray(G_S), jnp.asarray(G_T), jnp.asarray(G_OLD))
    g_s, g_t, g_old = jax.grad(loss_fn, argnums=(0, 1, 2))(*args)
    # l_T: rho does not depend on it, so the FD of the loss value itself is the gradient
    fd_t = central_fd(lambda t: float(loss_fn(args[0], jnp.asarray(t), args[2])), G_T, 1e-6)
    np.testing.assert_allclose(g_t, fd_t, atol=1e-8)
    # l_S: rho is a constant for the gradient, so compare with the FD of rho_fixed * k3(l_S)
    rho = np.exp(G_S - G_OLD)
    frozen = lambda s: float(np.sum(rho * (np.exp(G_T - s) - 1 + s - G_T) * G_MASK) / G_COUNT)
    np.testing.assert_allclose(g_s, central_fd(frozen, G_S, 1e-6), atol=1e-8)
    # closed form: dL/dl_S = rho * (1 - exp(l_T - l_S)) / count = -dL/dl_T
    np.testing.assert_allclose(g_s, rho * (1 - np.exp(G_T - G_S)) * G_MASK / G_COUNT, rtol=1e-10)
    np.testing.assert_allclose(g_t, -np.asarray(g_s), rtol=1e-12)
    # l_old only enters through the stop-gradient rho
    np.testing.assert_array_equal(g_old, np.zeros((2, 3)))
    fd_old = central_fd(lambda o: float(loss_fn(args[0], args[1], jnp.asarray(o))), G_OLD, 1e-6)
    assert np.max(np.abs(fd_old)) > 1e-3
    # the true derivative in l_S (rho included) differs from the gradient used
    fd_s_full = central_fd(lambda s: float(loss_fn(jnp.asarray(s), args[1], args[2])), G_S, 1e-6)
    assert np.max(np.abs(fd_s_full - np.asarray(g_s))) > 1e-3


def test_skill_sd_gradient_inside_the_clamps():
  with jax.enable_x64(True):
    # -u = 25 > 20: exp term frozen, dk3/dl_S = 1, dk3/dl_T = -1; rho = exp(min(14.5, 10)) is still a constant
    l_s, l_t, l_old = jnp.array([[-30.0]]), jnp.array([[-5.0]]), jnp.array([[-44.5]])
    g_s, g_t, g_old = jax.grad(lambda s, t, o: alg.skill_sd_loss(s, t, o, jnp.ones((1, 1)), 2.0)[0], argnums=(0, 1, 2))(
      l_s, l_t, l_old
    )
    assert float(g_s[0, 0]) == pytest.approx(E(10.0) / 2, rel=1e-12)
    assert float(g_t[0, 0]) == pytest.approx(-E(10.0) / 2, rel=1e-12)
    assert float(g_old[0, 0]) == 0.0


# ---------------------------------------------------------------- micro-batch additivity


def test_micro_batches_sum_to_the_mini_batch():
  rng = np.random.default_rng(1)
  t = rng.uniform(-3.0, -0.1, (4, 3)).astype(np.float32)
  s = rng.uniform(-3.0, -0.1, (4, 3)).astype(np.float32)
  old = (s + rng.uniform(-0.5, 0.5, (4, 3))).astype(np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32)
  count = float(mask.sum())  # 9 tokens in the mini-batch
  parts = (slice(0, 2), slice(2, 4))

  whole, wm = alg.sdar_loss(jnp.asarray(t), jnp.asarray(s), jnp.asarray(mask), count, beta=5.0)
  pieces = [alg.sdar_loss(jnp.asarray(t[p]), jnp.asarray(s[p]), jnp.asarray(mask[p]), count, beta=5.0) for p in parts]
  assert float(pieces[0][0] + pieces[1][0]) == pytest.approx(float(whole), rel=1e-6)
  for key in wm:
    assert float(pieces[0][1][key] + pieces[1][1][key]) == pytest.approx(float(wm[key]), rel=1e-5, abs=1e-7)

  whole, wm = alg.skill_sd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(old), jnp.asarray(mask), count)
  pieces = [
    alg.skill_sd_loss(jnp.asarray(s[p]), jnp.asarray(t[p]), jnp.asarray(old[p]), jnp.asarray(mask[p]), count)
    for p in parts
  ]
  assert float(pieces[0][0] + pieces[1][0]) == pytest.approx(float(whole), rel=1e-6)
  for key in wm:
    assert float(pieces[0][1][key] + pieces[1][1][key]) == pytest.approx(float(wm[key]), rel=1e-5, abs=1e-7)
