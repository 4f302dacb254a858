"""Activation functions by name, each with its closed-form derivative.

Every activation is an :class:`Activation`: ``fn(z, slope)`` computes φ(z) and
``derivative(z, slope)`` computes φ'(z) elementwise in closed form (no
``jax.grad``), so diagnostics (dead units, saturation, Jacobians W·diag(φ'))
can evaluate φ' directly; both are jit- and vmap-safe. ``slope`` is a scalar or
an array broadcastable to ``z`` (one value per unit, or per member under
``jax.vmap``) and is ignored unless ``uses_slope``.

Conventions
-----------
* ReLU-like kinks take the *left* derivative at z = 0: relu'(0) = 0 and
  leaky_relu'(0) = prelu'(0) = slope. So a ReLU unit is dead on a batch exactly
  when z ≤ 0 for every input (DESIGN.md, "Dead unit").
* ``max_derivative`` is sup_z |φ'(z)|, used to normalise saturation thresholds;
  for leaky_relu/prelu it assumes |slope| ≤ 1 and is 1.
* ``bounded`` is True for activations whose output is bounded on both sides
  (sigmoid, tanh, softsign); saturation (Glorot & Bengio, 2010) is defined for
  these only.

Formulas and sources
--------------------
=========== ================================================ ======================================
name        φ(z)                                             φ'(z); sup|φ'|
=========== ================================================ ======================================
relu        max(0, z)  (Nair & Hinton 2010)                  1[z > 0]; 1
leaky_relu  z if z > 0 else a·z  (Maas et al. 2013)          1 if z > 0 else a; 1 (|a| ≤ 1)
prelu       as leaky_relu, a learnable per unit, a₀ = 0.25   as leaky_relu; 1
            (He et al. 2015, "Delving deep into rectifiers")
elu         z if z > 0 else α(eᶻ − 1), α = 1                 1 if z > 0 else α eᶻ; 1
            (Clevert et al. 2016)
selu        λ·(z if z > 0 else α(eᶻ − 1)),                   λ if z > 0 else λα eᶻ; λα ≈ 1.7581
            λ = 1.0507009873554805, α = 1.6732632423543772
            (Klambauer et al. 2017)
gelu        z·Φ(z), Φ the standard normal CDF, exact erf form Φ(z) + z·φ_N(z); Φ(√2) + √2 φ_N(√2)
            (Hendrycks & Gimpel 2016; jax.nn.gelu(approximate=False))  ≈ 1.1289 (at z = √2)
silu        z·σ(z)  (Elfwing et al. 2018; Ramachandran et al. σ(z)(1 + z(1 − σ(z))); ≈ 1.0998
            2017 "swish" with β = 1)                         (at z ≈ 2.3994)
softplus    log(1 + eᶻ)  (Dugas et al. 2001)                 σ(z); 1 (supremum, not attained)
softsign    z / (1 + |z|)  (Bergstra et al. 2009;            1 / (1 + |z|)²; 1
            Glorot & Bengio 2010)
sigmoid     σ(z) = 1 / (1 + e⁻ᶻ)                             σ(z)(1 − σ(z)); 0.25
tanh        tanh(z)                                          1 − tanh²(z); 1
identity    z                                                1; 1
=========== ================================================ ======================================

φ_N is the standard normal density. The sup values for gelu and silu were
computed from the closed forms (gelu: φ'' = φ_N(z)(2 − z²) = 0 at z = √2;
silu: root of φ'' on a fine grid) and are checked numerically in the tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from deadjax.errors import ConfigError

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
PRELU_INIT = 0.25  # He et al. 2015, sec. 2.2: "we use a_i = 0.25 as the initialization"
LEAKY_DEFAULT = 0.01  # Maas et al. 2013


@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation: φ, its closed-form derivative, and its properties.

    ``fn(z, slope)`` and ``derivative(z, slope)``: ``slope`` only matters when
    ``uses_slope`` (leaky_relu, prelu); it may be omitted (None), in which case
    ``default_slope`` is used. ``learnable_slope`` (prelu) means the model holds
    a per-unit slope parameter initialised to ``default_slope`` = 0.25.
    """

    name: str
    fn: Callable
    derivative: Callable
    bounded: bool
    max_derivative: float
    uses_slope: bool = False
    learnable_slope: bool = False
    default_slope: float = 0.0

    def __call__(self, z, slope=None):
        return self.fn(z, slope)


def _slope(slope, default):
    return default if slope is None else slope


# --- φ and φ' ---------------------------------------------------------------

def _relu(z, slope=None):
    return jax.nn.relu(z)


