"""deadjax.activations against independent NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from deadjax import activations
from deadjax.config import ConfigError

LAM, ALPHA = 1.0507009873554805, 1.6732632423543772
SLOPE = 0.1

Z = np.array([-50.0, -8.0, -2.5, -1.0, -0.3, 0.0, 0.3, 1.0, 2.5, 8.0, 50.0])


def _sig(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable logistic


def _Phi(z):
    return 0.5 * (1.0 + erf(z / math.sqrt(2.0)))


def _pdf(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# name -> (phi, phi') in float64 NumPy, slope a = SLOPE where used.
REF = {
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (lambda z: np.where(z > 0, z, SLOPE * z),
                   lambda z: np.where(z > 0, 1.0, SLOPE)),
    "prelu": (lambda z: np.where(z > 0, z, SLOPE * z), lambda z: np.where(z > 0, 1.0, SLOPE)),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
            lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))),
    "selu": (lambda z: LAM * np.where(z > 0, z, ALPHA * np.expm1(np.minimum(z, 0))),
             lambda z: LAM * np.where(z > 0, 1.0, ALPHA * np.exp(np.minimum(z, 0)))),
    "gelu": (lambda z: z * _Phi(z), lambda z: _Phi(z) + z * _pdf(z)),
    "silu": (lambda z: z * _sig(z), lambda z: _sig(z) * (1 + z * (1 - _sig(z)))),
    "softplus": (lambda z: np.logaddexp(0.0, z), _sig),
    "softsign": (lambda z: z / (1 + np.abs(z)), lambda z: 1 / (1 + np.abs(z)) ** 2),
    "sigmoid": (_sig, lambda z: _sig(z) * (1 - _sig(z))),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
}


def test_names_cover_the_contract():
    assert set(activations.NAMES) == set(REF)


@pytest.mark.parametrize("name", sorted(REF))
def test_fn_and_derivative_match_numpy(name):
    act = activations.get(name)
    phi, dphi = REF[name]
    z = jnp.asarray(Z, jnp.float32)
    np.testing.assert_allclose(act.fn(z, SLOPE), phi(Z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.derivative(z, SLOPE), dphi(Z), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(act.fn(z, SLOPE))) and np.all(np.isfinite(act.derivative(z, SLOPE)))


@pytest.mark.parametrize("name", sorted(REF))
def test_derivative_matches_autodiff_away_from_kinks(name):
    act = activations.get(name)
    z = jnp.asarray([-3.0, -1.2, -0.4, 0.4, 1.3, 3.0], jnp.float32)
    auto = jax.vmap(jax.grad(lambda x: act.fn(x, SLOPE)))(z)
    np.testing.assert_allclose(act.derivative(z, SLOPE), auto, rtol=1e-5, atol=1e-6)


def test_kink_conventions():
    z = jnp.zeros(3)
    assert np.all(activations.get("relu").derivative(z, SLOPE) == 0.0)
    assert np.all(activations.get("leaky_relu").derivative(z, SLOPE) == np.float32(SLOPE))
    assert np.all(activations.get("prelu").derivative(z, SLOPE) == np.float32(SLOPE))


def test_bounded_flags():
    bounded = {n for n in activations.NAMES if activations.get(n).bounded}
    assert bounded == {"sigmoid", "tanh", "softsign"}


@pytest.mark.parametrize("name", sorted(REF))
def test_max_derivative_numerically(name):
    act = activations.get(name)
    z = np.linspace(-20.0, 20.0, 400_001)  # step 1e-4
    sup = np.max(np.abs(REF[name][1](z)))
    # The grid includes the maximisers (0, ±√2 within 1e-4, 2.3994 within 1e-4); softplus' sup 1
    # is approached as z -> inf (σ(20) = 1 - 2e-9).
    assert act.max_derivative == pytest.approx(sup, rel=1e-6, abs=1e-8)
    assert np.max(np.abs(np.asarray(act.derivative(jnp.asarray(z, jnp.float32), SLOPE)))) <= (
        act.max_derivative * (1 + 1e-6))


def test_documented_sup_values():
    assert activations.get("sigmoid").max_derivative == 0.25
    assert activations.get("selu").max_derivative == pytest.approx(1.7581, abs=1e-4)
    assert activations.get("gelu").max_derivative == pytest.approx(1.1289, abs=1e-4)
    assert activations.get("silu").max_derivative == pytest.approx(1.0998, abs=1e-4)


def test_slope_flags():
    assert [n for n in activations.NAMES if activations.get(n).uses_slope] == [
        "leaky_relu", "prelu"]
    assert [n for n in activations.NAMES if activations.get(n).learnable_slope] == ["prelu"]
    assert activations.get("prelu").default_slope == 0.25


@pytest.mark.parametrize("alias,name", [("swish", "silu"), ("linear", "identity"),
                                        ("lrelu", "leaky_relu"), ("logistic", "sigmoid"),
                                        ("ReLU", "relu"), ("leaky-relu", "leaky_relu")])
def test_aliases(alias, name):
    assert activations.canonical(alias) == name
    assert activations.get(alias) is activations.get(name)


@pytest.mark.parametrize("bad", ["relu6", "", None, 3])
def test_unknown_name_is_a_config_error(bad):
    with pytest.raises(ConfigError) as info:
        activations.get(bad, field="model.activation")
    msg = str(info.value)
    assert "model.activation" in msg and repr(bad) in msg and "'leaky_relu'" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


def test_vmap_over_per_member_slope():
    act = activations.get("leaky_relu")
    slopes = jnp.asarray([0.0, 0.01, 0.3, 1.0])
    z = jnp.asarray(Z, jnp.float32)
    out = jax.jit(jax.vmap(act.fn, in_axes=(None, 0)))(z, slopes)
    der = jax.jit(jax.vmap(act.derivative, in_axes=(None, 0)))(z, slopes)
    for i, a in enumerate(np.asarray(slopes)):
        np.testing.assert_allclose(out[i], np.where(Z > 0, Z, a * Z), rtol=1e-6)
        np.testing.assert_allclose(der[i], np.where(Z > 0, 1.0, a), rtol=1e-6)


def test_per_unit_slope_broadcasts():
    act = activations.get("prelu")
    z = -jnp.ones((5, 3))
    slope = jnp.asarray([0.1, 0.2, 0.3])
    np.testing.assert_allclose(act.fn(z, slope), -np.broadcast_to([0.1, 0.2, 0.3], (5, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(act.derivative(z, slope),
                               np.broadcast_to([0.1, 0.2, 0.3], (5, 3)), rtol=1e-6)
