"""Tests of deadjax.metrics against independent NumPy references written here.

Every reference below is a direct, loop-based transcription of the definition
(no scikit-learn), computed in float64. The JAX functions are always called
under ``jax.jit`` (``J`` below); the property tests check ``jax.vmap`` over a
stacked population and invariance to the order of the probe inputs.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import metrics as M


def J(fn, **static):
    """``fn`` with keyword arguments bound, under jax.jit."""
    return jax.jit(functools.partial(fn, **static))


def relu_dphi(z):
    """ReLU derivative as JAX defines it (relu'(0) = 0), element-wise."""
    g = jax.vmap(jax.grad(jax.nn.relu))
    z = jnp.asarray(z, jnp.float32)
    return g(z.reshape(-1)).reshape(z.shape)


def tanh_dphi(z):
    return 1.0 - jnp.tanh(jnp.asarray(z, jnp.float32)) ** 2


# ---------------------------------------------------------------------------
# NumPy references (definitions, by loops)
# ---------------------------------------------------------------------------

def ref_dead(dphi, max_derivative, threshold):
    dphi = np.asarray(dphi, np.float64)
    n, u = dphi.shape
    out = []
    for j in range(u):
        out.append(all(abs(dphi[i, j]) <= threshold * max_derivative for i in range(n)))
    return np.array(out)


def ref_dormant(h, tau):
    h = np.asarray(h, np.float64)
    n, u = h.shape
    a = [sum(abs(h[i, j]) for i in range(n)) / n for j in range(u)]
    m = sum(a) / u
    s = [x / m if m > 0 else 0.0 for x in a]
    return np.array([x <= tau for x in s])


def ref_saturation(dphi, max_derivative, threshold):
    dphi = np.asarray(dphi, np.float64)
    count = 0
    for v in dphi.reshape(-1):
        count += abs(v) < threshold * max_derivative
    return count / dphi.size


def ref_q(z):
    z = np.asarray(z, np.float64)
    n, u = z.shape
    return sum(sum(z[a, j] ** 2 for j in range(u)) / u for a in range(n)) / n


def ref_c(z):
    z = np.asarray(z, np.float64)
    n = z.shape[0]
    total, pairs = 0.0, 0
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            na, nb = np.linalg.norm(z[a]), np.linalg.norm(z[b])
            total += 0.0 if na == 0 or nb == 0 else float(z[a] @ z[b]) / (na * nb)
            pairs += 1
    return total / pairs


def ref_jacobian_sv(kernel, dphi):
    w = np.asarray(kernel, np.float64)
    vals = []
    for d in np.asarray(dphi, np.float64):
        jac = np.diag(d) @ w.T                # d h_l / d h_{l-1}, (U_out, U_in)
        vals.append(np.linalg.svd(jac, compute_uv=False).mean())
    return float(np.mean(vals))


def ref_effective_rank(h):
    s = np.linalg.svd(np.asarray(h, np.float64), compute_uv=False)
    s = s[s > s.max() * max(h.shape) * np.finfo(np.float32).eps]
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def ref_f1_macro(pred, labels):
    classes = sorted(set(int(c) for c in labels) | set(int(c) for c in pred))
    scores = []
    for c in classes:
        tp = sum(1 for p, y in zip(pred, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(pred, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(pred, labels) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def ref_auc_binary(scores, positive):
    pos = [s for s, t in zip(scores, positive) if t]
    neg = [s for s, t in zip(scores, positive) if not t]
    if not pos or not neg:
        return float("nan")
    total = 0.0
    for sp in pos:
        for sn in neg:
            total += 1.0 if sp > sn else (0.5 if sp == sn else 0.0)
    return total / (len(pos) * len(neg))


def ref_auc_ovr(probs, labels, num_classes):
    aucs = []
    for c in range(num_classes):
        t = [int(y) == c for y in labels]
        if any(t) and not all(t):
            aucs.append(ref_auc_binary(list(probs[:, c]), t))
    return float(np.mean(aucs)) if aucs else float("nan")


def ref_auc_by_ranks(scores, positive):
    """Mann-Whitney via average ranks (float64), for large N."""
    s = np.asarray(scores, np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = np.asarray(positive, bool)
    p, q = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - p * (p + 1) / 2.0) / (p * q)


def softmax_np(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# Classification and regression
# ---------------------------------------------------------------------------

def test_cross_entropy_and_accuracy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, size=50)
    p = softmax_np(logits)
    ce = -np.mean([math.log(p[i, labels[i]]) for i in range(50)])
    acc = np.mean([int(np.argmax(logits[i])) == labels[i] for i in range(50)])
    np.testing.assert_allclose(J(M.cross_entropy)(logits, labels), ce, rtol=1e-5)
    np.testing.assert_allclose(J(M.accuracy)(logits, labels), acc, rtol=0, atol=1e-7)


def test_f1_macro_against_loops_with_ties_and_absent_class():
    rng = np.random.default_rng(1)
    C = 6
    labels = rng.integers(0, 4, size=80)            # classes 4, 5 absent from labels
    logits = rng.integers(-2, 3, size=(80, C)).astype(np.float32)   # many ties
    logits[:5, 4] = 10.0                            # class 4 predicted, never a label
    logits[:, 5] = -10.0                            # class 5 neither label nor prediction
    pred = np.argmax(logits, axis=1)                # first max, as jnp.argmax
    assert 4 in pred and 5 not in pred and 5 not in labels
    got = J(M.f1_macro, num_classes=C)(logits, labels)
    np.testing.assert_allclose(got, ref_f1_macro(pred, labels), rtol=1e-6)
    # perfect predictions -> 1; one class only present -> its F1
    perfect = np.eye(C, dtype=np.float32)[labels] * 5
    np.testing.assert_allclose(J(M.f1_macro, num_classes=C)(perfect, labels), 1.0)


def test_f1_macro_hand_case():
    # labels 0 0 1 1, predictions 0 1 1 2:
    # class 0: TP1 FP0 FN1 -> 2/3; class 1: TP1 FP1 FN1 -> 1/2; class 2: TP0 FP1 -> 0
    labels = np.array([0, 0, 1, 1])
    logits = np.eye(4, dtype=np.float32)[[0, 1, 1, 2]]
    got = J(M.f1_macro, num_classes=4)(logits, labels)
    np.testing.assert_allclose(got, (2 / 3 + 1 / 2 + 0) / 3, rtol=1e-6)


def test_auc_binary_hand_cases():
    f = jax.jit(M.roc_auc_binary)
    s = np.array([0.1, 0.4, 0.35, 0.8], np.float32)
    t = np.array([0, 0, 1, 1], bool)
    np.testing.assert_allclose(f(s, t), 0.75)          # the classic example
    np.testing.assert_allclose(f(s, ~t), 0.25)
    np.testing.assert_allclose(f(np.ones(4, np.float32), t), 0.5)   # all tied
    assert np.isnan(f(s, np.zeros(4, bool)))
    assert np.isnan(f(np.array([0.1, np.nan, 0.3, 0.2], np.float32), t))


def test_auc_ovr_against_pairwise_with_ties_and_absent_class():
    rng = np.random.default_rng(2)
    C, N = 5, 60
    # Ties come from repeated rows only (identical rows give bit-identical
    # probabilities on every backend). Distinct rows whose probabilities are
    # merely mathematically equal (e.g. permuted integer logits) can differ in
    # the last bit between an eager softmax and the fused one under jit, so
    # they would not make a backend-independent test.
    logits = rng.normal(size=(N, C)).astype(np.float32)
    logits[N // 2:] = logits[:N // 2]
    logits[N // 2:N // 2 + 10] = logits[:10][::-1]      # a different tie structure per class
    labels = rng.integers(0, C - 1, size=N)                         # class C-1 absent
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
    got = J(M.auc_roc_ovr, num_classes=C)(logits, labels)
    np.testing.assert_allclose(got, ref_auc_ovr(probs, labels, C), rtol=1e-6)

    cont = rng.normal(size=(N, C)).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(cont), axis=-1), np.float64)
    labels = rng.integers(0, C, size=N)
    np.testing.assert_allclose(J(M.auc_roc_ovr, num_classes=C)(cont, labels),
                               ref_auc_ovr(probs, labels, C), rtol=1e-6)


def test_auc_ovr_undefined_and_perfect():
    f = J(M.auc_roc_ovr, num_classes=3)
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert np.isnan(f(np.zeros((6, 3), np.float32), np.zeros(6, int)))   # one class only
    np.testing.assert_allclose(f(np.eye(3, dtype=np.float32)[labels] * 4, labels), 1.0)
    assert np.isnan(f(np.full((6, 3), np.nan, np.float32), labels))


def test_auc_large_n_float_branch():
    rng = np.random.default_rng(3)
    n = 70_000                                         # above the exact-integer branch
    s = np.round(rng.normal(size=n), 2).astype(np.float32)      # many ties
    t = rng.random(n) < 0.3 + 0.2 * (s > 0)
    got = jax.jit(M.roc_auc_binary)(s, t)
    np.testing.assert_allclose(got, ref_auc_by_ranks(s, t), rtol=2e-5)


def test_mse_and_r2():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(30, 3))
    yhat = y + 0.3 * rng.normal(size=(30, 3))
    y[:, 2] = 0.1                        # constant target column: R2 = 0 (not predicted)
    ref = []
    for k in range(3):
        ss_res = sum((y[i, k] - yhat[i, k]) ** 2 for i in range(30))
        mu = math.fsum(y[:, k]) / 30     # correctly rounded: a constant column's own value
        ss_tot = sum((y[i, k] - mu) ** 2 for i in range(30))
        ref.append(1 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0))
    y32, yh32 = y.astype(np.float32), yhat.astype(np.float32)
    np.testing.assert_allclose(J(M.r2)(yh32, y32), np.mean(ref), rtol=1e-5)
    np.testing.assert_allclose(J(M.mse)(yh32, y32), np.mean((y - yhat) ** 2), rtol=1e-5)
    np.testing.assert_allclose(J(M.r2)(y32[:, 0], y32[:, 0]), 1.0)
    np.testing.assert_allclose(J(M.r2)(y32[:, 2], y32[:, 2]), 1.0)   # constant, exact


# ---------------------------------------------------------------------------
# Dead, dormant, saturated
# ---------------------------------------------------------------------------

# columns: 0 negative everywhere, 1 exactly zero everywhere, 2 alive on exactly
# one input, 3 positive everywhere, 4 mixed, 5 negative or exactly zero
Z_RELU = np.array([
    [-1.0, 0.0, -2.0, 1.0, -0.5, 0.0],
    [-0.3, 0.0, -1.0, 2.0, 0.7, -1.0],
    [-2.0, 0.0, 0.4, 0.1, -0.1, -0.2],
    [-0.1, 0.0, -0.5, 3.0, 0.2, 0.0],
    [-4.0, 0.0, -0.01, 0.5, -3.0, -5.0],
], np.float32)


def test_dead_relu_hand_made():
    dphi = relu_dphi(Z_RELU)
    assert float(dphi[0, 1]) == 0.0                   # relu'(0) = 0 in JAX
    got = np.asarray(J(M.dead_units)(dphi, 1.0))
    expected = np.array([True, True, False, False, False, True])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, ref_dead(dphi, 1.0, 0.0))
    np.testing.assert_allclose(J(M.layer_fraction)(got), 0.5)


def test_negative_units_hand_made_and_relu_coincidence():
    """z <= 0 on every input (NumPy: np.all(z <= 0, axis=0)); for ReLU exactly
    the dead units (relu'(0) = 0), exact zeros included; NaN is not negative."""
    got = np.asarray(J(M.negative_units)(Z_RELU))
    np.testing.assert_array_equal(got, [True, True, False, False, False, True])
    np.testing.assert_array_equal(got, np.all(Z_RELU.astype(np.float64) <= 0, axis=0))
    np.testing.assert_array_equal(got, np.asarray(M.dead_units(relu_dphi(Z_RELU), 1.0)))
    rng = np.random.default_rng(3)
    z = rng.normal(size=(7, 40)).astype(np.float32) - 1.5
    z[:, :5] = np.where(rng.random((7, 5)) < 0.5, 0.0, -np.abs(z[:, :5]))
    want = np.all(z.astype(np.float64) <= 0, axis=0)
    assert 5 <= want.sum() < 40
    np.testing.assert_array_equal(np.asarray(M.negative_units(z)), want)
    np.testing.assert_array_equal(np.asarray(M.dead_units(relu_dphi(z), 1.0)), want)
    z[0, 0] = np.nan
    assert not bool(M.negative_units(z)[0])


def test_grad_norm_ratio_is_total_for_finite_norms():
    """x/y for y > 0, +inf for x/0 with x > 0, 0 flagged undefined for 0/0,
    the IEEE quotient (unflagged) for non-finite norms."""
    first = np.array([3.0, 0.0, 2.0, 0.0, np.nan, np.inf, 1.0], np.float32)
    last = np.array([1.5, 4.0, 0.0, 0.0, 1.0, 1.0, np.nan], np.float32)
    ratio, undefined = jax.jit(M.grad_norm_ratio)(first, last)
    np.testing.assert_array_equal(ratio, [2.0, 0.0, np.inf, 0.0, np.nan, np.inf, np.nan])
    np.testing.assert_array_equal(undefined, [0, 0, 0, 1, 0, 0, 0])
    assert ratio.dtype == np.float32 and undefined.dtype == np.float32


def test_dead_tanh_threshold():
    z = np.array([[6.0, 0.5, -7.0],
                  [-8.0, 9.0, -6.5],
                  [10.0, 7.0, -9.0]], np.float32)
    dphi = tanh_dphi(z)
    f = jax.jit(M.dead_units)
    np.testing.assert_array_equal(f(dphi, 1.0, 0.0), [False, False, False])
    np.testing.assert_array_equal(f(dphi, 1.0, 1e-3), [True, False, True])
    np.testing.assert_array_equal(f(dphi, 1.0, 1e-3), ref_dead(dphi, 1.0, 1e-3))
    # the threshold is relative to max_derivative (sigmoid: 1/4)
    np.testing.assert_array_equal(f(dphi * 0.25, 0.25, 1e-3), [True, False, True])


def test_dormant_constructed():
    # mean |h_j| = [0, 0.02, 0.08, 3.9] -> layer mean 1 -> s = the same numbers
    h = np.array([
        [0.0, 0.04, -0.16, 3.9],
        [0.0, -0.04, 0.16, 3.9],
        [0.0, 0.0, 0.0, 3.9],
        [0.0, 0.0, 0.0, 3.9],
    ], np.float32)
    f = jax.jit(M.dormant_units)
    np.testing.assert_allclose(jax.jit(M.dormant_scores)(h), [0, 0.02, 0.08, 3.9], rtol=1e-6)
    for tau, expected in [(0.0, [1, 0, 0, 0]), (0.025, [1, 1, 0, 0]), (0.1, [1, 1, 1, 0])]:
        np.testing.assert_array_equal(f(h, tau), np.array(expected, bool))
        np.testing.assert_array_equal(f(h, tau), ref_dormant(h, tau))
    # an all-zero layer: every unit dormant, for every tau >= 0
    np.testing.assert_array_equal(f(np.zeros((3, 4), np.float32), 0.0), [True] * 4)
    # random layer vs reference
    rng = np.random.default_rng(5)
    hr = np.maximum(rng.normal(size=(40, 16)) - 1.0, 0).astype(np.float32)
    for tau in (0.0, 0.025, 0.1, 0.5):
        np.testing.assert_array_equal(f(hr, tau), ref_dormant(hr, tau))


def test_saturation_tanh():
    f = J(M.saturation_fraction)
    np.testing.assert_allclose(f(tanh_dphi(np.full((4, 3), 10.0)), 1.0, 0.01), 1.0)
    np.testing.assert_allclose(f(tanh_dphi(np.zeros((4, 3))), 1.0, 0.01), 0.0)
    z = np.array([[10.0, 0.0, -12.0, 0.5],
                  [1.0, -9.0, 2.0, 0.0]], np.float32)   # 3 of 8 pairs with |z| > 3
    dphi = tanh_dphi(z)
    np.testing.assert_allclose(f(dphi, 1.0, 0.01), 3 / 8)
    np.testing.assert_allclose(f(dphi, 1.0, 0.01), ref_saturation(dphi, 1.0, 0.01))
    rng = np.random.default_rng(6)
    dphi = tanh_dphi(rng.normal(size=(50, 20)) * 3)
    np.testing.assert_allclose(f(dphi, 1.0, 0.05), ref_saturation(dphi, 1.0, 0.05), rtol=1e-6)


def test_persistent_revived_pooled_masked_mean():
    now = np.array([1, 1, 0, 0, 1], bool)
    before = np.array([1, 0, 1, 0, 1], bool)
    np.testing.assert_allclose(jax.jit(M.persistent)(now, before), 2 / 5)
    np.testing.assert_allclose(jax.jit(M.revived)(now, before), 1 / 5)
    np.testing.assert_allclose(M.pooled_fraction([now, np.array([0, 0, 0], bool)]), 3 / 8)
    np.testing.assert_allclose(jax.jit(M.masked_mean)(np.array([1.0, np.nan, 3.0]),
                                                      np.array([1, 0, 1], bool)), 2.0)
    assert np.isnan(jax.jit(M.masked_mean)(np.ones(3), np.zeros(3, bool)))


# ---------------------------------------------------------------------------
# Signal propagation
# ---------------------------------------------------------------------------

def test_preact_stats_against_numpy():
    rng = np.random.default_rng(7)
    z = (rng.normal(size=(37, 11)) * 2 + 0.3).astype(np.float32)
    got = J(M.preact_stats)(z)
    flat = z.astype(np.float64).reshape(-1)
    np.testing.assert_allclose(got["mean"], np.mean(flat), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["std"], np.std(flat), rtol=1e-5)
    for q in (15, 50, 85):
        np.testing.assert_allclose(got[f"p{q}"], np.percentile(flat, q), rtol=1e-5, atol=1e-6)
    # interpolation between two order statistics: [0, 1, 2, 3] -> p15 = 0.45
    small = J(M.preact_stats)(np.array([[3.0, 0.0], [1.0, 2.0]], np.float32))
    np.testing.assert_allclose([small["p15"], small["p50"], small["p85"]], [0.45, 1.5, 2.55],
                               rtol=1e-6)


def test_q_and_c():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(9, 7)).astype(np.float32)
    z[3] = 0.0                                          # a zero row: cos = 0 with it
    np.testing.assert_allclose(J(M.q_value)(z), ref_q(z), rtol=1e-5)
    np.testing.assert_allclose(J(M.c_value)(z), ref_c(z), rtol=1e-4, atol=1e-6)
    same = np.tile(rng.normal(size=(1, 7)), (6, 1)).astype(np.float32)
    np.testing.assert_allclose(J(M.c_value)(same), 1.0, rtol=1e-5)
    np.testing.assert_allclose(J(M.c_value)(same * np.arange(1, 7)[:, None]), 1.0, rtol=1e-5)
    orth = np.eye(5, 8, dtype=np.float32) * 3.0
    np.testing.assert_allclose(J(M.c_value)(orth), 0.0, atol=1e-7)
    anti = np.array([[1.0, 2.0], [-1.0, -2.0]], np.float32)
    np.testing.assert_allclose(J(M.c_value)(anti), -1.0, rtol=1e-6)
    assert np.isnan(J(M.c_value)(z[:1]))
    assert np.isfinite(J(M.c_value)(np.zeros((4, 3), np.float32)))
    np.testing.assert_allclose(J(M.q_value)(np.full((3, 4), 2.0, np.float32)), 4.0)


