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

The ``sharpness`` family (off by default) is the exception to "on the probe
batch, in eval mode": it takes the top eigenvalue of the Hessian of the
member's training objective (``Context.objective``, built by the trainer) on
the sharpness batch (``Probe.loss_inputs``), in training mode, by the
Lanczos method, warm-started from the eigenvector it carries.

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


class LossInputs(NamedTuple):
    """What the member's training objective needs besides its parameters and
    batch statistics (the ``sharpness`` family): the examples it is taken on
    (the sharpness batch, :func:`deadjax.data.sharpness_indices`), the
    member's hyperparameters, the keyword arguments its remedies give the
    model's forward pass, and the learning rate its next update will use
    (:func:`deadjax.optim.current_learning_rate`)."""
    x: jax.Array
    y: jax.Array
    hparams: dict
    model_kwargs: dict
    learning_rate: jax.Array


class Probe(NamedTuple):
    """What the diagnostics read of one member at an evaluation: its probe
    pass (:func:`probe_pass`), its parameters and batch statistics, the
    trainer's carry (update ratios of the last step, dead masks at the
    previous evaluation, whether there was one, and each family's own carry,
    ``MemberState.carry``) and, where the ``sharpness`` family is chosen,
    what its training objective needs (:class:`LossInputs`, else None)."""
    logits: jax.Array
    cap: dict
    gparams: Any
    deltas: Any
    params: Any
    batch_stats: Any
    update_ratio: jax.Array
    prev_dead: tuple
    has_prev: jax.Array
    carry: dict = {}
    loss_inputs: LossInputs | None = None


class Context(NamedTuple):
    """The static side: ``config.diagnostics``, the activation, the hidden
    widths, ``model.norm``, ``model.residual`` and, for the ``sharpness``
    family, the member's training objective as the trainer builds it:
    ``objective(params, batch_stats, hparams, model_kwargs, x, y) -> scalar``
    (a static function of arrays, so this module needs nothing of the
    trainer's)."""
    settings: Any
    activation: activations.Activation
    widths: tuple
    norm: str
    residual: bool
    objective: Callable | None = None

    @classmethod
    def of(cls, config, objective: Callable | None = None) -> "Context":
        return cls(config.diagnostics, activations.get(config.model.activation),
                   tuple(config.model.widths), config.model.norm, bool(config.model.residual),
                   objective)


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


def _dead_carry(ctx: Context, params) -> dict:
    """The "dead" family's carry: the negative masks of the previous
    evaluation and whether there was one (False until the first, and after a
    resume from a checkpoint written before the carry existed)."""
    return {"negative": tuple(jnp.zeros((w,), bool) for w in ctx.widths),
            "valid": jnp.zeros((), bool)}


def _dead(p: Probe, ctx: Context):
    """dead_fraction (phi' = 0 on every probe input, the trainer carries its
    masks for dead_persistent and revived) and negative_fraction (z <= 0 on
    every probe input, :func:`deadjax.metrics.negative_units`, the same notion
    for ReLU and one that works for every activation), with its analogues
    negative_persistent and negative_revived from the family's carry."""
    out = {}
    total = jnp.zeros((), jnp.float32)
    negative_total = jnp.zeros((), jnp.float32)
    nan = jnp.full((), jnp.nan, jnp.float32)
    carry = p.carry["dead"]
    negatives = []
    for (l, where), dead in zip(_layers(ctx), dead_masks(p, ctx)):
        total = total + dead.sum()
        out[f"dead_fraction/{where}"] = metrics.layer_fraction(dead)
        prev = p.prev_dead[l]
        out[f"dead_persistent/{where}"] = jnp.where(p.has_prev, metrics.persistent(dead, prev),
                                                    nan)
        out[f"revived/{where}"] = jnp.where(p.has_prev, metrics.revived(dead, prev), nan)
        negative = metrics.negative_units(p.cap["pre"][l])
        negatives.append(negative)
        negative_total = negative_total + negative.sum()
        out[f"negative_fraction/{where}"] = metrics.layer_fraction(negative)
        before = carry["negative"][l]
        out[f"negative_persistent/{where}"] = jnp.where(
            carry["valid"], metrics.persistent(negative, before), nan)
        out[f"negative_revived/{where}"] = jnp.where(
            carry["valid"], metrics.revived(negative, before), nan)
    if ctx.widths:
        out["dead_fraction/all"] = total / sum(ctx.widths)
        out["negative_fraction/all"] = negative_total / sum(ctx.widths)
    return out, {"negative": tuple(negatives), "valid": jnp.ones((), bool)}


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
    # Layers of equal width share one traced selection (_per_shape).
    stats = _per_shape(metrics.preact_percentiles, [p.cap["pre"][l] for l, _ in _layers(ctx)])
    return {f"preact_{name}/{where}": value for (_, where), s in zip(_layers(ctx), stats)
            for name, value in s.items()}


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
        first = out["grad_norm/layer_0"]
        last = out[f"grad_norm/layer_{len(ctx.widths) - 1}"]
        out["grad_norm_ratio"], out["grad_norm_ratio_undefined"] = metrics.grad_norm_ratio(
            first, last)
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
    one call of :func:`deadjax.linalg.each`: layers of equal width share one
    traced (and compiled) solver instead of one per layer."""
    groups: dict = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    out = [None] * len(arrays)
    for members in groups.values():
        values = linalg.each(fn)(jnp.stack([arrays[i] for i in members]))
        for j, i in enumerate(members):
            out[i] = jax.tree.map(lambda v, j=j: v[j], values)
    return out


def _gram(j):
    """The smaller Gram matrix of ``j`` (m, n), ``j j^T`` when m <= n (else
    ``j^T j``), with its eigenvalues for exactly-zero rows of ``j`` moved
    below zero (see :func:`_mean_singular_values`)."""
    if j.shape[0] > j.shape[1]:
        return j.T @ j
    gram = j @ j.T
    zero_rows = jnp.all(j == 0, axis=1)
    return gram - jnp.diag(jnp.where(zero_rows, jnp.max(jnp.diagonal(gram)), 0.0))


def _mean_singular_values(grams):
    """Per Gram matrix of the stack ``grams`` (b, k, k), the mean of the
    min(m, n) singular values of its matrix ``j`` (m, n), from the
    eigenvalues of its smaller Gram matrix (:func:`_gram`), all solved
    together by :func:`deadjax.linalg.symmetric_eigenvalues_stack`, square
    roots of the eigenvalues clipped at 0.

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
    ev = linalg.symmetric_eigenvalues_stack(grams)
    return jnp.sqrt(jnp.clip(ev, 0.0, None)).mean(axis=-1)


