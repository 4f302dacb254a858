"""Every diagnostic of one member, on the probe batch, in eval mode.

:func:`probe_pass` runs the model once on the probe batch (capturing each
hidden layer's pre-activations ``z_l``, unit activations ``phi(z_l)``,
derivatives ``phi'(z_l)`` and outputs ``h_l``) and differentiates the mean
probe loss with respect to the parameters and to each ``z_l`` (``delta_l =
dL/dz_l``). The diagnostic families of :data:`FAMILIES` (a registry, chosen by
``diagnostics.families``) hand these arrays to the pure functions of
:mod:`deadjax.metrics` and name the results as DESIGN.md does: a family's
``every`` function runs at every evaluation, its ``full`` function (per hidden
layer) at full evaluations only (every ``diagnostics.full_every``-th, the
first and the last). A new diagnostic is one function and its entry here.

Everything here measures: state in, scalars out. Updating what the trainer
carries from one evaluation to the next (the previous dead masks, the
born-dead flag) is the trainer's (:func:`deadjax.population.make_program`'s
``observe``). Definitions live in :mod:`deadjax.metrics` and
``docs/metrics.md``. These functions run inside the compiled program of a
population, vmapped over members.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from deadjax import activations, linalg, metrics, models


class Probe(NamedTuple):
    """What the diagnostics read of one member at an evaluation: its probe
    pass (:func:`probe_pass`), its parameters and batch statistics, and the
    trainer's carry (update ratios of the last step, dead masks at the
    previous evaluation, whether there was one)."""
    logits: jax.Array
    cap: dict
    gparams: Any
    deltas: Any
    params: Any
    batch_stats: Any
    update_ratio: jax.Array
    prev_dead: tuple
    has_prev: jax.Array


class Context(NamedTuple):
    """The static side: ``config.diagnostics``, the activation, the hidden
    widths, ``model.norm`` and ``model.residual``."""
    settings: Any
    activation: activations.Activation
    widths: tuple
    norm: str
    residual: bool

    @classmethod
    def of(cls, config) -> "Context":
        return cls(config.diagnostics, activations.get(config.model.activation),
                   tuple(config.model.widths), config.model.norm, bool(config.model.residual))


def probe_pass(apply_fn: Callable, loss_fn: Callable, params, widths, probe_x, probe_y):
    """One member's forward and backward pass on the probe batch, eval mode:
    ``(logits, captures, parameter gradients, deltas)`` of the mean probe
    loss, ``deltas[l] = dL/dz_l``. ``apply_fn(params, x, perturb=, capture=)``
    is the member's model, ``loss_fn(outputs, targets)`` its training loss."""
    dtype = jax.tree.leaves(params)[0].dtype
    zeros = [jnp.zeros((probe_x.shape[0], w), dtype) for w in widths]

    def probe_loss(p, perturb):
        logits, cap = apply_fn(p, probe_x, perturb=perturb, capture=True)
        return loss_fn(logits, probe_y), (logits, cap)

    (_, (logits, cap)), (gparams, deltas) = jax.value_and_grad(
        probe_loss, argnums=(0, 1), has_aux=True)(params, zeros)
    return logits, cap, gparams, deltas


def dead_masks(probe: Probe, ctx: Context) -> tuple:
    """Per hidden layer, the bool ``(width,)`` mask of dead units
    (:func:`deadjax.metrics.dead_units` with ``diagnostics.dead_threshold``)."""
    return tuple(metrics.dead_units(d, ctx.activation.max_derivative,
                                    ctx.settings.dead_threshold) for d in probe.cap["dphi"])


# --------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------

def _layers(ctx):
    return [(l, f"layer_{l}") for l in range(len(ctx.widths))]


def _dead(p: Probe, ctx: Context) -> dict:
    out = {}
    total = jnp.zeros((), jnp.float32)
    nan = jnp.full((), jnp.nan, jnp.float32)
    for (l, where), dead in zip(_layers(ctx), dead_masks(p, ctx)):
        total = total + dead.sum()
        out[f"dead_fraction/{where}"] = metrics.layer_fraction(dead)
        prev = p.prev_dead[l]
        out[f"dead_persistent/{where}"] = jnp.where(p.has_prev, metrics.persistent(dead, prev),
                                                    nan)
        out[f"revived/{where}"] = jnp.where(p.has_prev, metrics.revived(dead, prev), nan)
    if ctx.widths:
        out["dead_fraction/all"] = total / sum(ctx.widths)
    return out


def _dormant(p: Probe, ctx: Context) -> dict:
    return {f"dormant_ratio_{tau:g}/{where}": metrics.layer_fraction(
                metrics.dormant_units(p.cap["post"][l], tau))
            for l, where in _layers(ctx) for tau in ctx.settings.dormant_taus}


