"""Mean-field signal propagation and born-dead probabilities (host-side NumPy/SciPy).

Every function here is a pure function of its arguments that returns Python
floats: fixed points are found by bracketing and root finding, so unlike the
rest of the package these are *not* traced or jit-able (they are computed once
per configuration, e.g. to draw a phase diagram or a theory line on a figure).
Activations come from :mod:`deadjax.activations` (a name or an ``Activation``;
``slope`` as in the registry) and are evaluated in float64.

Mean-field quantities (Poole et al. 2016, "Exponential expressivity in deep
neural networks through transient chaos", NeurIPS; Schoenholz et al. 2017,
"Deep information propagation", ICLR). Pre-activations h^l = W^l φ(h^{l-1}) + b^l
with W_ij ~ N(0, σ_w²/N_{l-1}) and b_i ~ N(0, σ_b²); ``sigma_w2`` = σ_w²,
``sigma_b2`` = σ_b² (variances, not standard deviations). With u ~ N(0, q):

* variance map   V(q) = σ_w² E[φ(u)²] + σ_b²;  q* = lim V^l(q0), q0 = 1.
* χ1 = σ_w² E[φ'(u)²] at q = q*  (slope of the correlation map at c = 1).
* correlation map C(c) = (σ_w² E[φ(u1) φ(u2)] + σ_b²) / q*, (u1, u2) ~ N(0, q*[[1, c], [c, 1]]).
* c* : the stable fixed point of C (1 in the ordered phase χ1 ≤ 1; the unique
  fixed point in [0, 1) in the chaotic phase χ1 > 1; see :func:`cstar`).
* depth scales  ξ_q = −1/log V'(q*),  V'(q*) = χ1 + σ_w² E[φ''(u) φ(u)]
                ξ_c = −1/log χ_c,     χ_c = σ_w² E[φ'(u1) φ'(u2)] at c = c*.

Every function takes ``q0`` (default 1): q* is the fixed point the variance
map reaches from q0. Some activations are bistable (GELU and SiLU with small
σ_b² can have a stable fixed point near 0 and diverge from larger q), so q* and
everything built on it can depend on q0 there. The ReLU family has at most one
fixed point; for other activations check q0-sensitivity at your settings.

Gaussian expectations use composite Gauss–Legendre quadrature with panel
breakpoints at the activations' kink (u = 0), on the activation's own scale
(|u| ≤ 16) and on the Gaussian's scale (up to 12 standard deviations), so
piecewise activations (ReLU, ELU, SELU, ...) and their step-function
derivatives are integrated to near machine precision at any q (Gauss–Hermite
would converge slowly across the kink). Two-dimensional expectations are
nested: outer over u1, inner over u2 | u1 ~ N(c u1, q(1 − c²)).

Born dead (Lu, Shin, Su & Karniadakis 2019/2020, "Dying ReLU and
Initialization: Theory and Numerical Examples", arXiv:1903.06733):
:func:`born_dead_probability` is the exact probability that some hidden layer
of a ReLU network with symmetric, atomless i.i.d. initialisation is entirely
zero at one fixed nonzero input; see its docstring and docs/theory.md for the
derivation and for how this relates to the paper's theorem (which concerns the
network being constant over a whole domain). No closed form is offered for
randomized asymmetric initialisation (RAI); :func:`born_dead_monte_carlo`
estimates it.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from deadjax import activations
from deadjax.initializers import RAI_SIGMA

__all__ = [
    "variance_map", "qstar", "chi1", "critical_sigma_w2", "correlation_map", "cstar",
    "chi_c", "variance_map_slope", "depth_scales", "born_dead_probability", "born_dead_monte_carlo",
    "gaussian_expectation", "gaussian_expectation_2d",
]

# Activations that are positively homogeneous of degree 1 (φ(a z) = a φ(z), a > 0):
# then V(q) = σ_w² m q + σ_b² with m = E[φ(z)²], and E[φ'(√q z)²] does not depend on q.
_HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "identity")
_Q_ZERO = 1e-200      # q* = 0 quantities are evaluated as the limit q -> 0+, here
_Q_MAX_FACTOR = 1e15  # the variance map is declared divergent beyond q0 * 1e15 (and max(1, σ_b²))
_CRIT_TOL = 1e-12     # |χ - 1| ≤ this counts as critical: the depth scale is inf

# Gauss–Legendre nodes on [-1, 1].
_GL1 = np.polynomial.legendre.leggauss(20)
_GL2 = np.polynomial.legendre.leggauss(12)
_GAUSS_BREAKS = np.array([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0])  # × std, ± each
_ACT_BREAKS = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])      # absolute, ± each
_SPAN = 12.0  # integrate over mean ± 12 std (tail mass < 4e-33)


# --- activations in float64 ---------------------------------------------------

def _resolve(activation):
    if isinstance(activation, activations.Activation):
        return activation
    return activations.get(activation, field="activation")


def _slope_value(act, slope):
    return act.default_slope if slope is None else float(slope)


def _np_fn(act, slope, which="fn"):
    f = act.fn if which == "fn" else act.derivative

    def call(u):
        with jax.enable_x64(True):
            return np.asarray(f(jnp.asarray(u, jnp.float64), slope), dtype=np.float64)
    return call


def _homogeneous_moments(act, slope):
    """(E[φ(z)²], E[φ'(z)²]) for a positively homogeneous activation, z ~ N(0, 1)."""
    if act.name == "identity":
        return 1.0, 1.0
    if act.name == "relu":
        return 0.5, 0.5
    a = _slope_value(act, slope)  # leaky_relu, prelu
    m = 0.5 * (1.0 + a * a)
    return m, m


# --- Gaussian quadrature ------------------------------------------------------

def _nodes(mean, std, rule, kink_scale=None):
    """Nodes and weights (Gaussian density included) of E over N(mean, std²).

    ``mean`` and ``std`` are arrays of one shape S; returns arrays of shape S + (n,).
    Panels: breakpoints at mean ± k·std, at 0 and at ± the activation scales,
    and (``kink_scale``, a float) at ± k·kink_scale around 0, clipped to mean ± 12 std.
    """
    x, w = rule
    mean = np.asarray(mean, float)[..., None]
    std = np.asarray(std, float)[..., None]
    lo, hi = mean - _SPAN * std, mean + _SPAN * std
    gauss = mean + std * np.concatenate([-_GAUSS_BREAKS, [0.0], _GAUSS_BREAKS])
    act = np.concatenate([-_ACT_BREAKS[1:], _ACT_BREAKS])
    if kink_scale is not None:
        act = np.concatenate([act, kink_scale * _GAUSS_BREAKS, -kink_scale * _GAUSS_BREAKS])
    pts = np.concatenate([lo, hi, gauss, np.broadcast_to(act, mean.shape[:-1] + act.shape)], axis=-1)
    pts = np.sort(np.clip(pts, lo, hi), axis=-1)
    a, b = pts[..., :-1, None], pts[..., 1:, None]
    half = 0.5 * (b - a)
    u = (0.5 * (a + b) + half * x).reshape(mean.shape[:-1] + (-1,))
    wt = (half * w).reshape(u.shape)
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        dens = np.exp(-0.5 * ((u - mean) / std) ** 2) / (math.sqrt(2.0 * math.pi) * std)
    return u, wt * np.where(std > 0, dens, 0.0)


def gaussian_expectation(f, q) -> np.ndarray:
    """E[f(u)] for u ~ N(0, q); ``q`` > 0 a scalar or array (result has its shape).

    ``f`` maps a float64 array to an array of the same shape.
    """
    q = np.asarray(q, float)
    u, w = _nodes(np.zeros_like(q), np.sqrt(q), _GL1)
    return np.sum(w * f(u), axis=-1)


def gaussian_expectation_2d(f, q, c) -> float:
    """E[f(u1, u2)] for (u1, u2) ~ N(0, q [[1, c], [c, 1]]), q > 0, −1 ≤ c ≤ 1."""
    q, c = float(q), float(c)
    if not (-1.0 <= c <= 1.0):
        raise ValueError(f"correlation c = {c} is outside [-1, 1].")
    if abs(c) == 1.0:
        return float(gaussian_expectation(lambda u: f(u, c * u), q))
    s = math.sqrt(q * (1.0 - c) * (1.0 + c))
    # The inner integral smooths the kink of φ(u2) at u2 = 0 over |u1| ≲ s/|c|: resolve that scale.
    u1, w1 = _nodes(0.0, math.sqrt(q), _GL2, kink_scale=s / max(abs(c), 1e-300))
    u2, w2 = _nodes(c * u1, np.full_like(u1, s), _GL2)
    vals = f(np.broadcast_to(u1[:, None], u2.shape), u2)
    return float(np.sum(w1[:, None] * w2 * vals))


# --- variance map and q* ------------------------------------------------------

def _check_sigmas(sigma_w2, sigma_b2):
    for name, v in (("sigma_w2", sigma_w2), ("sigma_b2", sigma_b2)):
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} = {v!r} must be a finite number >= 0 (a variance).")
    return float(sigma_w2), float(sigma_b2)


def variance_map(activation, sigma_w2, sigma_b2, q, *, slope=None):
    """V(q) = σ_w² E_{z~N(0,1)}[φ(√q z)²] + σ_b² (Poole et al. 2016, eq. 3); ``q`` ≥ 0, may be an array."""
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    q = np.asarray(q, float)
    phi = _np_fn(act, slope)
    pos = np.maximum(q, _Q_ZERO)
    e = gaussian_expectation(lambda u: phi(u) ** 2, pos)
    e = np.where(q > 0, e, float(phi(np.zeros(1))[0]) ** 2)  # q = 0: φ(0)²
    out = sigma_w2 * e + sigma_b2
    return float(out) if out.ndim == 0 else out


def qstar(activation, sigma_w2, sigma_b2, *, slope=None, q0=1.0) -> float:
    """The fixed point q* of the variance map reached by iterating from q0 (default 1).

    Poole et al. 2016, eq. 3: q^l = σ_w² E_{z~N(0,1)}[φ(√q^{l-1} z)²] + σ_b².

    * Positively homogeneous φ (relu, leaky_relu, prelu, identity): V(q) = σ_w² m q
      + σ_b², m = E[φ(z)²] (1/2, (1 + a²)/2, 1). If σ_w² m < 1, q* = σ_b²/(1 − σ_w² m)
      (unique). If σ_w² m > 1, or σ_w² m = 1 with σ_b² > 0, q^l grows without bound:
      returns ``math.inf``. If σ_w² m = 1 and σ_b² = 0 (ReLU: σ_w² = 2, σ_b² = 0)
      every q is a fixed point: returns ``q0`` (the value reached from q0), by choice.
    * Other φ: assuming V is increasing (as for the registry's activations at the
      tested settings; the tests compare with plain iteration), the orbit from q0 is monotone and converges
      to the nearest fixed point in the direction of V(q0) − q0. That root is found
      by scanning a geometric grid from q0 (ratio 0.8, then coarser below q0·1e-12)
      and refined with Brent's method to ~1e-15 relative. q* = 0 (e.g. tanh, σ_b² = 0,
      σ_w² ≤ 1) is returned as exactly 0.0; an orbit that passes q0·1e15 (and
      max(1, σ_b²)·1e15) without meeting a fixed point is reported as ``math.inf``.
    """
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    if not (math.isfinite(q0) and q0 > 0):
        raise ValueError(f"q0 = {q0!r} must be a finite number > 0.")
    if act.name in _HOMOGENEOUS:
        m, _ = _homogeneous_moments(act, slope)
        r = sigma_w2 * m
        if r < 1.0:
            return sigma_b2 / (1.0 - r)
        if r == 1.0 and sigma_b2 == 0.0:
            return float(q0)
        return math.inf

    def g(q):
        return variance_map(act, sigma_w2, sigma_b2, q, slope=slope) - np.asarray(q, float)

    def refine(a, b):
        return brentq(lambda x: float(g(x)), a, b, xtol=1e-17 * b + 1e-300, rtol=4 * np.finfo(float).eps,
                      maxiter=500)

    g0 = float(g(q0))
    if g0 == 0.0:
        return float(q0)
    if g0 < 0:  # orbit decreases: largest fixed point below q0
        grid = np.concatenate([q0 * 0.8 ** np.arange(1, 125),
                               q0 * 0.8 ** 124 * np.logspace(-2, -186, 93)])
        vals = g(grid)
        hit = np.nonzero(vals >= 0)[0]
        if hit.size:
            i = hit[0]
            if vals[i] == 0.0:
                return float(grid[i])
            upper = q0 if i == 0 else grid[i - 1]
            return float(refine(grid[i], upper))
        if float(g(0.0)) > 0:
            return float(refine(0.0, grid[-1]))
        return 0.0
    # orbit increases: smallest fixed point above q0, or divergence
    top = _Q_MAX_FACTOR * max(q0, 1.0, sigma_b2)
    grid = q0 * 1.25 ** np.arange(1, int(math.ceil(math.log(top / q0) / math.log(1.25))) + 1)
    vals = g(grid)
    hit = np.nonzero(vals <= 0)[0]
    if not hit.size:
        return math.inf
    i = hit[0]
    if vals[i] == 0.0:
        return float(grid[i])
    lower = q0 if i == 0 else grid[i - 1]
    return float(refine(lower, grid[i]))


def _q_eval(q):
    return q if q > 0 else _Q_ZERO  # q* = 0: the limit q -> 0+


def _finite_qstar(act, sigma_w2, sigma_b2, slope, what, q0=1.0):
    q = qstar(act, sigma_w2, sigma_b2, slope=slope, q0=q0)
    if not math.isfinite(q):
        raise ValueError(f"{what} is undefined for {act.name} at sigma_w2 = {sigma_w2}, "
                         f"sigma_b2 = {sigma_b2}: the variance map diverges (q* = inf).")
    return q


# --- χ1, criticality ----------------------------------------------------------

def chi1(activation, sigma_w2, sigma_b2, *, slope=None, q0=1.0) -> float:
    """χ1 = σ_w² E_{z~N(0,1)}[φ'(√q* z)²] (Poole et al. 2016; Schoenholz et al. 2017).

    The slope of the correlation map at c = 1 and the mean squared singular value
    of a layer's Jacobian: χ1 < 1 ordered (vanishing gradients), > 1 chaotic
    (exploding). Positively homogeneous φ: σ_w² E[φ'(z)²] (ReLU σ_w²/2) for any q*,
    even where q* is infinite. q* = 0: the limit q -> 0+ (σ_w² φ'(0)² for smooth φ).
    Other φ with q* = inf: ValueError.
    """
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    if act.name in _HOMOGENEOUS:
        return sigma_w2 * _homogeneous_moments(act, slope)[1]
    q = _finite_qstar(act, sigma_w2, sigma_b2, slope, "chi1", q0)
    d = _np_fn(act, slope, "derivative")
    return float(sigma_w2 * gaussian_expectation(lambda u: d(u) ** 2, _q_eval(q)))


def critical_sigma_w2(activation, sigma_b2, *, slope=None, q0=1.0) -> float:
    """The σ_w² at which χ1 = 1 (the order-to-chaos transition) for this σ_b².

    Positively homogeneous φ: 1/E[φ'(z)²] (ReLU: 2; identity: 1) for every σ_b²
    (for σ_b² > 0, q* is infinite there). Others: scan σ_w² upward from
    1/sup|φ'|² (below which χ1 < 1) by factors of 1.05 to the first σ_w² with
    χ1 > 1, then Brent's method. ValueError if q* diverges first or nothing is
    found below σ_w² = 1e6.
    """
    act = _resolve(activation)
    _, sigma_b2 = _check_sigmas(1.0, sigma_b2)
    if act.name in _HOMOGENEOUS:
        return 1.0 / _homogeneous_moments(act, slope)[1]

    def f(s):
        return chi1(act, s, sigma_b2, slope=slope, q0=q0) - 1.0

    lo = 1.0 / act.max_derivative ** 2
    flo = f(lo)
    if flo == 0.0:
        return lo
    if flo > 0:
        raise ValueError(f"chi1 > 1 already at sigma_w2 = {lo} for {act.name}; no transition found.")
    s = lo
    while s < 1e6:
        nxt = s * 1.05
        try:
            fn = f(nxt)
        except ValueError as err:
            raise ValueError(f"no critical sigma_w2 for {act.name} at sigma_b2 = {sigma_b2}: "
                             f"q* diverges at sigma_w2 = {nxt:g} before chi1 reaches 1.") from err
        if fn == 0.0:
            return nxt
        if fn > 0:
            return float(brentq(f, s, nxt, xtol=1e-14, rtol=4 * np.finfo(float).eps))
        s = nxt
    raise ValueError(f"no critical sigma_w2 below 1e6 for {act.name} at sigma_b2 = {sigma_b2}.")


# --- correlation map, c*, χ_c -------------------------------------------------

def _corr(act, sigma_w2, sigma_b2, slope, q, c):
    phi = _np_fn(act, slope)
    qe = _q_eval(q)
    num = sigma_w2 * gaussian_expectation_2d(lambda a, b: phi(a) * phi(b), qe, c) + sigma_b2
    # Normalised by V(q) (= q* at the fixed point), so C(1) = 1 exactly and q* = 0 gives the limit.
    return num / variance_map(act, sigma_w2, sigma_b2, qe, slope=slope)


def correlation_map(activation, sigma_w2, sigma_b2, c, *, slope=None, q0=1.0) -> float:
    """C(c) = (σ_w² E[φ(u1) φ(u2)] + σ_b²)/q*, u1 = √q* z1, u2 = √q*(c z1 + √(1−c²) z2).

    Poole et al. 2016, eq. 5 (the map of the correlation between two inputs'
    pre-activations from one layer to the next, both at variance q*). Evaluated as
    numerator/V(q*), equal to /q* at the fixed point; for q* = 0 the limit q -> 0+.
    ValueError where q* is infinite.
    """
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    q = _finite_qstar(act, sigma_w2, sigma_b2, slope, "the correlation map", q0)
    return float(_corr(act, sigma_w2, sigma_b2, slope, q, float(c)))


def cstar(activation, sigma_w2, sigma_b2, *, slope=None, q0=1.0) -> float:
    """The stable fixed point c* of the correlation map.

    By Mehler's expansion C(c) = Σ_k a_k c^k with a_k ≥ 0, Σ a_k = 1 and
    C'(1) = χ1, so C is convex on [0, 1] and has no fixed point in [-1, 0) when
    a_0 = C(0) > 0. Hence: χ1 ≤ 1 (ordered or critical) -> c* = 1; χ1 > 1
    (chaotic) -> c = 1 is unstable and c* is the unique fixed point in [0, 1),
    found with Brent's method (c* = 0 when C(0) = 0, e.g. odd φ with σ_b² = 0).
    Poole et al. 2016; Schoenholz et al. 2017, sec. 3.
    """
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    q = _finite_qstar(act, sigma_w2, sigma_b2, slope, "c*", q0)
    if chi1(act, sigma_w2, sigma_b2, slope=slope, q0=q0) <= 1.0:
        return 1.0

    def g(c):
        return _corr(act, sigma_w2, sigma_b2, slope, q, c) - c

    g0 = g(0.0)
    if g0 <= 0.0:
        return 0.0
    for hi in (0.5, 0.9, 0.99, 1 - 1e-3, 1 - 1e-4, 1 - 1e-5, 1 - 1e-6, 1 - 1e-7, 1 - 1e-8,
               1 - 1e-9, 1 - 1e-10):
        if g(hi) < 0:
            return float(brentq(g, 0.0, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))
    return 1.0  # χ1 within ~1e-10 of 1: c* is indistinguishable from 1


def chi_c(activation, sigma_w2, sigma_b2, *, slope=None, q0=1.0) -> float:
    """χ_c = σ_w² E[φ'(u1) φ'(u2)] at c = c* (the slope C'(c*)); equals χ1 when c* = 1."""
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    c = cstar(act, sigma_w2, sigma_b2, slope=slope, q0=q0)
    if c == 1.0:
        return chi1(act, sigma_w2, sigma_b2, slope=slope, q0=q0)
    q = _finite_qstar(act, sigma_w2, sigma_b2, slope, "chi_c", q0)
    d = _np_fn(act, slope, "derivative")
    return float(sigma_w2 * gaussian_expectation_2d(lambda a, b: d(a) * d(b), _q_eval(q), c))


def _scale(x):
    """−1/log x for a contraction factor x ∈ [0, 1]: inf at (numerical) criticality."""
    x = abs(x)
    if abs(x - 1.0) <= _CRIT_TOL or x > 1.0:
        return math.inf
    if x == 0.0:
        return 0.0
    return -1.0 / math.log(x)


def variance_map_slope(activation, sigma_w2, sigma_b2, *, slope=None, q0=1.0) -> float:
    """V'(q*) = χ1 + σ_w² E[φ''(u) φ(u)], u ~ N(0, q*) (Schoenholz et al. 2017, ξ_q).

    Computed without φ'' through Stein's lemma, E[z g(z)] = E[g'(z)]:
    V'(q) = σ_w² E[z φ(√q z) φ'(√q z)]/√q = σ_w² E[u φ(u) φ'(u)]/q, which equals
    χ1 + σ_w² E[φ''(u) φ(u)] wherever φ'' exists (tested against jax.grad and
    finite differences of V). Positively homogeneous φ: σ_w² E[φ(z)²].
    """
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    if act.name in _HOMOGENEOUS:
        return sigma_w2 * _homogeneous_moments(act, slope)[0]
    q = _q_eval(_finite_qstar(act, sigma_w2, sigma_b2, slope, "V'(q*)", q0))
    phi, d = _np_fn(act, slope), _np_fn(act, slope, "derivative")
    return float(sigma_w2 * gaussian_expectation(lambda u: u * phi(u) * d(u), q) / q)


def depth_scales(activation, sigma_w2, sigma_b2, *, slope=None, q0=1.0) -> tuple[float, float]:
    """(ξ_q, ξ_c): the depths over which q^l -> q* and c^l -> c* (Schoenholz et al. 2017, sec. 3).

    |q^l − q*| ~ e^{−l/ξ_q},  ξ_q^{-1} = −log[χ1 + σ_w² E[φ''(u) φ(u)]]  (= −log V'(q*));
    |c^l − c*| ~ e^{−l/ξ_c},  ξ_c^{-1} = −log χ_c,  χ_c = σ_w² E[φ'(u1) φ'(u2)] at c*.
    Both use u ~ N(0, q*). A factor within 1e-12 of 1 (criticality, e.g. ξ_c at
    χ1 = 1, or ReLU's ξ_q at σ_w² = 2, σ_b² = 0) gives ``math.inf``. A negative
    V'(q*) (oscillating approach) uses |V'(q*)|. ValueError where q* is infinite.
    """
    act = _resolve(activation)
    sigma_w2, sigma_b2 = _check_sigmas(sigma_w2, sigma_b2)
    _finite_qstar(act, sigma_w2, sigma_b2, slope, "depth_scales", q0)
    xi_q = _scale(variance_map_slope(act, sigma_w2, sigma_b2, slope=slope, q0=q0))
    xi_c = _scale(chi_c(act, sigma_w2, sigma_b2, slope=slope, q0=q0))
    return xi_q, xi_c


# --- born dead ----------------------------------------------------------------

def _widths(width, depth):
    if isinstance(width, (int, np.integer)):
        if depth is None or int(depth) != depth or depth < 0:
            raise ValueError(f"depth = {depth!r} must be an integer >= 0.")
        ws = [int(width)] * int(depth)
    else:
        ws = [int(w) for w in width]
        if depth is not None and depth != len(ws):
            raise ValueError(f"depth = {depth} disagrees with {len(ws)} widths given.")
    if any(w < 1 for w in ws):
        raise ValueError(f"widths {ws} must all be >= 1.")
    return ws


def born_dead_probability(width: int | Sequence[int], depth: int | None = None) -> float:
    """P(some hidden layer is entirely zero at one fixed input x ≠ 0) = 1 − Π_l (1 − 2^{−n_l}).

    For a ReLU network with ``depth`` hidden layers of ``width`` units (or widths
    n_1..n_L given as a sequence), weights i.i.d. from a distribution symmetric
    about 0 and continuous (so w·h has no atom at 0 for h ≠ 0), biases zero or
    i.i.d. symmetric and continuous. Then the output is constant in a
    neighbourhood of x ("born dead at x").

    Derivation: given the previous layer's output h ≠ 0 (or the input x ≠ 0),
    the pre-activations w_j·h are independent across units (independent rows)
    and symmetric without an atom, so each unit is active with probability 1/2
    independently and the layer is all zero with probability 2^{−n_l},
    whatever the history; a zero layer stays zero in a bias-free network (0 is
    absorbing for the Markov chain of the number of active units). With
    symmetric continuous biases each layer is zero with probability 2^{−n_l}
    independently of everything before it, giving the same product.

    This is not the event bounded in Lu et al. 2019 (arXiv:1903.06733), who
    call a network born dead when it is constant over a whole input domain Ω;
    for bias-free networks that event implies the one computed here for every
    x ∈ Ω, so this value is an upper bound for theirs (see docs/theory.md).
    Computed as −expm1(Σ log1p(−2^{−n_l})) for accuracy when it is tiny.
    """
    ws = _widths(width, depth)
    return float(-math.expm1(sum(math.log1p(-(2.0 ** -w)) for w in ws)))


def born_dead_monte_carlo(width: int | Sequence[int], depth: int | None = None, *,
                          x=None, input_dim: int = 3, num_networks: int = 20000,
                          init: str = "symmetric", weight_dist: str = "normal",
                          bias: bool = False, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo estimate (p̂, standard error) of "some hidden layer is zero at x".

    ``init="symmetric"``: weights i.i.d. N(0, 1/fan_in) (``weight_dist="normal"``)
    or U[−1, 1]/√fan_in (``"uniform"``); with ``bias=True`` biases i.i.d. N(0, 1).
    ``init="rai"``: randomized asymmetric initialisation as in
    :func:`deadjax.initializers.rai` (Lu et al. 2019, sec. 5): per unit, weights
    and bias N(0, (0.6007)²/fan_in) with one uniformly chosen entry replaced by a
    Beta(2, 1) draw; its probability depends on x, and the paper gives no closed
    form for it at a fixed input, so this is the way to obtain it.
    ``x`` defaults to a fixed N(0, I) draw of ``input_dim`` entries (seed 12345).
    """
    ws = _widths(width, depth)
    if init not in ("symmetric", "rai"):
        raise ValueError(f"init = {init!r} is not allowed; choose 'symmetric' or 'rai'.")
    rng = np.random.default_rng(seed)
    if x is None:
        x = np.random.default_rng(12345).standard_normal(input_dim)
    x = np.asarray(x, float).ravel()
    if not np.any(x != 0):
        raise ValueError("x must be a nonzero input vector.")
    h = np.broadcast_to(x, (num_networks, x.size))
    dead = np.zeros(num_networks, bool)
    for n in ws:
        fan_in = h.shape[1]
        if init == "symmetric":
            if weight_dist == "normal":
                w = rng.standard_normal((num_networks, fan_in, n)) / math.sqrt(fan_in)
            elif weight_dist == "uniform":
                w = rng.uniform(-1.0, 1.0, (num_networks, fan_in, n)) / math.sqrt(fan_in)
            else:
                raise ValueError(f"weight_dist = {weight_dist!r}; choose 'normal' or 'uniform'.")
            b = rng.standard_normal((num_networks, n)) if bias else 0.0
        else:
            v = rng.standard_normal((num_networks, fan_in + 1, n)) * (RAI_SIGMA / math.sqrt(fan_in))
            idx = rng.integers(0, fan_in + 1, (num_networks, n))
            beta = np.sqrt(rng.uniform(np.finfo(float).tiny, 1.0, (num_networks, n)))  # Beta(2, 1)
            pick = np.arange(fan_in + 1)[None, :, None] == idx[:, None, :]
            v = np.where(pick, beta[:, None, :], v)
            w, b = v[:, :-1, :], v[:, -1, :]
        h = np.maximum(np.einsum("bi,bij->bj", h, w) + b, 0.0)
        dead |= ~np.any(h > 0, axis=1)
    p = float(dead.mean())
    return p, math.sqrt(max(p * (1 - p), 0.0) / num_networks)