def _jacobian_full(p: Probe, ctx: Context) -> dict:
    grams = []
    for l, _ in _layers(ctx):
        n = min(ctx.settings.jacobian_probe_size, p.cap["pre"][l].shape[0])
        grams.append(jax.vmap(_gram)(_layer_jacobians(p, ctx, l, n)))
    svs = _per_shape(lambda g: _mean_singular_values(g).mean(), grams)
    return {f"jacobian_sv/{where}": sv for (_, where), sv in zip(_layers(ctx), svs)}


def _rank_full(p: Probe, ctx: Context) -> dict:
    ranks = _per_shape(metrics.effective_rank, [p.cap["out"][l] for l, _ in _layers(ctx)])
    return {f"effective_rank/{where}": rank for (_, where), rank in zip(_layers(ctx), ranks)}


# The key of the sharpness family's first start vector (a fixed draw, the same
# for every member, so a member alone starts where it does in a population).
SHARPNESS_VECTOR_KEY = 0x73687270   # "shrp"


def _sharpness_carry(ctx: Context, params) -> dict:
    """The ``sharpness`` family's carry: the vector the next Lanczos run
    starts from. Initially a fixed pseudo-random unit vector shaped like the
    parameters: leaf ``i`` (in ``jax.tree.leaves`` order) is a standard normal
    draw of ``fold_in(PRNGKey(SHARPNESS_VECTOR_KEY), i)``, and the whole is
    divided by its global norm; afterwards the top eigenvector found at the
    previous evaluation (the warm start)."""
    key = jax.random.PRNGKey(SHARPNESS_VECTOR_KEY)
    leaves, treedef = jax.tree.flatten(params)
    draws = [jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
             for i, leaf in enumerate(leaves)]
    norm = jnp.sqrt(sum(jnp.sum(d * d) for d in draws))
    return {"vector": jax.tree.unflatten(treedef, [d / norm for d in draws])}