def _saturation(p: Probe, ctx: Context) -> dict:
    out = {}
    act = ctx.activation
    for l, where in _layers(ctx):
        if act.bounded:
            out[f"saturation/{where}"] = metrics.saturation_fraction(
                p.cap["dphi"][l], act.max_derivative, ctx.settings.saturation_threshold)
        for name, value in metrics.preact_moments(p.cap["pre"][l]).items():
            out[f"preact_{name}/{where}"] = value
    return out


def _saturation_full(p: Probe, ctx: Context) -> dict:
    return {f"preact_{name}/{where}": value for l, where in _layers(ctx)
            for name, value in metrics.preact_percentiles(p.cap["pre"][l]).items()}


def _gradients(p: Probe, ctx: Context) -> dict:
    out = {f"delta_norm/{where}": jnp.linalg.norm(p.deltas[l]) for l, where in _layers(ctx)}
    names = [where for _, where in _layers(ctx)] + ["out"]
    for i, where in enumerate(names):
        g = p.gparams[f"Dense_{i}"]
        out[f"grad_norm/{where}"] = jnp.linalg.norm(g["kernel"])
        out[f"bias_grad_norm/{where}"] = (jnp.linalg.norm(g["bias"]) if "bias" in g
                                          else jnp.full((), jnp.nan, jnp.float32))
        out[f"weight_norm/{where}"] = jnp.linalg.norm(p.params[f"Dense_{i}"]["kernel"])
        out[f"update_ratio/{where}"] = p.update_ratio[i]
    if ctx.widths:
        out["grad_norm_ratio"] = (out["grad_norm/layer_0"]
                                  / out[f"grad_norm/layer_{len(ctx.widths) - 1}"])
    return out


def _signal(p: Probe, ctx: Context) -> dict:
    out = {}
    for l, where in _layers(ctx):
        out[f"q/{where}"] = metrics.q_value(p.cap["pre"][l])
        out[f"c/{where}"] = metrics.c_value(p.cap["pre"][l])
    return out


def _layer_jacobians(p: Probe, ctx: Context, l: int, n: int):
    """Jacobians d h_l / d h_{l-1} of hidden layer ``l`` at the first ``n`` probe
    inputs, shape (n, width_l, width_{l-1}), in eval mode (Glorot & Bengio 2010,
    Sec. 4.2.2). Without normalisation it is diag(phi'(z_l)) W_l^T; BatchNorm in
    eval mode is a per-unit affine map, so its scale gamma/sqrt(var+eps) joins
    the diagonal; LayerNorm contributes its full Jacobian; a residual layer adds
    the identity."""
    w = p.params[f"Dense_{l}"]["kernel"]  # (in, out)
    dphi = p.cap["dphi"][l][:n]
    if ctx.norm == "batch":
        bn = p.batch_stats[f"BatchNorm_{l}"]
        scale = p.params[f"BatchNorm_{l}"]["scale"] / jnp.sqrt(bn["var"] + models.NORM_EPSILON)
        jac = (dphi * scale)[:, :, None] * w.T[None]
    elif ctx.norm == "layer":
        u = p.cap["affine"][l][:n]
        width = u.shape[-1]
        mu = u.mean(-1, keepdims=True)
        sigma = jnp.sqrt(((u - mu) ** 2).mean(-1, keepdims=True) + models.NORM_EPSILON)
        u_hat = (u - mu) / sigma
        gamma = p.params[f"LayerNorm_{l}"]["scale"]
        eye = jnp.eye(width)
        dnorm = (gamma[None, :, None] / sigma[:, :, None]) * (
            eye[None] - 1.0 / width - u_hat[:, :, None] * u_hat[:, None, :] / width)
        jac = dphi[:, :, None] * jnp.einsum("nij,jk->nik", dnorm, w.T)
    else:
        jac = dphi[:, :, None] * w.T[None]
    if ctx.residual and l > 0 and w.shape[0] == w.shape[1]:
        jac = jac + jnp.eye(w.shape[1])[None]
    return jac


def _per_shape(fn, arrays):
    """``[fn(a) for a in arrays]``, with the arrays of one shape stacked into
    one vmapped call: layers of equal width share their linear algebra (one
    batched solve instead of one per layer)."""
    groups: dict = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    out = [None] * len(arrays)
    for members in groups.values():
        values = jax.vmap(fn)(jnp.stack([arrays[i] for i in members]))
        for j, i in enumerate(members):
            out[i] = values[j]
    return out


def _gram(j):
    """The smaller Gram matrix of ``j`` (m, n), ``j j^T`` when m <= n (else
    ``j^T j``), with its eigenvalues for exactly-zero rows of ``j`` moved
    below zero (see :func:`_mean_singular_value`)."""
    if j.shape[0] > j.shape[1]:
        return j.T @ j
    gram = j @ j.T
    zero_rows = jnp.all(j == 0, axis=1)
    return gram - jnp.diag(jnp.where(zero_rows, jnp.max(jnp.diagonal(gram)), 0.0))


