"""Weight and bias initialisers by name: pure, jit- and vmap-safe functions.

Kernels are shaped ``(fan_in, fan_out)`` (Flax ``Dense`` layout); for more
dimensions, fan_in = prod(shape[:-1]) and fan_out = shape[-1]. Scales
(``gain``, ``sigma_w``, ``sigma_b``, ``value``) may be traced per-member JAX
scalars, so a sweep over σ_w is one vmapped population: no Python control
flow ever looks at their values.

Kernel initialisers (W_ij i.i.d. unless stated; U = uniform, N = normal;
every random kernel's standard deviation is multiplied by ``gain``, default 1;
docs/initializers.md has the same table)
-----------------------------------------------------------------------------
``standard``        U[−1/√fan_in, 1/√fan_in]                   Glorot & Bengio 2010, eq. 1
                    (the "commonly used heuristic"; Var = 1/(3 fan_in))
``glorot_uniform``  U[−√(6/(fan_in+fan_out)), +√(6/(fan_in+fan_out))]
                    Glorot & Bengio 2010, eq. 16, "normalized initialization"
                    (Var = 2/(fan_in+fan_out))
``glorot_normal``   N(0, 2/(fan_in+fan_out))                   same variance as eq. 16
``he_normal``       N(0, 2/fan)                                He et al. 2015, eq. 10
                    (fan = fan_in, ``mode="fan_in"``) or eq. 14 (fan = fan_out,
                    ``mode="fan_out"``): the ReLU case, whatever the activation
``he_uniform``      U[−√(6/fan), +√(6/fan)]                    same variance 2/fan
``he_leaky_normal`` N(0, 2/((1 + a²) fan))                     He et al. 2015, eq. 15
                    (its fan_out analogue with ``mode="fan_out"``), a the
                    activation's negative slope: ``model.leaky_slope`` for
                    leaky_relu (per member, traced), the initial 0.25 for prelu,
                    0 for relu (then equal to he_normal); torch's
                    ``kaiming_normal_(a=a)``
``he_leaky_uniform`` U[−√(6/((1 + a²) fan)), +√(6/((1 + a²) fan))]  same variance;
                    torch's ``kaiming_uniform_(a=a)``
``lecun_normal``    N(0, 1/fan)                                LeCun et al. 1998,
``lecun_uniform``   U[−√(3/fan), +√(3/fan)]                    "Efficient BackProp" §4.6:
                    σ = fan_in^(−1/2); fan follows ``mode`` like He's
``orthogonal``      gain · Q, Q with orthonormal columns (fan_in ≥ fan_out) or
                    rows (fan_in < fan_out), Haar-distributed (QR of a Gaussian
                    matrix with the sign of diag(R) fixed; Mezzadri 2007).
                    Saxe, McClelland & Ganguli 2014
``mean_field``      N(0, σ_w²/fan_in)                          Poole et al. 2016;
                    Schoenholz et al. 2017 (``sigma_w`` is the std multiplier)
``rai``             randomized asymmetric initialization,      Lu, Shin, Su &
                    see :func:`rai`                            Karniadakis 2019
``zeros``           0
``constant``        every entry equals ``gain`` (not random: ``gain`` is the value)

**He and the negative slope.** ``he_normal``/``he_uniform`` use variance
2/fan for every activation, the convention of JAX's and Flax's
``he_normal``/``he_uniform`` (``variance_scaling(2.0, ...)``) and of
torch's ``kaiming_*`` with their default ``a = 0``; for a leaky or
parametric ReLU of slope a that is (1 + a²) times He et al.'s eq. 15
(6% more variance at a = 0.25, PReLU's initial slope; 0.01% at a = 0.01).
``he_leaky_normal``/``he_leaky_uniform`` are eq. 15 itself, 2/((1 + a²) fan),
with a taken from the member's activation (``negative_slope`` here; a
traced per-member value is allowed); the config allows them with relu,
leaky_relu and prelu only. The default ``model.kernel_init`` stays
``he_normal``, and existing names keep their numbers.

Normal draws are plain Gaussians (not truncated, unlike ``jax.nn.initializers``'
``lecun_normal``/``he_normal``), so variances equal the paper formulas exactly.
``mode`` only affects ``he_*``, ``he_leaky_*`` and ``lecun_*``; ``standard`` and ``mean_field``
always use fan_in, ``glorot_*`` uses both fans.

Aliases: xavier_uniform / xavier / glorot -> glorot_uniform (Glorot & Bengio's
recommended "normalized" init is uniform), xavier_normal -> glorot_normal,
kaiming_uniform -> he_uniform, kaiming_normal / kaiming / he -> he_normal (He et
al. draw Gaussians), lecun -> lecun_normal, zero -> zeros, random_asymmetric ->
rai.

Bias initialisers
-----------------
``zeros``       0
``constant``    every entry equals ``value`` (config ``model.bias_value``)
``mean_field``  N(0, σ_b²)                                    Poole et al. 2016
``standard``    U[−1/√fan_in, 1/√fan_in]  (also PyTorch's ``nn.Linear`` default bias)
``normal``      N(0, σ_b²), a synonym of ``mean_field``

With ``kernel_init="rai"`` the bias is part of the RAI draw and ``bias_init``
is ignored (use :func:`dense_params`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from deadjax.errors import ConfigError

Array = jax.Array

KERNEL_INITS: tuple[str, ...] = (
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
    "lecun_normal", "orthogonal", "standard", "mean_field", "rai", "zeros", "constant",
    "he_leaky_uniform", "he_leaky_normal")
# The initialisers whose variance depends on the activation's negative slope
# (He et al. 2015, eq. 15); the config allows them with these activations only.
SLOPE_AWARE_INITS: tuple[str, ...] = ("he_leaky_uniform", "he_leaky_normal")
RECTIFIERS: tuple[str, ...] = ("relu", "leaky_relu", "prelu")
BIAS_INITS: tuple[str, ...] = ("zeros", "constant", "mean_field", "standard", "normal")

KERNEL_ALIASES: dict[str, str] = {
    "xavier_uniform": "glorot_uniform", "xavier": "glorot_uniform",
    "glorot": "glorot_uniform", "xavier_normal": "glorot_normal",
    "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal",
    "kaiming": "he_normal", "he": "he_normal", "lecun": "lecun_normal",
    "zero": "zeros", "random_asymmetric": "rai",
}
BIAS_ALIASES: dict[str, str] = {"zero": "zeros"}

# RAI constants (Lu et al. 2019, sec. 5): P = N(0, σ²), σ = RAI_SIGMA/√fan_in;
# Q = Beta(2, 1).
RAI_SIGMA = 0.6007


def _check(name, field, names, aliases) -> str:
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    key = aliases.get(key, key)
    if key not in names:
        alias_text = ", ".join(f"{a} -> {c}" for a, c in aliases.items())
        raise ConfigError(f"{field} = {name!r} is not allowed; choose one of "
                          f"{', '.join(repr(n) for n in names)} (aliases: {alias_text}).")
    return key


def check_kernel_init(name, field: str = "model.kernel_init") -> str:
    """Canonical kernel-initialiser name; ConfigError naming field, value and choices."""
    return _check(name, field, KERNEL_INITS, KERNEL_ALIASES)


def check_bias_init(name, field: str = "model.bias_init") -> str:
    """Canonical bias-initialiser name; ConfigError naming field, value and choices."""
    return _check(name, field, BIAS_INITS, BIAS_ALIASES)


def _fans(shape) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"a kernel needs at least 2 dimensions, got shape {tuple(shape)}")
    return math.prod(shape[:-1]), shape[-1]


def _uniform(key, shape, bound, dtype):
    """U[−bound, bound]; ``bound`` may be traced."""
    u = jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
    return (u * bound).astype(dtype)


def _normal(key, shape, std, dtype):
    """N(0, std²); ``std`` may be traced."""
    return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)


def _orthogonal(key, shape, gain, dtype):
    """gain · Haar-orthogonal matrix of shape (fan_in, fan_out), reshaped to ``shape``.

    For fan_in ≥ fan_out the columns are orthonormal (WᵀW = gain² I), else the
    rows (WWᵀ = gain² I). Saxe et al. 2014; sign fix of Mezzadri 2007.
    """
    n_in, n_out = _fans(shape)
    rows, cols = max(n_in, n_out), min(n_in, n_out)
    a = jax.random.normal(key, (rows, cols), jnp.float32)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)[None, :]
    if n_in < n_out:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def rai(key, fan_in: int, fan_out: int, *, gain=1.0, dtype=jnp.float32) -> tuple[Array, Array]:
    """Randomized asymmetric initialization (RAI) of one dense layer.

    Lu, Shin, Su & Karniadakis, "Dying ReLU and Initialization: Theory and
    Numerical Examples", arXiv:1903.06733 (Commun. Comput. Phys. 28, 2020),
    sec. 5 ("Randomized asymmetric initialization"). For each unit j (a column
    of the Flax kernel) form v_j = (W_{1j}, …, W_{fan_in,j}, b_j) ∈ R^{fan_in+1}:

      1. draw every entry of v_j from a symmetric P = N(0, σ²) with
         σ = 0.6007 / √fan_in (the paper's second-moment choice for Q below,
         times ``gain``, default 1);
      2. choose one index k_j uniformly from {1, …, fan_in + 1} and replace
         v_{j,k_j} with a draw from the asymmetric, positively supported
         Q = Beta(2, 1) (density 2x on [0, 1]; mean 2/3, second moment 1/2).

    Each unit therefore has exactly one entry (a weight or, with probability
    1/(fan_in+1), its bias) from Q. The asymmetry makes a unit's
    pre-activation positive along a random input direction, which lowers the
    probability that a deep ReLU network is born dead (the paper's analysis).
    RAI is meant for ReLU networks and draws the bias itself, so a model's
    ``bias_init`` is ignored. Returns (kernel (fan_in, fan_out), bias (fan_out,)).
    """
    k_sym, k_idx, k_q = jax.random.split(key, 3)
    std = gain * RAI_SIGMA / math.sqrt(fan_in)
    v = jax.random.normal(k_sym, (fan_in + 1, fan_out), jnp.float32) * std
    idx = jax.random.randint(k_idx, (fan_out,), 0, fan_in + 1)
    # Beta(2, 1) has CDF x², so √U with U ~ U(0, 1) is an exact draw (inverse CDF);
    # far cheaper to compile than jax.random.beta's rejection sampler.
    u = jax.random.uniform(k_q, (fan_out,), jnp.float32, minval=jnp.finfo(jnp.float32).tiny)
    q = jnp.sqrt(u)
    pick = jnp.arange(fan_in + 1)[:, None] == idx[None, :]
    v = jnp.where(pick, q[None, :], v)
    return v[:-1].astype(dtype), v[-1].astype(dtype)


def kernel(name, key, shape, *, mode="fan_in", gain=1.0, sigma_w=1.0, negative_slope=0.0,
           dtype=jnp.float32) -> Array:
    """A kernel of ``shape`` from the initialiser ``name`` (see the module table).

    ``mode`` ("fan_in" or "fan_out") picks the fan of he_*, he_leaky_* and
    lecun_*. ``gain`` multiplies the std of every random init and is the value
    of ``constant``; ``sigma_w`` is used by ``mean_field`` only and
    ``negative_slope`` (a, may be traced) by ``he_leaky_*`` only. For ``rai``
    this returns the kernel part of :func:`rai` (the bias drawn with it is
    dropped; use :func:`dense_params` to get both).
    """
    name = check_kernel_init(name, field="kernel_init")
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode = {mode!r} is not allowed; choose 'fan_in' or 'fan_out'.")
    shape = tuple(shape)
    n_in, n_out = _fans(shape)
    fan = n_in if mode == "fan_in" else n_out
    if name == "zeros":
        return jnp.zeros(shape, dtype)
    if name == "constant":
        return jnp.full(shape, gain, jnp.float32).astype(dtype)
    if name == "orthogonal":
        return _orthogonal(key, shape, gain, dtype)
    if name == "rai":
        if len(shape) != 2:
            raise ValueError(f"rai needs a 2-d kernel, got shape {shape}")
        return rai(key, n_in, n_out, gain=gain, dtype=dtype)[0]
    # He et al. 2015, eq. 15: the std of he_* divided by sqrt(1 + a^2).
    slope_factor = (jnp.sqrt(1.0 + jnp.square(jnp.asarray(negative_slope, jnp.float32)))
                    if name in SLOPE_AWARE_INITS else 1.0)
    uniform_bounds = {
        "standard": 1.0 / math.sqrt(n_in),
        "glorot_uniform": math.sqrt(6.0 / (n_in + n_out)),
        "he_uniform": math.sqrt(6.0 / fan),
        "he_leaky_uniform": math.sqrt(6.0 / fan),
        "lecun_uniform": math.sqrt(3.0 / fan),
    }
    if name in uniform_bounds:
        bound = gain * uniform_bounds[name]
        if name in SLOPE_AWARE_INITS:
            bound = bound / slope_factor
        return _uniform(key, shape, bound, dtype)
    normal_stds = {
        "glorot_normal": math.sqrt(2.0 / (n_in + n_out)),
        "he_normal": math.sqrt(2.0 / fan),
        "he_leaky_normal": math.sqrt(2.0 / fan),
        "lecun_normal": math.sqrt(1.0 / fan),
        "mean_field": 1.0 / math.sqrt(n_in),
    }
    std = gain * normal_stds[name]
    if name == "mean_field":
        std = std * sigma_w
    if name in SLOPE_AWARE_INITS:
        std = std / slope_factor
    return _normal(key, shape, std, dtype)


def negative_slope_of(activation: str, leaky_slope, prelu_initial_slope: float):
    """The negative slope ``a`` that He et al.'s eq. 15 (``he_leaky_*``) uses for
    ``activation``: ``leaky_slope`` (the member's, may be traced) for leaky_relu,
    the initial slope of prelu, 0 for every other activation (relu; the config
    refuses he_leaky_* with activations that are not rectifiers)."""
    if activation == "leaky_relu":
        return leaky_slope
    if activation == "prelu":
        return prelu_initial_slope
    return 0.0


def check_kernel_init_for(kernel_init, activation, field="model.kernel_init") -> None:
    """Refuses a slope-aware He initialiser (He et al. 2015, eq. 15) for an
    activation that is not a rectifier, in one sentence."""
    name = check_kernel_init(kernel_init, field=field)
    if name in SLOPE_AWARE_INITS and activation not in RECTIFIERS:
        raise ConfigError(
            f"{field} = {kernel_init!r} is not allowed for model.activation = "
            f"{activation!r}; He et al.'s slope-aware variance is for "
            f"{', '.join(repr(a) for a in RECTIFIERS)} (use 'he_normal' or another "
            "initialiser).")


def bias(name, key, shape, *, fan_in, sigma_b=0.0, value=0.0, dtype=jnp.float32) -> Array:
    """A bias of ``shape`` from the initialiser ``name`` (see the module table)."""
    name = check_bias_init(name, field="bias_init")
    shape = tuple(shape)
    if name == "zeros":
        return jnp.zeros(shape, dtype)
    if name == "constant":
        return jnp.full(shape, value, jnp.float32).astype(dtype)
    if name == "standard":
        return _uniform(key, shape, 1.0 / math.sqrt(fan_in), dtype)
    return _normal(key, shape, sigma_b, dtype)  # mean_field, normal


def dense_params(key, fan_in: int, fan_out: int, *, kernel_init: str, bias_init: str,
                 mode: str = "fan_in", gain=1.0, sigma_w=1.0, sigma_b=0.0, bias_value=0.0,
                 negative_slope=0.0, dtype=jnp.float32) -> tuple[Array, Array]:
    """(kernel (fan_in, fan_out), bias (fan_out,)) of one dense layer.

    Kernel and bias use independent halves of ``key``. With
    ``kernel_init="rai"`` both come from one :func:`rai` draw and ``bias_init``
    is ignored (RAI sets the bias).
    """
    kernel_init = check_kernel_init(kernel_init, field="kernel_init")
    bias_init = check_bias_init(bias_init, field="bias_init")
    if kernel_init == "rai":
        return rai(key, fan_in, fan_out, gain=gain, dtype=dtype)
    k_w, k_b = jax.random.split(key)
    w = kernel(kernel_init, k_w, (fan_in, fan_out), mode=mode, gain=gain,
               sigma_w=sigma_w, negative_slope=negative_slope, dtype=dtype)
    b = bias(bias_init, k_b, (fan_out,), fan_in=fan_in, sigma_b=sigma_b,
             value=bias_value, dtype=dtype)
    return w, b