def _sharpness(p: Probe, ctx: Context):
    """sharpness (the largest eigenvalue of the Hessian of the member's
    training objective at its current parameters,
    :func:`deadjax.metrics.hessian_top_eigenvalue`, warm-started from the
    carried eigenvector), sharpness_x_lr (times the learning rate of the next
    update: 2 is gradient descent's stability threshold) and
    sharpness_iterations (the Hessian-vector products used; equal to
    ``diagnostics.sharpness_iters`` when the tolerance was not met). The
    objective is the one the optimiser descends (the loss on the sharpness
    batch plus the L2 term where the member has one), in training mode
    (BatchNorm with the batch's own statistics), without dropout."""
    if ctx.objective is None or p.loss_inputs is None:
        raise ValueError("the sharpness family needs the training objective: build the "
                         "Context with Context.of(config, objective=...) and give the "
                         "Probe its loss_inputs (deadjax.population.make_program does).")
    li = p.loss_inputs
    s = ctx.settings

    def loss(params):
        return ctx.objective(params, p.batch_stats, li.hparams, li.model_kwargs, li.x, li.y)

    start = p.carry["sharpness"]["vector"]
    lam, vector, used = metrics.hessian_top_eigenvalue(loss, p.params, start,
                                                       s.sharpness_iters, s.sharpness_tol)
    # A non-finite vector (a diverged member) is not carried: the next
    # evaluation starts from the last finite one.
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(vector)]))
    vector = jax.tree.map(lambda new, old: jnp.where(finite, new, old), vector, start)
    out = {"sharpness": lam, "sharpness_x_lr": lam * li.learning_rate.astype(lam.dtype),
           "sharpness_iterations": used.astype(lam.dtype)}
    return out, {"vector": vector}


def _output(p: Probe, ctx: Context) -> dict:
    return {"output_constant": metrics.output_constant(p.logits).astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of diagnostics: ``every(probe, ctx) -> {name: scalar}`` at every
    evaluation; ``full(probe, ctx) -> {name: scalar}`` (every hidden layer's)
    at full evaluations only; either may be None. A family that carries
    something from one evaluation to the next gives ``init_carry(ctx,
    params)`` (a member's initial carry from its initial parameters, kept in
    ``MemberState.carry[name]``, read as ``probe.carry[name]``); its
    ``every`` then returns ``(scalars, new carry)``, which the trainer stores
    when it observes the evaluation. ``default=False`` keeps a family out of
    the default ``diagnostics.families`` (a family added to the default would
    change every existing workdir's config)."""
    name: str
    doc: str
    every: Callable[[Probe, Context], Any] | None = None
    full: Callable[[Probe, Context], dict] | None = None
    init_carry: Callable[[Context, Any], Any] | None = None
    default: bool = True   # in the default diagnostics.families


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dead", "dead_fraction/*, dead_persistent/*, revived/*, negative_fraction/*, "
           "negative_persistent/*, negative_revived/*", every=_dead, init_carry=_dead_carry),
    Family("dormant", "dormant_ratio_{tau:g}/*", every=_dormant),
    Family("saturation", "saturation/* (bounded activations), preact_mean/*, preact_std/*; "
           "preact_p15/p50/p85 at full evaluations", every=_saturation, full=_saturation_full),
    Family("gradients", "grad_norm/*, bias_grad_norm/*, delta_norm/*, update_ratio/*, "
           "weight_norm/*, grad_norm_ratio, grad_norm_ratio_undefined", every=_gradients),
    Family("signal", "q/*, c/*", every=_signal),
    Family("jacobian", "jacobian_sv/* at full evaluations", full=_jacobian_full),
    Family("rank", "effective_rank/* at full evaluations", full=_rank_full),
    Family("output", "output_constant and born_dead (always measured: the born-dead "
           "flag needs it)", every=_output),
    Family("sharpness", "sharpness, sharpness_x_lr, sharpness_iterations (top Hessian "
           "eigenvalue of the training objective; off by default: costly)",
           every=_sharpness, init_carry=_sharpness_carry, default=False),
)}
FAMILY_NAMES = tuple(FAMILIES)
# The default of diagnostics.families: every family but those marked off.
DEFAULT_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.default)

# Families measured whatever diagnostics.families says: the trainer's carry
# (born_dead) reads their values.
ALWAYS = ("output",)


def _chosen(ctx: Context) -> list[Family]:
    wanted = set(ctx.settings.families) | set(ALWAYS)
    return [f for name, f in FAMILIES.items() if name in wanted]


def init_carries(ctx: Context, params) -> dict:
    """``MemberState.carry`` at initialisation: the chosen families' carries
    for a member with the initial parameters ``params``."""
    return {f.name: f.init_carry(ctx, params) for f in _chosen(ctx)
            if f.init_carry is not None}


def measure(probe: Probe, ctx: Context) -> tuple[dict, dict]:
    """The diagnostics of every evaluation, for one member: ``({name:
    scalar}, the families' new carries)``."""
    out: dict = {}
    carries: dict = {}
    for fam in _chosen(ctx):
        if fam.every is None:
            continue
        values = fam.every(probe, ctx)
        if fam.init_carry is not None:
            values, carries[fam.name] = values
        out.update(values)
    return out, carries


def for_full(probe: Probe) -> Probe:
    """What the full evaluation reads of ``probe``: the sharpness family's
    inputs dropped (the full families do not read them, so the branch does
    not take the sharpness batch as an operand)."""
    return probe._replace(loss_inputs=None)


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
