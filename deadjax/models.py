"""The multilayer perceptron, written for one member (Flax linen).

Layer ``l`` of ``widths`` computes

    z_l = W_l^T h_{l-1} + b_l          (``Dense_l``; no bias when normalised)
    z_l = Norm_l(z_l)                  (``BatchNorm_l`` / ``LayerNorm_l``, optional)
    a_l = phi(z_l)                     (activation; ``PReLU_l`` holds a learnt slope)
    a_l = dropout(a_l)                 (inverted dropout, training only)
    h_l = h_{l-1} + a_l  if residual and l > 0 and the widths match, else a_l

and ``Dense_L`` (``L = len(widths)``) maps ``h_{L-1}`` to the logits. With
``widths = ()`` the model is logistic regression.

BatchNorm sits between the affine map and the nonlinearity, as in Ioffe &
Szegedy (2015, Sec. 3.2: "we add the BN transform immediately before the
nonlinearity"), and the affine map then has no bias since BN's shift replaces
it. Per-member values (``sigma_w``, ``sigma_b``, ``leaky_slope``, ``dropout``)
arrive as (traced) call arguments, never as module attributes, so one compiled
program serves a whole population.

``switched`` (activation reset, :mod:`deadjax.interventions`): one bool
``(width,)`` mask per hidden layer; a switched unit computes
``reset_activation`` (with slope ``hyper["reset_slope"]``) in place of phi,
and so does its captured derivative.

``capture=True`` also returns, per hidden layer, the affine outputs ``W^T h + b``
(``affine``), the pre-activations ``z_l`` (``pre``: what enters phi, after
normalisation), the unit activations ``phi(z_l)`` (``post``), the derivatives
``phi'(z_l)`` (``dphi``) and the layer outputs ``h_l`` (``out``). ``perturb`` adds a zero tensor to each ``z_l``
so that the gradient with respect to it is ``delta_l = dL/dz_l``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deadjax import activations, initializers

PRELU_INITIAL_SLOPE = 0.25  # He et al. (2015), Sec. 2.1: "we use a_i = 0.25 as the initialization"
BATCHNORM_MOMENTUM = 0.9    # running average decay of the batch statistics
NORM_EPSILON = 1e-5


class Dense(nn.Module):
    """``x @ kernel + bias`` with kernel and bias drawn jointly (RAI needs both)."""

    features: int
    use_bias: bool
    kernel_init: str
    bias_init: str
    init_mode: str
    init_gain: float
    bias_value: float

    @nn.compact
    def __call__(self, x, sigma_w, sigma_b, negative_slope=0.0):
        fan_in = x.shape[-1]
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # x64 aware
        if self.is_initializing():
            # One draw for both (RAI draws them jointly), made once.
            kernel, bias = initializers.dense_params(
                self.make_rng("params"), fan_in, self.features, kernel_init=self.kernel_init,
                bias_init=self.bias_init, mode=self.init_mode, gain=self.init_gain,
                sigma_w=sigma_w, sigma_b=sigma_b, bias_value=self.bias_value,
                negative_slope=negative_slope, dtype=dtype)
        else:
            # Flax checks the stored parameters against the initialisers' shapes.
            kernel = jnp.zeros((fan_in, self.features), dtype)
            bias = jnp.zeros((self.features,), dtype)
        y = jnp.dot(x, self.param("kernel", lambda _: kernel))
        if self.use_bias:
            y = y + self.param("bias", lambda _: bias)
        return y


def inverted_dropout(key, rate, x):
    """Keeps each entry with probability ``1 - rate`` and scales it by ``1/(1 - rate)``
    (Srivastava et al. 2014, with the scaling moved to training time), so the
    expected activation is unchanged and evaluation uses the network as is.
    ``rate`` may be a traced per-member value; rate 0 is the identity exactly."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class MLP(nn.Module):
    widths: Sequence[int]
    num_outputs: int
    activation: str = "relu"
    kernel_init: str = "he_normal"
    bias_init: str = "zeros"
    init_mode: str = "fan_in"
    init_gain: float = 1.0
    bias_value: float = 0.0
    norm: str = "none"
    residual: bool = False
    reset_activation: str = "leaky_relu"

    @nn.compact
    def __call__(self, x, hyper: Mapping[str, Any], *, train: bool = False,
                 dropout_key=None, perturb=None, capture: bool = False, switched=None):
        act = activations.get(self.activation)
        alt = activations.get(self.reset_activation)
        dense = dict(kernel_init=self.kernel_init, bias_init=self.bias_init,
                     init_mode=self.init_mode, init_gain=self.init_gain,
                     bias_value=self.bias_value)
        sigma_w, sigma_b = hyper["sigma_w"], hyper["sigma_b"]
        # The negative slope a of He et al.'s eq. 15 (read by he_leaky_* only):
        # the member's leaky slope, PReLU's initial slope, else 0.
        init_slope = initializers.negative_slope_of(act.name, hyper.get("leaky_slope"),
                                                    PRELU_INITIAL_SLOPE)
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 under jax_enable_x64
        cap = {"affine": [], "pre": [], "post": [], "dphi": [], "out": []}
        h = x
        for l, width in enumerate(self.widths):
            z = Dense(width, use_bias=self.norm == "none", name=f"Dense_{l}",
                      **dense)(h, sigma_w, sigma_b, init_slope)
            if capture:
                cap["affine"].append(z)
            if self.norm == "batch":
                z = nn.BatchNorm(use_running_average=not train, momentum=BATCHNORM_MOMENTUM,
                                 epsilon=NORM_EPSILON, param_dtype=dtype,
                                 name=f"BatchNorm_{l}")(z)
            elif self.norm == "layer":
                z = nn.LayerNorm(epsilon=NORM_EPSILON, param_dtype=dtype,
                                 name=f"LayerNorm_{l}")(z)
            if perturb is not None:
                z = z + perturb[l]
            if act.learnable_slope:
                slope = self.param(f"PReLU_{l}",
                                   nn.initializers.constant(PRELU_INITIAL_SLOPE), (width,), dtype)
            else:
                slope = hyper["leaky_slope"]
            a = act.fn(z, slope)
            if switched is not None:
                a = jnp.where(switched[l], alt.fn(z, hyper["reset_slope"]), a)
            if capture:
                dphi = act.derivative(z, slope)
                if switched is not None:
                    dphi = jnp.where(switched[l], alt.derivative(z, hyper["reset_slope"]), dphi)
                cap["pre"].append(z)
                cap["post"].append(a)
                cap["dphi"].append(dphi)
            if train and dropout_key is not None:
                a = inverted_dropout(jax.random.fold_in(dropout_key, l), hyper["dropout"], a)
            h = h + a if (self.residual and l > 0 and h.shape[-1] == width) else a
            if capture:
                cap["out"].append(h)
        logits = Dense(self.num_outputs, use_bias=True, name=f"Dense_{len(self.widths)}",
                       **dense)(h, sigma_w, sigma_b, init_slope)
        if capture:
            return logits, cap
        return logits


def from_config(config, num_outputs: int) -> MLP:
    """The MLP of a config's static ``model.*`` fields."""
    m = config.model
    return MLP(widths=tuple(m.widths), num_outputs=num_outputs,
               activation=activations.canonical(m.activation),
               kernel_init=initializers.check_kernel_init(m.kernel_init),
               bias_init=initializers.check_bias_init(m.bias_init),
               init_mode=m.init_mode, init_gain=float(m.init_gain),
               bias_value=float(m.bias_value), norm=m.norm, residual=bool(m.residual),
               reset_activation=activations.canonical(config.interventions.reset_activation,
                                                      "interventions.reset_activation"))