# ---------------------------------------------------------------------------
# Jacobian and rank
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("u_in,u_out", [(8, 8), (12, 5), (4, 9)])
def test_jacobian_mean_singular_value(u_in, u_out):
    rng = np.random.default_rng(9)
    w = (rng.normal(size=(u_in, u_out)) / np.sqrt(u_in)).astype(np.float32)
    dphi = tanh_dphi(rng.normal(size=(6, u_out)) * 1.5)
    got = J(M.jacobian_mean_singular_value)(w, dphi)
    np.testing.assert_allclose(got, ref_jacobian_sv(w, dphi), rtol=1e-5)


def test_jacobian_orthogonal_linear_is_one():
    q = np.linalg.qr(np.random.default_rng(10).normal(size=(6, 6)))[0].astype(np.float32)
    np.testing.assert_allclose(J(M.jacobian_mean_singular_value)(q, np.ones((3, 6))), 1.0,
                               rtol=1e-5)
    # half the units with phi' = 0: half the singular values vanish
    d = np.array([[1, 1, 1, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(J(M.jacobian_mean_singular_value)(q, d), 0.5, rtol=1e-5)


@pytest.mark.parametrize("a,b", [(16, 16), (9, 21), (21, 9), (40, 24)])
def test_singular_values_against_numpy_svd(a, b):
    rng = np.random.default_rng(15)
    m = rng.normal(size=(a, b)) * np.logspace(0, -5, b)     # widely spread spectrum
    m = m.astype(np.float32)
    ref = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    got = np.asarray(jax.jit(M.singular_values)(m))
    assert got.shape == (min(a, b),)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * ref[0])
    h = (rng.normal(size=(50, 12)) * np.logspace(0, -5, 12)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(M.representation_singular_values)(h),
                               np.linalg.svd(h.astype(np.float64), compute_uv=False),
                               rtol=0, atol=2e-6 * np.linalg.norm(h, 2))


@pytest.mark.parametrize("n,u,k", [(64, 16, 1), (64, 16, 3), (1024, 128, 5), (8, 32, 4),
                                   (20, 20, 20)])
def test_effective_rank_equal_singular_values(n, u, k):
    rng = np.random.default_rng(11)
    a = np.linalg.qr(rng.normal(size=(n, k)))[0]
    b = np.linalg.qr(rng.normal(size=(u, k)))[0]
    h = (2.5 * a @ b.T).astype(np.float32)               # k singular values equal to 2.5
    np.testing.assert_allclose(J(M.effective_rank)(h), k, rtol=1e-4)


def test_effective_rank_random_and_zero():
    rng = np.random.default_rng(12)
    h = np.maximum(rng.normal(size=(100, 24)) @ rng.normal(size=(24, 24)), 0).astype(np.float32)
    np.testing.assert_allclose(J(M.effective_rank)(h), ref_effective_rank(h), rtol=1e-5)
    h2 = (rng.normal(size=(10, 30)) * np.logspace(0, -3, 30)).astype(np.float32)
    np.testing.assert_allclose(J(M.effective_rank)(h2), ref_effective_rank(h2), rtol=1e-5)
    # An all-zero layer: 1, the convention of loss-of-plasticity's
    # compute_effective_rank (lop/utils/miscellaneous.py), re-implemented here:
    # p = sigma / sum|sigma| (0/0 for the zero matrix), entropy over p > 0 only.
    def lop_effective_rank(m):
        sv = np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)
        with np.errstate(invalid="ignore"):
            p = sv / np.sum(np.abs(sv))
        return float(np.exp(-sum(q * np.log(q) for q in p if q > 0)))

    zero = np.zeros((5, 4), np.float32)
    assert lop_effective_rank(zero) == 1.0
    assert float(J(M.effective_rank)(zero)) == 1.0
    np.testing.assert_allclose(J(M.effective_rank)(h), lop_effective_rank(h), rtol=1e-5)
    one = np.zeros((5, 4), np.float32); one[2, 1] = 3.0      # rank one: also 1
    assert float(J(M.effective_rank)(one)) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------
# Output and histogram
# ---------------------------------------------------------------------------

def test_output_constant():
    f = jax.jit(M.output_constant)
    const = np.tile(np.array([[0.3, -1.2, 5.0]], np.float32), (7, 1))
    assert bool(f(const))
    assert bool(f(const + np.float32(1e-7) * np.arange(7)[:, None].astype(np.float32)))
    varied = const.copy()
    varied[4, 1] += 1e-3
    assert not bool(f(varied))
    assert not bool(f(np.random.default_rng(13).normal(size=(7, 3))))
    nan = const.copy()
    nan[2, 0] = np.nan
    assert not bool(f(nan))


@pytest.mark.parametrize("num_bins", [1, 2, 7, 41])
def test_histogram_against_numpy(num_bins):
    rng = np.random.default_rng(14)
    v = rng.normal(size=(33, 9)).astype(np.float32)
    v[0, 0] = v[1, 1]                                   # a duplicate value
    lo, hi, counts = J(M.histogram, num_bins=num_bins)(v)
    assert counts.shape == (num_bins,)
    assert float(lo) == v.min() and float(hi) == v.max()
    edges = np.asarray(jnp.linspace(lo, hi, num_bins + 1))
    np.testing.assert_array_equal(counts, np.histogram(v, bins=edges)[0])
    np.testing.assert_array_equal(counts, np.histogram(v, bins=num_bins)[0])
    assert int(counts.sum()) == v.size


def test_percentiles_against_numpy():
    """Order statistics through int32 keys: signs, zeros, infinities, ties."""
    rng = np.random.default_rng(5)
    v = rng.normal(size=1000).astype(np.float32) * 10.0 ** rng.integers(-3, 4, 1000)
    v[:6] = [0.0, -0.0, np.inf, -np.inf, 1.5, 1.5]
    qs = [0.0, 15.0, 50.0, 85.0, 99.9, 100.0]
    with np.errstate(invalid="ignore"):  # numpy: -inf - -inf at q = 0, as here
        want = np.percentile(v, qs)
    # float32 interpolation against numpy's float64: within one or two ulps
    np.testing.assert_allclose(J(M.percentiles, qs=qs)(v), want, rtol=3e-7)
    w = rng.normal(size=(37, 11)).astype(np.float32)
    np.testing.assert_allclose(J(M.percentiles, qs=qs)(w), np.percentile(w, qs), rtol=1e-6,
                               atol=1e-7)
    assert np.isnan(J(M.percentiles, qs=qs)(np.array([1.0, np.nan], np.float32))).all()


@pytest.mark.slow
def test_percentiles_select_equals_sort(monkeypatch):
    """From SELECT_FROM entries on, float32 percentiles select the order
    statistics (two counting passes) instead of sorting: the same values,
    bit for bit, with ties, signed zeros, infinities and a constant array."""
    rng = np.random.default_rng(6)
    n = M.SELECT_FROM + 37
    qs = [0.0, 15.0, 50.0, 85.0, 99.9, 100.0]
    spread = rng.normal(size=n).astype(np.float32) * 10.0 ** rng.integers(-3, 4, n)
    spread[:4] = [0.0, -0.0, np.inf, -np.inf]
    ties = np.round(rng.normal(size=n) * 3).astype(np.float32)
    zeros = np.where(np.arange(n) % 7 == 0, 0.0, -0.0).astype(np.float32)
    constant = np.full(n, 1.5, np.float32)
    cases = (spread, ties, zeros, constant, rng.normal(size=(64, 65)).astype(np.float32))
    selected = [np.asarray(jax.jit(lambda w: M.percentiles(w, qs))(v)) for v in cases]
    monkeypatch.setattr(M, "SELECT_FROM", 10 ** 9)
    for v, got in zip(cases, selected):
        np.testing.assert_array_equal(got, np.asarray(jax.jit(lambda w: M.percentiles(w, qs))(v)))
        # the order statistics themselves, against a sort
        pos = np.asarray(qs) / 100.0 * (v.size - 1)
        ranks = np.concatenate([np.floor(pos), np.minimum(np.floor(pos) + 1, v.size - 1)])
        keys = M._sortable_keys(jnp.asarray(v.reshape(-1)))
        ranks = jnp.asarray(ranks, jnp.int32)
        np.testing.assert_array_equal(np.asarray(M._select_keys(keys, ranks)),
                                      np.asarray(jnp.sort(keys)[ranks]))


def test_histogram_values_on_edges():
    """Values exactly on the edges (where the arithmetic bin can round the
    wrong way) fall in the bins ``numpy.histogram`` puts them in."""
    rng = np.random.default_rng(3)
    lo, hi, bins = np.float32(-1.3), np.float32(2.7), 41
    edges = np.asarray(jnp.linspace(lo, hi, bins + 1))
    v = np.concatenate([edges, np.nextafter(edges, np.float32(-np.inf)),
                        np.nextafter(edges, np.float32(np.inf)),
                        rng.uniform(lo, hi, 500).astype(np.float32)]).astype(np.float32)
    v = np.clip(v, lo, hi)
    got_lo, got_hi, counts = J(M.histogram, num_bins=bins)(v)
    assert (float(got_lo), float(got_hi)) == (float(lo), float(hi))
    np.testing.assert_array_equal(counts, np.histogram(v, bins=edges)[0])


def test_histogram_constant_and_nonfinite():
    f = J(M.histogram, num_bins=5)
    lo, hi, counts = f(np.full(6, 2.0, np.float32))
    np.testing.assert_array_equal(counts, np.histogram(np.full(6, 2.0), bins=5)[0])
    np.testing.assert_array_equal(counts, [0, 0, 6, 0, 0])
    np.testing.assert_allclose([lo, hi], [1.5, 2.5])
    v = np.array([0.0, 1.0, np.nan, np.inf, 0.5, -np.inf], np.float32)
    lo, hi, counts = f(v)
    assert (float(lo), float(hi)) == (0.0, 1.0)
    np.testing.assert_array_equal(counts, np.histogram(v[np.isfinite(v)], bins=5)[0])
    lo, hi, counts = f(np.full(3, np.nan, np.float32))
    assert np.isnan(lo) and np.isnan(hi) and int(counts.sum()) == 0


# ---------------------------------------------------------------------------
# Properties: vmap over members equals per-member calls; row-order invariance
# ---------------------------------------------------------------------------

C = 4


def _member_arrays(seed):
    """The inputs of every metric for one member."""
    rng = np.random.default_rng(seed)
    n, u = 24, 10
    z = (rng.normal(size=(n, u)) * 2).astype(np.float32)
    z[:, 0] = -np.abs(z[:, 0]) - 0.1                    # a dead ReLU unit
    logits = rng.normal(size=(n, C)).astype(np.float32)
    logits[n // 2:] = logits[:n // 2]                   # exact ties (see the AUC test)
    return dict(
        logits=logits,
        labels=rng.integers(0, C, size=n).astype(np.int32),
        z=z,
        h=np.maximum(z, 0),
        dphi=np.asarray(relu_dphi(z)),
        tdphi=np.asarray(tanh_dphi(z)),
        kernel=rng.normal(size=(7, u)).astype(np.float32),
        out=rng.normal(size=(n, 3)).astype(np.float32),
        target=rng.normal(size=(n, 3)).astype(np.float32),
    )


# name -> function of one member's arrays (returns an array or a pytree)
METRICS = {
    "cross_entropy": lambda a: M.cross_entropy(a["logits"], a["labels"]),
    "accuracy": lambda a: M.accuracy(a["logits"], a["labels"]),
    "f1_macro": lambda a: M.f1_macro(a["logits"], a["labels"], C),
    "auc_roc_ovr": lambda a: M.auc_roc_ovr(a["logits"], a["labels"], C),
    "mse": lambda a: M.mse(a["out"], a["target"]),
    "r2": lambda a: M.r2(a["out"], a["target"]),
    "dead_units": lambda a: M.dead_units(a["dphi"], 1.0),
    "dead_units_thr": lambda a: M.dead_units(a["tdphi"], 1.0, 0.05),
    "negative_units": lambda a: M.negative_units(a["z"]),
    "dormant_units": lambda a: M.dormant_units(a["h"], 0.1),
    "dormant_scores": lambda a: M.dormant_scores(a["h"]),
    "saturation": lambda a: M.saturation_fraction(a["tdphi"], 1.0, 0.01),
    "preact_stats": lambda a: M.preact_stats(a["z"]),
    "q": lambda a: M.q_value(a["z"]),
    "c": lambda a: M.c_value(a["z"]),
    "jacobian_sv": lambda a: M.jacobian_mean_singular_value(a["kernel"], a["tdphi"][:5]),
    "effective_rank": lambda a: M.effective_rank(a["h"]),
    "output_constant": lambda a: M.output_constant(a["out"]),
    "histogram": lambda a: M.histogram(a["z"], 9),
    "persistent": lambda a: M.persistent(a["dphi"][0] == 0, a["dphi"][1] == 0),
    "revived": lambda a: M.revived(a["dphi"][0] == 0, a["dphi"][1] == 0),
    "layer_fraction": lambda a: M.layer_fraction(M.dead_units(a["dphi"], 1.0)),
}

ROW_ARRAYS = ("logits", "labels", "z", "h", "dphi", "tdphi", "out", "target")
ORDER_DEPENDENT = {"persistent", "revived", "jacobian_sv"}   # use specific rows by design


def _close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_vmap_over_members_equals_per_member(name):
    fn = METRICS[name]
    members = [_member_arrays(s) for s in range(3)]
    stacked = {k: np.stack([m[k] for m in members]) for k in members[0]}
    batched = jax.jit(jax.vmap(fn))(stacked)
    single = jax.jit(fn)
    for i, m in enumerate(members):
        _close(jax.tree_util.tree_map(lambda x: x[i], batched), single(m))


@pytest.mark.parametrize("name", sorted(set(METRICS) - ORDER_DEPENDENT))
def test_invariant_to_probe_order(name):
    fn = jax.jit(METRICS[name])
    a = _member_arrays(42)
    perm = np.random.default_rng(0).permutation(a["z"].shape[0])
    b = {k: (v[perm] if k in ROW_ARRAYS else v) for k, v in a.items()}
    _close(fn(a), fn(b))


# ---------------------------------------------------------------------------
# hessian_top_eigenvalue: Lanczos on Hessian-vector products
# ---------------------------------------------------------------------------

def _quadratic(a):
    """``0.5 pᵀ A p`` over a two-leaf pytree (a (3, 4) and a (k,) leaf), whose
    Hessian is exactly ``A`` (symmetric, order 12 + k)."""
    a = jnp.asarray(a)

    def loss(p):
        flat = jnp.concatenate([p["w"].reshape(-1), p["b"]])
        return 0.5 * flat @ (a @ flat)

    n = a.shape[0]
    params = {"w": jnp.zeros((3, 4), a.dtype), "b": jnp.zeros((n - 12,), a.dtype)}
    return loss, params


def _spectrum_matrix(eigenvalues, seed):
    """``Q diag(eigenvalues) Qᵀ`` for a random orthogonal Q, float32."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return (q * np.asarray(eigenvalues)) @ q.T, q


def _v0(n, seed):
    v = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    return {"w": jnp.asarray(v[:12].reshape(3, 4)), "b": jnp.asarray(v[12:])}


@pytest.mark.parametrize("case", ["positive", "negative_dominates", "all_negative"])
def test_hessian_top_eigenvalue_matches_eigvalsh(case):
    """The largest (not the largest-magnitude) eigenvalue of A, for a spectrum
    whose dominant eigenvalue is the largest, one whose dominant eigenvalue
    is negative, and one entirely negative; the eigenvector is the top one
    (|cos| ~ 1) and of unit norm. With krylov_dim = 3 the same answer comes
    through restarts (more products than one cycle holds)."""
    rng = np.random.default_rng(1)
    rest = rng.uniform(-1.0, 1.0, size=18)
    top = {"positive": [5.0, -3.0], "negative_dominates": [2.0, -6.0],
           "all_negative": [-0.5, -6.0]}[case]
    values = np.concatenate([top, rest if case != "all_negative" else -1.0 - np.abs(rest)])
    a, q = _spectrum_matrix(values, 0)
    loss, params = _quadratic(a.astype(np.float32))
    lam, vec, used = jax.jit(lambda p, v: M.hessian_top_eigenvalue(loss, p, v, 2000, 1e-5))(
        params, _v0(20, 3))
    expected = np.linalg.eigvalsh(a)[-1]
    np.testing.assert_allclose(lam, expected, rtol=1e-4)
    assert 1 < int(used) < 2000
    flat = np.concatenate([np.asarray(vec["w"]).reshape(-1), np.asarray(vec["b"])])
    np.testing.assert_allclose(np.linalg.norm(flat), 1.0, rtol=1e-5)
    top_vector = q[:, np.argmax(values)]
    assert abs(flat @ top_vector) > 0.999
    lam3, _, used3 = jax.jit(lambda p, v: M.hessian_top_eigenvalue(
        loss, p, v, 2000, 1e-5, krylov_dim=3))(params, _v0(20, 3))
    np.testing.assert_allclose(lam3, expected, rtol=1e-4)
    assert 3 < int(used3) < 2000


def test_hessian_top_eigenvalue_stops_at_the_tolerance_and_warm_starts():
    """The stopping rule is ||Hy - theta y|| <= tol |theta| at the returned
    Ritz pair (checked here in float64 with the matrix), so the value is
    within tol |theta| of an eigenvalue; started again from the returned
    vector it stops after one product; a budget too small to converge
    returns after exactly num_iters products a Ritz value, which is below
    lambda_max (interlacing)."""
    values = np.concatenate([[4.0, 3.6], np.linspace(-1.0, 1.0, 18)])
    a, _ = _spectrum_matrix(values, 5)
    a32 = a.astype(np.float32)
    loss, params = _quadratic(a32)
    run = jax.jit(lambda p, v, k: M.hessian_top_eigenvalue(loss, p, v, k, 1e-4))
    lam, vec, used = run(params, _v0(20, 1), 5000)
    flat = np.concatenate([np.asarray(vec["w"]).reshape(-1), np.asarray(vec["b"])]).astype(
        np.float64)
    residual = np.linalg.norm(a32.astype(np.float64) @ flat - float(lam) * flat)
    assert residual <= 1.01e-4 * abs(float(lam))
    assert abs(float(lam) - 4.0) <= 1e-4 * 4.0
    lam2, _, used2 = run(params, vec, 5000)
    assert int(used2) == 1 and int(used) > 1
    np.testing.assert_allclose(lam2, lam, rtol=1e-6)
    short, _, used3 = run(params, _v0(20, 1), 2)
    assert int(used3) == 2 and float(short) < 4.0


@pytest.mark.slow
def test_hessian_top_eigenvalue_of_a_network_loss_matches_the_full_hessian():
    """A small tanh network's cross-entropy (not a quadratic): the full float64
    Hessian's top eigenvalue (jax.hessian, numpy eigvalsh)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
              "b1": jnp.asarray(rng.normal(size=5) * 0.1, jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}

    def loss(p, xx=x):
        logits = jnp.tanh(xx @ p["w1"] + p["b1"]) @ p["w2"]
        return M.cross_entropy(logits, y)

    v0 = jax.tree.map(lambda a: jnp.ones_like(a), params)
    lam, _, _ = jax.jit(lambda p, v: M.hessian_top_eigenvalue(loss, p, v, 3000, 1e-5))(params, v0)
    from jax.flatten_util import ravel_pytree
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        flat, unravel = ravel_pytree(p64)
        h = np.asarray(jax.hessian(lambda f: loss(unravel(f), jnp.asarray(x, jnp.float64)))(flat))
    np.testing.assert_allclose(lam, np.linalg.eigvalsh((h + h.T) / 2)[-1], rtol=1e-4)


def test_hessian_top_eigenvalue_vmaps_and_stops_on_non_finite():
    """vmapped over three matrices (one with NaN), each member's result equals
    its own call: the NaN member returns NaN after one product and the
    others their eigenvalues, with their own iteration counts."""
    mats = [_spectrum_matrix(np.concatenate([[3.0 + s], np.linspace(-1, 1, 19)]), s)[0]
            for s in range(3)]
    mats[1] = mats[1].copy()
    mats[1][0, 0] = np.nan
    stacked = jnp.asarray(np.stack(mats).astype(np.float32))

    def one(a):
        loss, params = _quadratic(a)
        return M.hessian_top_eigenvalue(loss, params, _v0(20, 2), 500, 1e-4)

    lam, _, used = jax.jit(jax.vmap(one))(stacked)
    for i, a in enumerate(mats):
        lam_i, _, used_i = jax.jit(one)(jnp.asarray(a.astype(np.float32)))
        if i == 1:
            assert np.isnan(lam[i]) and int(used[i]) == 1
            continue
        np.testing.assert_allclose(lam[i], lam_i, rtol=1e-5)
        assert abs(int(used[i]) - int(used_i)) <= 1
        np.testing.assert_allclose(lam[i], 3.0 + i, rtol=1e-4)
