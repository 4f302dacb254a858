"""deadjax.theory: closed forms, independent quadrature, Monte Carlo of random networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from deadjax import activations, theory as T

SMOOTHISH = ["tanh", "sigmoid", "softsign", "softplus", "elu", "selu", "gelu", "silu"]


def _np_phi(name, which="fn"):
    act = activations.get(name)
    f = act.fn if which == "fn" else act.derivative

    def call(u):
        with jax.enable_x64(True):
            return np.asarray(f(jnp.asarray(u, jnp.float64), None))
    return call


def _quad_gauss(f, q):
    """E[f(u)], u ~ N(0, q), by scipy adaptive quadrature split at 0 (independent reference)."""
    s = math.sqrt(q)
    g = lambda z: float(f(np.array([s * z]))[0]) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sum(integrate.quad(g, a, b, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
               for a, b in ((-40, 0), (0, 40)))


def _arccos_relu(c):
    """E[relu(z1) relu(z2)] and E[relu'(z1) relu'(z2)] for unit-variance, correlation c (Cho & Saul 2009)."""
    th = math.acos(c)
    return (math.sin(th) + (math.pi - th) * c) / (2 * math.pi), (math.pi - th) / (2 * math.pi)


# --- quadrature ---------------------------------------------------------------

def test_gaussian_expectation_moments_and_kinks():
    q = np.array([1e-10, 1e-3, 1.0, 7.5, 1e6])
    np.testing.assert_allclose(T.gaussian_expectation(lambda u: u ** 2, q), q, rtol=1e-12)
    np.testing.assert_allclose(T.gaussian_expectation(lambda u: u ** 4, q), 3 * q ** 2, rtol=1e-12)
    np.testing.assert_allclose(T.gaussian_expectation(lambda u: np.maximum(u, 0) ** 2, q), q / 2, rtol=1e-12)
    np.testing.assert_allclose(T.gaussian_expectation(lambda u: (u > 0) * 1.0, q), 0.5, rtol=1e-12)


@pytest.mark.parametrize("c", [-1.0, -0.9, -0.3, 0.0, 0.5, 0.99, 1 - 1e-8, 1.0])
def test_2d_expectation_matches_arccos_kernels(c):
    q = 2.3
    k0, k1 = _arccos_relu(c)
    relu = lambda u: np.maximum(u, 0.0)
    step = lambda u: (u > 0) * 1.0
    assert T.gaussian_expectation_2d(lambda a, b: relu(a) * relu(b), q, c) == pytest.approx(q * k0, rel=1e-11)
    assert T.gaussian_expectation_2d(lambda a, b: step(a) * step(b), q, c) == pytest.approx(k1, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", SMOOTHISH)
def test_variance_map_matches_scipy_quad(name):
    phi = _np_phi(name)
    for q in (0.05, 1.0, 30.0):
        ref = 1.7 * _quad_gauss(lambda u: phi(u) ** 2, q) + 0.1
        assert T.variance_map(name, 1.7, 0.1, q) == pytest.approx(ref, rel=1e-10)


# --- closed forms -------------------------------------------------------------

@pytest.mark.parametrize("sw2,sb2", [(0.5, 0.0), (1.5, 0.1), (1.9, 2.0), (3.0, 0.5)])
def test_relu_closed_forms(sw2, sb2):
    assert T.chi1("relu", sw2, sb2) == pytest.approx(sw2 / 2, rel=1e-15)
    q = T.qstar("relu", sw2, sb2)
    if sw2 < 2:
        assert q == pytest.approx(sb2 / (1 - sw2 / 2), rel=1e-14)
        xi_q, xi_c = T.depth_scales("relu", sw2, sb2)
        assert xi_q == pytest.approx(-1 / math.log(sw2 / 2))
        assert xi_c == pytest.approx(-1 / math.log(sw2 / 2))  # ordered: c* = 1, χ_c = χ1
    else:
        assert q == math.inf
        with pytest.raises(ValueError, match="diverges"):
            T.depth_scales("relu", sw2, sb2)


def test_relu_at_criticality_and_degenerate_fixed_points():
    assert T.critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, abs=1e-6)
    assert T.critical_sigma_w2("relu", 0.3) == 2.0
    assert T.qstar("relu", 2.0, 0.0) == 1.0          # every q is fixed: the value reached from q0
    assert T.qstar("relu", 2.0, 0.0, q0=3.5) == 3.5
    assert T.qstar("relu", 2.0, 0.1) == math.inf
    assert T.depth_scales("relu", 2.0, 0.0) == (math.inf, math.inf)
    a = 0.1
    assert T.critical_sigma_w2("leaky_relu", 0.0, slope=a) == pytest.approx(2 / (1 + a * a), rel=1e-14)
    assert T.qstar("leaky_relu", 1.0, 0.2, slope=a) == pytest.approx(0.2 / (1 - (1 + a * a) / 2))


def test_relu_correlation_map_is_the_arccos_kernel():
    sw2, sb2 = 1.5, 0.1
    q = T.qstar("relu", sw2, sb2)
    for c in (-0.5, 0.0, 0.4, 0.95):
        expected = (sw2 * q * _arccos_relu(c)[0] + sb2) / q
        assert T.correlation_map("relu", sw2, sb2, c) == pytest.approx(expected, rel=1e-11)
    assert T.correlation_map("relu", sw2, sb2, 1.0) == pytest.approx(1.0, rel=1e-14)
    assert T.cstar("relu", sw2, sb2) == 1.0


@pytest.mark.parametrize("sw2,sb2", [(0.5, 0.2), (0.9, 0.0), (0.99, 1.0)])
def test_identity_closed_forms(sw2, sb2):
    assert T.qstar("identity", sw2, sb2) == pytest.approx(sb2 / (1 - sw2), rel=1e-14)
    assert T.chi1("identity", sw2, sb2) == pytest.approx(sw2, rel=1e-15)
    assert T.critical_sigma_w2("identity", sb2) == 1.0


def test_tanh_without_bias_q_star_zero_below_criticality():
    for sw2 in (0.3, 0.8, 0.999):
        assert T.qstar("tanh", sw2, 0.0) == 0.0
        assert T.chi1("tanh", sw2, 0.0) == pytest.approx(sw2, rel=1e-12)  # σ_w² φ'(0)²
        xi_q, xi_c = T.depth_scales("tanh", sw2, 0.0)
        assert xi_q == pytest.approx(-1 / math.log(sw2), rel=1e-9)
        assert xi_c == pytest.approx(-1 / math.log(sw2), rel=1e-9)
    # above criticality q* > 0; small-q expansion: q* ≈ (1 − 1/σ_w²)/2 and χ1 ≈ 1 + (4/3)σ_w² q*²
    sw2 = 1.001
    q = T.qstar("tanh", sw2, 0.0)
    assert q == pytest.approx((1 - 1 / sw2) / 2, rel=1e-2)
    assert T.chi1("tanh", sw2, 0.0) - 1 == pytest.approx(4 / 3 * sw2 * q * q, rel=2e-2)
    assert T.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-4)


# --- fixed points against plain iteration --------------------------------------

@pytest.mark.parametrize("name", SMOOTHISH)
def test_qstar_is_the_limit_of_iteration(name):
    for sw2, sb2 in ((1.2, 0.05), (0.7, 0.4)):
        q = 1.0
        for _ in range(150):
            q = T.variance_map(name, sw2, sb2, q)
        qs = T.qstar(name, sw2, sb2)
        assert qs == pytest.approx(q, rel=1e-9)
        assert T.variance_map(name, sw2, sb2, qs) == pytest.approx(qs, rel=1e-12)


def test_bistable_gelu_depends_on_q0():
    # GELU, σ_w² = 2.25, σ_b² = 0.05: a stable fixed point near 0.17, divergence from q0 = 1.
    assert T.qstar("gelu", 2.25, 0.05) == math.inf
    q = T.qstar("gelu", 2.25, 0.05, q0=0.1)
    assert 0.1 < q < 0.3 and T.variance_map("gelu", 2.25, 0.05, q) == pytest.approx(q, rel=1e-12)


# --- depth scales -------------------------------------------------------------

@pytest.mark.parametrize("name", SMOOTHISH)
def test_variance_map_slope_three_ways(name):
    """Stein form = finite difference of V = χ1 + σ_w² E[φ'' φ] (φ'' by jax.grad of the registry's φ')."""
    sw2, sb2 = 1.3, 0.2
    qs = T.qstar(name, sw2, sb2)
    v = T.variance_map_slope(name, sw2, sb2)
    h = 1e-4 * qs
    fd = (T.variance_map(name, sw2, sb2, qs + h) - T.variance_map(name, sw2, sb2, qs - h)) / (2 * h)
    assert v == pytest.approx(fd, rel=1e-6)
    act = activations.get(name)
    d2 = jax.vmap(jax.grad(lambda z: act.derivative(z, None)))

    def phi2(u):
        with jax.enable_x64(True):
            return np.asarray(d2(jnp.asarray(u.ravel(), jnp.float64))).reshape(u.shape)
    phi = _np_phi(name)
    extra = sw2 * T.gaussian_expectation(lambda u: phi2(u) * phi(u), qs)
    assert v == pytest.approx(T.chi1(name, sw2, sb2) + extra, rel=1e-9)


def test_tanh_criticality_self_consistent():
    sb2 = 0.05
    crit = T.critical_sigma_w2("tanh", sb2)
    # Our computed value; matches the ≈1.76 commonly read off Schoenholz et al. 2017 (Fig. 1),
    # which we could not check against the paper's text: a regression pin, not a published number.
    assert crit == pytest.approx(1.76095, abs=1e-4)
    assert T.chi1("tanh", crit, sb2) == pytest.approx(1.0, abs=1e-10)
    xi_c = T.depth_scales("tanh", crit, sb2)[1]
    assert xi_c == math.inf or xi_c > 1e8
    for sw2 in (1.5, 2.2):
        xi_q, xi_c = T.depth_scales("tanh", sw2, sb2)
        assert 0 < xi_q < 50 and 0 < xi_c < 100
    # ξ_c grows as σ_w² approaches the critical value from either side
    assert T.depth_scales("tanh", crit - 0.05, sb2)[1] > T.depth_scales("tanh", crit - 0.2, sb2)[1]
    assert T.depth_scales("tanh", crit + 0.05, sb2)[1] > T.depth_scales("tanh", crit + 0.2, sb2)[1]


def test_chaotic_cstar_and_chi_c():
    sw2, sb2 = 4.0, 0.05
    c = T.cstar("tanh", sw2, sb2)
    assert 0 < c < 1
    assert T.correlation_map("tanh", sw2, sb2, c) == pytest.approx(c, abs=1e-12)
    h = 1e-5
    slope = (T.correlation_map("tanh", sw2, sb2, c + h) - T.correlation_map("tanh", sw2, sb2, c - h)) / (2 * h)
    assert T.chi_c("tanh", sw2, sb2) == pytest.approx(slope, rel=1e-6)
    assert T.chi_c("tanh", sw2, sb2) < 1 < T.chi1("tanh", sw2, sb2)
    assert T.cstar("tanh", sw2, 0.0) == 0.0  # odd φ, no bias: C(0) = 0
    # slope of C at c = 1 is χ1 (one-sided difference)
    sl1 = (1 - T.correlation_map("tanh", 1.5, sb2, 1 - 1e-6)) / 1e-6
    assert sl1 == pytest.approx(T.chi1("tanh", 1.5, sb2), rel=1e-4)


# --- Monte Carlo of wide random networks ---------------------------------------

def _propagate(phi, sw2, sb2, q_in, c0, rng, width=1000, depth=30, nets=3):
    qs, cs, hs = [], [], []
    for _ in range(nets):
        x = rng.standard_normal((width, 2))
        x[:, 1] = c0 * x[:, 0] + math.sqrt(1 - c0 * c0) * x[:, 1]
        x *= math.sqrt((q_in - sb2) / sw2) / np.sqrt((x ** 2).mean(0))  # q^1 = q_in in expectation
        y, q, c, hh = x, [], [], []
        for _ in range(depth):
            w = rng.standard_normal((width, width), dtype=np.float32).astype(float) * math.sqrt(sw2 / width)
            h = w @ y + rng.standard_normal((width, 1)) * math.sqrt(sb2)
            m = (h ** 2).mean(0)
            q.append(m.mean())
            c.append((h[:, 0] * h[:, 1]).mean() / math.sqrt(m.prod()))
            hh.append(h)
            y = phi(h)
        qs.append(q), cs.append(c), hs.append(hh)
    return np.array(qs), np.array(cs).mean(0), hs  # q per network and layer


def test_monte_carlo_tanh_ordered():
    sw2, sb2 = 1.5, 0.05
    q_star = T.qstar("tanh", sw2, sb2)
    rng = np.random.default_rng(0)
    q, c, hs = _propagate(np.tanh, sw2, sb2, q_star, 0.3, rng)
    q = q.mean(0)
    assert np.mean(q) == pytest.approx(q_star, rel=0.03)
    assert np.all(np.abs(q / q_star - 1) < 0.12)
    theory = [c[0]]
    for _ in range(len(c) - 1):
        theory.append(T.correlation_map("tanh", sw2, sb2, theory[-1]))
    assert np.max(np.abs(c - np.array(theory))) < 0.06
    chi_emp = np.mean([sw2 * np.mean((1 - np.tanh(h) ** 2) ** 2) for hh in hs for h in hh[5:]])
    assert chi_emp == pytest.approx(T.chi1("tanh", sw2, sb2), rel=0.02)


def test_monte_carlo_tanh_chaotic_and_relu():
    rng = np.random.default_rng(1)
    sw2, sb2 = 4.0, 0.05
    q, c, _ = _propagate(np.tanh, sw2, sb2, T.qstar("tanh", sw2, sb2), 0.3, rng, width=1000, depth=20)
    theory = [c[0]]
    for _ in range(len(c) - 1):
        theory.append(T.correlation_map("tanh", sw2, sb2, theory[-1]))
    assert np.max(np.abs(c - np.array(theory))) < 0.08
    assert abs(np.mean(c[-5:]) - T.cstar("tanh", sw2, sb2)) < 0.08
    # ReLU: E[q^l] follows q -> σ_w² q/2 + σ_b² exactly at any width (h is symmetric given the
    # previous layer), so many narrow networks test it sharply: 4 standard errors per layer.
    sw2, sb2 = 1.5, 0.1
    q, _, _ = _propagate(lambda h: np.maximum(h, 0), sw2, sb2, 1.0, 0.5, rng, width=200, depth=15, nets=80)
    qt = [1.0]
    for _ in range(14):
        qt.append(sw2 * qt[-1] / 2 + sb2)
    se = q.std(0, ddof=1) / math.sqrt(q.shape[0])
    assert np.all(np.abs(q.mean(0) - np.array(qt)) < 4 * se)
    assert T.variance_map("relu", sw2, sb2, qt[-2]) == pytest.approx(qt[-1], rel=1e-12)


# --- born dead ----------------------------------------------------------------

@pytest.mark.parametrize("width,depth", [(2, 5), (2, 20), (3, 10), (4, 20)])
def test_born_dead_matches_monte_carlo(width, depth):
    p = T.born_dead_probability(width, depth)
    assert p == pytest.approx(1 - (1 - 2.0 ** -width) ** depth, rel=1e-14)
    se = math.sqrt(p * (1 - p) / 20000)
    for kw in ({}, {"weight_dist": "uniform", "input_dim": 1}, {"bias": True, "input_dim": 5}):
        est, _ = T.born_dead_monte_carlo(width, depth, num_networks=20000, seed=width * 100 + depth, **kw)
        assert abs(est - p) < 4 * se, (kw, est, p)


def test_born_dead_limits_and_widths():
    assert T.born_dead_probability(3, 0) == 0.0
    assert T.born_dead_probability(60, 1000) < 1e-14
    assert T.born_dead_probability(1, 1) == 0.5
    assert T.born_dead_probability(2, 500) == pytest.approx(1.0, abs=1e-60)
    assert T.born_dead_probability([2, 3, 4]) == pytest.approx(1 - 0.75 * 0.875 * 0.9375, rel=1e-14)
    ps = [T.born_dead_probability(3, L) for L in range(10)]
    assert all(a < b for a, b in zip(ps, ps[1:]))
    tiny = T.born_dead_probability(50, 3)
    assert tiny == pytest.approx(3 * 2.0 ** -50, rel=1e-12)  # no cancellation when tiny
    with pytest.raises(ValueError):
        T.born_dead_probability(3, -1)


def test_rai_lowers_born_dead_probability():
    p_sym = T.born_dead_probability(2, 10)
    est, se = T.born_dead_monte_carlo(2, 10, init="rai", num_networks=20000, seed=3)
    assert est < p_sym - 10 * se