def _mean_singular_value(gram):
    """Mean of the min(m, n) singular values of a matrix ``j`` (m, n), from
    the eigenvalues of its smaller Gram matrix (:func:`_gram`), by
    :func:`deadjax.linalg.symmetric_eigenvalues`, square roots of the
    eigenvalues clipped at 0.

    Accuracy: the Gram matrix squares the condition number, so a small
    singular value carries an absolute error of about sqrt(eps) * sigma_max.
    Exactly-zero singular values are frequent: a unit with phi'(z) = 0 at
    the input (dead there) makes a zero row of the Jacobian, and a zero row
    and column of ``j j^T``. The eigensolver would return the zeros of that
    decoupled block as +-eps * lambda_max, whose square roots (~3e-4
    sigma_max each) would move the mean by ~1e-4 and make it jump with any
    rounding-level change of the weights (one device against four). So
    :func:`_gram` sets the diagonal of those rows to ``-max_i G_ii``: the
    block stays decoupled, its eigenvalues move to ``-max_i G_ii`` (clipped
    to exactly 0) and the others are those of the remaining units' block,
    unchanged. What is left is the Gram error on small non-zero singular
    values, ~1e-5 relative on the mean; the backward-stable route of
    :func:`deadjax.metrics.singular_values` costs about twice as much per
    Jacobian on CPU and ~8 times on GPUs, and there are
    ``jacobian_probe_size`` of them per layer and member."""
    return jnp.sqrt(jnp.clip(linalg.symmetric_eigenvalues(gram), 0.0, None)).mean()


def _jacobian_full(p: Probe, ctx: Context) -> dict:
    grams = []
    for l, _ in _layers(ctx):
        n = min(ctx.settings.jacobian_probe_size, p.cap["pre"][l].shape[0])
        grams.append(jax.vmap(_gram)(_layer_jacobians(p, ctx, l, n)))
    svs = _per_shape(lambda g: jax.vmap(_mean_singular_value)(g).mean(), grams)
    return {f"jacobian_sv/{where}": sv for (_, where), sv in zip(_layers(ctx), svs)}


def _rank_full(p: Probe, ctx: Context) -> dict:
    ranks = _per_shape(metrics.effective_rank, [p.cap["out"][l] for l, _ in _layers(ctx)])
    return {f"effective_rank/{where}": rank for (_, where), rank in zip(_layers(ctx), ranks)}


def _output(p: Probe, ctx: Context) -> dict:
    return {"output_constant": metrics.output_constant(p.logits).astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of diagnostics: ``every(probe, ctx) -> {name: scalar}`` at every
    evaluation; ``full(probe, ctx) -> {name: scalar}`` (every hidden layer's)
    at full evaluations only; either may be None."""
    name: str
    doc: str
    every: Callable[[Probe, Context], dict] | None = None
    full: Callable[[Probe, Context], dict] | None = None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dead", "dead_fraction/*, dead_persistent/*, revived/*", every=_dead),
    Family("dormant", "dormant_ratio_{tau:g}/*", every=_dormant),
    Family("saturation", "saturation/* (bounded activations), preact_mean/*, preact_std/*; "
           "preact_p15/p50/p85 at full evaluations", every=_saturation, full=_saturation_full),
    Family("gradients", "grad_norm/*, bias_grad_norm/*, delta_norm/*, update_ratio/*, "
           "weight_norm/*, grad_norm_ratio", every=_gradients),
    Family("signal", "q/*, c/*", every=_signal),
    Family("jacobian", "jacobian_sv/* at full evaluations", full=_jacobian_full),
    Family("rank", "effective_rank/* at full evaluations", full=_rank_full),
    Family("output", "output_constant and born_dead (always measured: the born-dead "
           "flag needs it)", every=_output),
)}
FAMILY_NAMES = tuple(FAMILIES)

# Families measured whatever diagnostics.families says: the trainer's carry
# (born_dead) reads their values.
ALWAYS = ("output",)


def _chosen(ctx: Context) -> list[Family]:
    wanted = set(ctx.settings.families) | set(ALWAYS)
    return [f for name, f in FAMILIES.items() if name in wanted]


def measure(probe: Probe, ctx: Context) -> dict:
    """The diagnostics of every evaluation, for one member: ``{name: scalar}``."""
    out: dict = {}
    for fam in _chosen(ctx):
        if fam.every is not None:
            out.update(fam.every(probe, ctx))
    return out


def measure_full(probe: Probe, ctx: Context):
    """The costly diagnostics of a full evaluation, for one member:
    ``(scalars, histograms)``: the chosen families' ``full`` parts and every
    layer's histograms of pre-activations, activations and deltas
    (:func:`deadjax.metrics.histogram`)."""
    out: dict = {}
    for fam in _chosen(ctx):
        if fam.full is not None:
            out.update(fam.full(probe, ctx))
    hists: dict = {}
    cap = probe.cap
    for l, where in _layers(ctx):
        for kind, values in (("preact", cap["pre"][l]), ("activation", cap["post"][l]),
                             ("delta", probe.deltas[l])):
            hists[f"{kind}/{where}"] = metrics.histogram(values, ctx.settings.histogram_bins)
    return out, hists