def _relu_d(z, slope=None):
    return jnp.where(z > 0, 1.0, 0.0).astype(jnp.result_type(z, float))


def _make_leaky(default):
    def fn(z, slope=None):
        a = _slope(slope, default)
        return jnp.where(z > 0, z, a * z)

    def d(z, slope=None):
        a = _slope(slope, default)
        one = jnp.ones_like(z, dtype=jnp.result_type(z, float))
        return jnp.where(z > 0, one, a * one)

    return fn, d


_leaky, _leaky_d = _make_leaky(LEAKY_DEFAULT)
_prelu, _prelu_d = _make_leaky(PRELU_INIT)


def _elu(z, slope=None):
    return jax.nn.elu(z, alpha=1.0)


def _elu_d(z, slope=None):
    return jnp.where(z > 0, 1.0, jnp.exp(jnp.minimum(z, 0.0)))


def _selu(z, slope=None):
    return jax.nn.selu(z)


def _selu_d(z, slope=None):
    return SELU_LAMBDA * jnp.where(z > 0, 1.0, SELU_ALPHA * jnp.exp(jnp.minimum(z, 0.0)))


def _gelu(z, slope=None):
    return jax.nn.gelu(z, approximate=False)


def _gelu_d(z, slope=None):
    cdf = 0.5 * (1.0 + jax.lax.erf(z / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


def _silu(z, slope=None):
    return jax.nn.silu(z)


def _silu_d(z, slope=None):
    s = jax.nn.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _softplus(z, slope=None):
    return jax.nn.softplus(z)


def _softplus_d(z, slope=None):
    return jax.nn.sigmoid(z)


def _softsign(z, slope=None):
    return jax.nn.soft_sign(z)


def _softsign_d(z, slope=None):
    return 1.0 / jnp.square(1.0 + jnp.abs(z))


def _sigmoid(z, slope=None):
    return jax.nn.sigmoid(z)


def _sigmoid_d(z, slope=None):
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s)


def _tanh(z, slope=None):
    return jnp.tanh(z)


def _tanh_d(z, slope=None):
    return 1.0 - jnp.square(jnp.tanh(z))


def _identity(z, slope=None):
    return jnp.asarray(z)


def _identity_d(z, slope=None):
    return jnp.ones_like(z, dtype=jnp.result_type(z, float))


def _gelu_max() -> float:
    r2 = math.sqrt(2.0)
    return 0.5 * (1.0 + math.erf(1.0)) + r2 * math.exp(-1.0) / math.sqrt(2.0 * math.pi)


_REGISTRY: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", _relu, _relu_d, False, 1.0),
    Activation("leaky_relu", _leaky, _leaky_d, False, 1.0, uses_slope=True,
               default_slope=LEAKY_DEFAULT),
    Activation("prelu", _prelu, _prelu_d, False, 1.0, uses_slope=True,
               learnable_slope=True, default_slope=PRELU_INIT),
    Activation("elu", _elu, _elu_d, False, 1.0),
    Activation("selu", _selu, _selu_d, False, SELU_LAMBDA * SELU_ALPHA),
    Activation("gelu", _gelu, _gelu_d, False, _gelu_max()),            # ≈ 1.12886
    Activation("silu", _silu, _silu_d, False, 1.0998393),             # at z ≈ 2.39936
    Activation("softplus", _softplus, _softplus_d, False, 1.0),
    Activation("softsign", _softsign, _softsign_d, True, 1.0),
    Activation("sigmoid", _sigmoid, _sigmoid_d, True, 0.25),
    Activation("tanh", _tanh, _tanh_d, True, 1.0),
    Activation("identity", _identity, _identity_d, False, 1.0),
)}

NAMES: tuple[str, ...] = tuple(_REGISTRY)

ALIASES: dict[str, str] = {
    "swish": "silu",
    "linear": "identity",
    "none": "identity",
    "lrelu": "leaky_relu",
    "leakyrelu": "leaky_relu",
    "logistic": "sigmoid",
    "gelu_exact": "gelu",
}


def canonical(name, field: str = "model.activation") -> str:
    """The canonical registry name of ``name`` (an alias or a name, any case).

    Raises ConfigError with one sentence naming the field, the value and the
    allowed names.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        aliases = ", ".join(f"{a} -> {c}" for a, c in ALIASES.items())
        raise ConfigError(f"{field} = {name!r} is not allowed; choose one of "
                          f"{', '.join(repr(n) for n in NAMES)} (aliases: {aliases}).")
    return key


def get(name: str, field: str = "model.activation") -> Activation:
    """The :class:`Activation` called ``name`` (aliases resolved); ConfigError otherwise."""
    return _REGISTRY[canonical(name, field)]
