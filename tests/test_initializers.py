"""deadjax.initializers against the formulas of the original papers.

Variance checks use a (600, 400) kernel (N = 240,000 entries). The standard
error of a sample variance is Var·√(2/N) ≈ 0.29 % for a normal and
Var·3·√(4/45)/√N ≈ 0.18 % for a uniform; we allow 5 standard errors
(TOL = 1.5 %). Keys are fixed, so the tests are deterministic.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import initializers as I
from deadjax.config import ConfigError

FAN_IN, FAN_OUT = 600, 400
N = FAN_IN * FAN_OUT
TOL = 5 * math.sqrt(2.0 / N)  # ≈ 1.44 %: 5 normal standard errors (covers uniforms too)
KEY = jax.random.key(42)

# name -> (variance, uniform bound or None), mode="fan_in", gain=1.
PAPER = {
    "standard": (1 / (3 * FAN_IN), 1 / math.sqrt(FAN_IN)),                    # G&B eq. 1
    "glorot_uniform": (2 / (FAN_IN + FAN_OUT), math.sqrt(6 / (FAN_IN + FAN_OUT))),  # eq. 16
    "glorot_normal": (2 / (FAN_IN + FAN_OUT), None),
    "he_normal": (2 / FAN_IN, None),                                          # He eq. 10
    "he_uniform": (2 / FAN_IN, math.sqrt(6 / FAN_IN)),
    "lecun_normal": (1 / FAN_IN, None),                                       # LeCun 1998
    "lecun_uniform": (1 / FAN_IN, math.sqrt(3 / FAN_IN)),
    "mean_field": (1 / FAN_IN, None),                                         # σ_w = 1
}


def _var(w):
    return float(np.var(np.asarray(w, np.float64)))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_variance_and_range(name):
    var, bound = PAPER[name]
    w = I.kernel(name, KEY, (FAN_IN, FAN_OUT))
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == jnp.float32
    assert _var(w) == pytest.approx(var, rel=TOL)
    assert abs(float(jnp.mean(w))) < 5 * math.sqrt(var / N)
    if bound is not None:
        assert float(jnp.max(jnp.abs(w))) <= bound * (1 + 1e-6)
        assert float(jnp.max(jnp.abs(w))) > 0.999 * bound


@pytest.mark.parametrize("name", sorted(PAPER))
def test_gain_multiplies_std(name):
    w1 = I.kernel(name, KEY, (FAN_IN, FAN_OUT))
    w3 = I.kernel(name, KEY, (FAN_IN, FAN_OUT), gain=3.0)
    np.testing.assert_allclose(w3, 3.0 * w1, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,var", [("he_normal", 2 / FAN_OUT), ("he_uniform", 2 / FAN_OUT),
                                      ("lecun_normal", 1 / FAN_OUT),
                                      ("lecun_uniform", 1 / FAN_OUT)])
def test_fan_out_mode(name, var):
    # He et al. 2015, eq. 14: the backward case uses n = fan_out.
    w = I.kernel(name, KEY, (FAN_IN, FAN_OUT), mode="fan_out")
    assert _var(w) == pytest.approx(var, rel=TOL)


def test_glorot_and_standard_ignore_mode():
    for name in ("glorot_uniform", "glorot_normal", "standard", "mean_field"):
        a = I.kernel(name, KEY, (FAN_IN, FAN_OUT), mode="fan_in")
        b = I.kernel(name, KEY, (FAN_IN, FAN_OUT), mode="fan_out")
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(128, 128), (160, 64), (64, 160)])
def test_orthogonal(shape):
    gain = 1.7
    w = np.asarray(I.kernel("orthogonal", KEY, shape, gain=gain), np.float64)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(shape)), atol=2e-5)


def test_orthogonal_traced_gain_under_vmap():
    gains = jnp.asarray([0.5, 2.0])
    w = jax.vmap(lambda g: I.kernel("orthogonal", KEY, (64, 32), gain=g))(gains)
    for i, g in enumerate([0.5, 2.0]):
        np.testing.assert_allclose(w[i].T @ w[i], g**2 * np.eye(32), atol=1e-5)


def test_mean_field_per_member_sigma_under_vmap():
    sigma_w = jnp.asarray([0.5, 1.0, 1.5, 2.5])
    sigma_b = jnp.asarray([0.0, 0.05, 0.3, 1.0])
    keys = jax.random.split(KEY, 4)

    @jax.jit
    @jax.vmap
    def init(k, sw, sb):
        return I.dense_params(k, FAN_IN, FAN_OUT, kernel_init="mean_field",
                              bias_init="mean_field", sigma_w=sw, sigma_b=sb)

    w, b = init(keys, sigma_w, sigma_b)
    assert w.shape == (4, FAN_IN, FAN_OUT) and b.shape == (4, FAN_OUT)
    for i in range(4):
        assert _var(w[i]) == pytest.approx(float(sigma_w[i]) ** 2 / FAN_IN, rel=TOL)
    # Bias: N(0, σ_b²) from FAN_OUT = 400 draws; rel. s.e. √(2/400) ≈ 7 %, allow 5 s.e.
    assert float(jnp.max(jnp.abs(b[0]))) == 0.0
    for i in range(1, 4):
        assert float(jnp.mean(b[i] ** 2)) == pytest.approx(float(sigma_b[i]) ** 2, rel=0.35)


def test_standard_bias_matches_pytorch_default():
    b = I.bias("standard", KEY, (200_000,), fan_in=FAN_IN)
    bound = 1 / math.sqrt(FAN_IN)
    assert float(jnp.max(jnp.abs(b))) <= bound * (1 + 1e-6)
    assert _var(b) == pytest.approx(bound**2 / 3, rel=5 * 0.9 / math.sqrt(200_000))


def test_constant_and_zeros_exact():
    w, b = I.dense_params(KEY, 7, 5, kernel_init="constant", bias_init="constant",
                          gain=0.3, bias_value=-0.2)
    np.testing.assert_array_equal(w, np.full((7, 5), np.float32(0.3)))
    np.testing.assert_array_equal(b, np.full((5,), np.float32(-0.2)))
    w, b = I.dense_params(KEY, 7, 5, kernel_init="zeros", bias_init="zeros")
    assert not np.any(np.asarray(w)) and not np.any(np.asarray(b))
    assert w.shape == (7, 5) and b.shape == (5,)


def test_dtype_and_jit_with_traced_scales():
    f = jax.jit(lambda g, sw: I.dense_params(KEY, 10, 4, kernel_init="he_normal",
                                             bias_init="standard", gain=g, sigma_w=sw,
                                             dtype=jnp.bfloat16))
    w, b = f(1.0, 2.0)
    assert w.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16


# --- RAI (Lu, Shin, Su & Karniadakis 2019, sec. 5) ---------------------------

RAI_IN, RAI_OUT = 50, 20_000


def _rai(gain):
    w, b = I.rai(KEY, RAI_IN, RAI_OUT, gain=gain)
    return np.concatenate([np.asarray(w), np.asarray(b)[None]], axis=0)  # v_j = column j


def test_rai_one_asymmetric_entry_per_unit():
    # With gain 0 the symmetric part P vanishes, leaving exactly the Q = Beta(2, 1) draws.
    v0 = _rai(0.0)
    nonzero = v0 != 0
    assert np.all(nonzero.sum(axis=0) == 1)
    q = v0[nonzero]
    assert np.all((q > 0) & (q < 1))
    # Beta(2, 1): mean 2/3 (var 1/18), E[x^2] = 1/2 (var of x^2 = 1/3 - 1/4 = 1/12).
    se = 1 / math.sqrt(RAI_OUT)
    assert q.mean() == pytest.approx(2 / 3, abs=5 * se * math.sqrt(1 / 18))
    assert (q**2).mean() == pytest.approx(1 / 2, abs=5 * se * math.sqrt(1 / 12))
    # The replaced index k_j is uniform over the fan_in + 1 entries (weights and bias).
    counts = nonzero.sum(axis=1)
    expected = RAI_OUT / (RAI_IN + 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100  # 50 degrees of freedom: P(chi2 > 100) ≈ 4e-5


def test_rai_symmetric_part_moments():
    v0, v1 = _rai(0.0), _rai(1.0)
    picked = v0 != 0
    np.testing.assert_array_equal(v1[picked], v0[picked])  # same key: same Q draws and indices
    p = v1[~picked].astype(np.float64)
    var = (0.6007 / math.sqrt(RAI_IN)) ** 2
    assert p.var() == pytest.approx(var, rel=5 * math.sqrt(2 / p.size))
    assert abs(p.mean()) < 5 * math.sqrt(var / p.size)


def test_rai_through_dense_params_ignores_bias_init():
    a = I.dense_params(KEY, 30, 40, kernel_init="rai", bias_init="zeros")
    b = I.dense_params(KEY, 30, 40, kernel_init="rai", bias_init="standard", sigma_b=5.0)
    w, bias = I.rai(KEY, 30, 40)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[0], w)
    np.testing.assert_array_equal(a[1], bias)
    np.testing.assert_array_equal(I.kernel("rai", KEY, (30, 40)), w)
    assert a[0].shape == (30, 40) and a[1].shape == (40,)


# --- names ------------------------------------------------------------------

def test_registries_cover_the_contract():
    assert set(I.KERNEL_INITS) >= {
        "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
        "lecun_normal", "orthogonal", "standard", "mean_field", "rai", "zeros", "constant"}
    assert set(I.BIAS_INITS) >= {"zeros", "constant", "mean_field", "standard"}


@pytest.mark.parametrize("alias,name", [("xavier_uniform", "glorot_uniform"),
                                        ("xavier_normal", "glorot_normal"),
                                        ("kaiming_uniform", "he_uniform"),
                                        ("kaiming_normal", "he_normal"),
                                        ("glorot", "glorot_uniform"), ("He_Normal", "he_normal")])
def test_kernel_aliases(alias, name):
    assert I.check_kernel_init(alias) == name
    np.testing.assert_array_equal(I.kernel(alias, KEY, (8, 4)), I.kernel(name, KEY, (8, 4)))


@pytest.mark.parametrize("check,field,bad", [
    (I.check_kernel_init, "model.kernel_init", "he_gaussian"),
    (I.check_kernel_init, "model.kernel_init", None),
    (I.check_bias_init, "model.bias_init", "rai"),
    (I.check_bias_init, "model.bias_init", "ones")])
def test_unknown_names_are_config_errors(check, field, bad):
    with pytest.raises(ConfigError) as info:
        check(bad, field=field)
    msg = str(info.value)
    assert field in msg and repr(bad) in msg and "'zeros'" in msg and msg.endswith(".")
    assert msg.count(". ") == 0


# --- He et al. 2015, eq. 15: the negative slope ---------------------------------

SLOPES = (0.0, 0.01, 0.25, 1.0, 3.0)


@pytest.mark.parametrize("name", ["he_leaky_normal", "he_leaky_uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_he_leaky_variance_with_a_traced_slope(name, mode):
    """Var W = 2 / ((1 + a^2) n) (He et al. 2015, eq. 15; n = fan_in, or fan_out for
    the backward case), with a traced per member (vmapped, jitted), within the
    module's 5-standard-error tolerance TOL = 1.44 % of the 240,000-entry sample
    variance. At a = 0.25 the slope-blind 2/n is 6.25 % larger, far outside it.
    Uniform draws reach their bound sqrt(6 / ((1 + a^2) n))."""
    fan = FAN_IN if mode == "fan_in" else FAN_OUT
    draw = jax.jit(jax.vmap(lambda a: I.kernel(name, KEY, (FAN_IN, FAN_OUT), mode=mode,
                                               negative_slope=a)))
    w = np.asarray(draw(jnp.asarray(SLOPES, jnp.float32)), np.float64)
    for a, wa in zip(SLOPES, w):
        var = 2.0 / ((1.0 + a * a) * fan)
        assert _var(wa) == pytest.approx(var, rel=TOL), a
        assert abs(wa.mean()) < 5 * math.sqrt(var / N)
        if a == 0.25:
            assert _var(wa) != pytest.approx(2.0 / fan, rel=TOL)   # the test tells them apart
        if name == "he_leaky_uniform":
            bound = math.sqrt(6.0 / ((1.0 + a * a) * fan))
            assert bound * 0.999 < np.abs(wa).max() <= bound * (1 + 1e-6)


def test_he_leaky_at_slope_zero_is_he_and_gain_applies():
    for leaky, plain in (("he_leaky_normal", "he_normal"), ("he_leaky_uniform", "he_uniform")):
        np.testing.assert_array_equal(I.kernel(leaky, KEY, (64, 32)),
                                      I.kernel(plain, KEY, (64, 32)))
        np.testing.assert_allclose(I.kernel(leaky, KEY, (64, 32), gain=2.0, negative_slope=0.5),
                                   2.0 / math.sqrt(1.25) * np.asarray(I.kernel(plain, KEY, (64, 32))),
                                   rtol=1e-6)


@pytest.mark.slow
def test_he_leaky_through_the_model_takes_the_members_slope():
    """In the MLP the slope comes from the activation: each member's own
    model.leaky_slope (traced) for leaky_relu, the initial 0.25 for prelu, 0 for
    relu (then every kernel equals he_normal's); every Dense layer, output
    included, uses it, as he_normal's 2/n is used on every layer."""
    from deadjax import models
    x = jnp.zeros((1, FAN_IN))
    hyper = {"sigma_w": jnp.ones(2), "sigma_b": jnp.zeros(2),
             "leaky_slope": jnp.asarray([0.25, 2.0]), "dropout": jnp.zeros(2)}

    def kernels(activation, init):
        model = models.MLP(widths=(FAN_OUT,), num_outputs=10, activation=activation,
                           kernel_init=init)
        init_fn = jax.jit(jax.vmap(lambda h: model.init({"params": KEY}, x, h)["params"]))
        p = init_fn(hyper)
        return [np.asarray(p[f"Dense_{l}"]["kernel"], np.float64) for l in range(2)]

    leaky = kernels("leaky_relu", "he_leaky_normal")
    for m, a in enumerate((0.25, 2.0)):
        assert _var(leaky[0][m]) == pytest.approx(2 / ((1 + a * a) * FAN_IN), rel=TOL)
        np.testing.assert_allclose(leaky[1][m].std(), math.sqrt(2 / ((1 + a * a) * FAN_OUT)),
                                   rtol=0.15)          # 4000 entries: 5 s.e. = 5.6 % of var
    prelu = kernels("prelu", "he_leaky_uniform")
    assert _var(prelu[0][0]) == pytest.approx(2 / (1.0625 * FAN_IN), rel=TOL)
    relu = kernels("relu", "he_leaky_normal")
    for got, want in zip(relu, kernels("relu", "he_normal")):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("activation", ["tanh", "elu", "sigmoid"])
def test_he_leaky_refused_for_activations_without_a_negative_slope(activation):
    from deadjax import config as config_lib
    from tests.conftest import tiny_config
    config_lib.validate(tiny_config(model__kernel_init="he_leaky_normal",
                                    model__activation="leaky_relu"))
    with pytest.raises(ConfigError) as info:
        config_lib.validate(tiny_config(model__kernel_init="he_leaky_normal",
                                        model__activation=activation))
    msg = str(info.value)
    assert msg.startswith("model.kernel_init = 'he_leaky_normal' is not allowed for "
                          f"model.activation = {activation!r};") and msg.endswith(".")
    assert msg.count(". ") == 0
