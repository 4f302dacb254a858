"""Every diagnostic of one member, on the probe batch, in eval mode.

:func:`probe_pass` runs the model once on the probe batch (capturing each
hidden layer's pre-activations ``z_l``, unit activations ``phi(z_l)``,
derivatives ``phi'(z_l)`` and outputs ``h_l``) and differentiates the mean
probe loss with respect to the parameters and to each ``z_l`` (``delta_l =
dL/dz_l``); :func:`diagnose` (every evaluation) and :func:`diagnose_full`
(the costly statistics, every ``diagnostics.full_every``-th evaluation) hand
the arrays to the pure functions of :mod:`deadjax.metrics`. Definitions
live there and in ``docs/metrics.md``; this module only assembles them under
the metric names of DESIGN.md. It is called inside the compiled program of a
population (``Population.evaluate`` and ``train_chunk``), vmapped over members.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deadjax import metrics, models


def _layer_jacobians(pop, params, batch_stats, cap, l, n):
    """Jacobians d h_l / d h_{l-1} of hidden layer ``l`` at the first ``n`` probe
    inputs, shape (n, width_l, width_{l-1}), in eval mode (Glorot & Bengio 2010,
    Sec. 4.2.2). Without normalisation it is diag(phi'(z_l)) W_l^T; BatchNorm in
    eval mode is a per-unit affine map, so its scale gamma/sqrt(var+eps) joins
    the diagonal; LayerNorm contributes its full Jacobian; a residual layer adds
    the identity."""
    w = params[f"Dense_{l}"]["kernel"]  # (in, out)
    dphi = cap["dphi"][l][:n]
    norm = pop.config.model.norm
    if norm == "batch":
        bn = batch_stats[f"BatchNorm_{l}"]
        scale = params[f"BatchNorm_{l}"]["scale"] / jnp.sqrt(bn["var"] + models.NORM_EPSILON)
        jac = (dphi * scale)[:, :, None] * w.T[None]
    elif norm == "layer":
        u = cap["affine"][l][:n]
        width = u.shape[-1]
        mu = u.mean(-1, keepdims=True)
        sigma = jnp.sqrt(((u - mu) ** 2).mean(-1, keepdims=True) + models.NORM_EPSILON)
        u_hat = (u - mu) / sigma
        gamma = params[f"LayerNorm_{l}"]["scale"]
        eye = jnp.eye(width)
        dnorm = (gamma[None, :, None] / sigma[:, :, None]) * (
            eye[None] - 1.0 / width - u_hat[:, :, None] * u_hat[:, None, :] / width)
        jac = dphi[:, :, None] * jnp.einsum("nij,jk->nik", dnorm, w.T)
    else:
        jac = dphi[:, :, None] * w.T[None]
    if pop.config.model.residual and l > 0 and w.shape[0] == w.shape[1]:
        jac = jac + jnp.eye(w.shape[1])[None]
    return jac


def _after(x, token):
    """``x``, computed only once ``token`` is.

    XLA:CPU runs independent LAPACK custom calls (QR, eigh) concurrently, and
    each batched kernel then waits for work it queued on the same thread pool:
    on a 2-core machine two of them deadlock (seen with jaxlib 0.10.2, a QR
    and an eigh each blocked in ``ParallelBatchMap``). A real data dependency
    (an optimisation barrier is not one for the CPU runtime's scheduler) makes
    them run one after another; the added zero costs one elementwise pass.
    """
    return x + 0.0 * token


def _mean_singular_value(j):
    """Mean of the min(m, n) singular values of ``j``, from the eigenvalues of
    its smaller Gram matrix. Small singular values carry an absolute error of
    about sqrt(eps) * sigma_max (the Gram matrix squares the condition
    number), which moves a mean over dozens of values by ~1e-4 relative;
    the exact QR route of ``metrics.singular_values`` costs ~8x more per
    Jacobian, and there are ``jacobian_probe_size`` of them per layer and
    member."""
    gram = j @ j.T if j.shape[0] <= j.shape[1] else j.T @ j
    return jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(gram), 0.0, None)).mean()


def probe_pass(pop, state, probe_x, probe_y) -> dict:
    """One member's forward and backward pass on the probe batch, eval mode:
    ``logits``, the captures ``cap`` (``pre``, ``post``, ``dphi``, ``out``,
    ``affine`` per hidden layer), the parameter gradients ``gparams`` and
    ``deltas`` (dL/dz_l per hidden layer) of the mean probe loss."""
    logits_dtype = jax.tree.leaves(state.params)[0].dtype
    zeros = [jnp.zeros((probe_x.shape[0], w), logits_dtype) for w in pop.widths]

    def probe_loss(params, perturb):
        logits, cap = pop.apply_model(state, probe_x, params, perturb=perturb, capture=True)
        return pop.loss(logits, probe_y), (logits, cap)

    (_, (logits, cap)), (gparams, deltas) = jax.value_and_grad(
        probe_loss, argnums=(0, 1), has_aux=True)(state.params, zeros)
    return {"logits": logits, "cap": cap, "gparams": gparams, "deltas": deltas}


def diagnose(pop, state, probe: dict):
    """The diagnostics of every evaluation, for one member: ``(scalars, dead
    masks)``. ``probe`` is :func:`probe_pass`'s output."""
    cfg = pop.config.diagnostics
    families = set(cfg.families)
    act = pop.activation
    widths = pop.widths
    cap, deltas, gparams = probe["cap"], probe["deltas"], probe["gparams"]
    out: dict = {}
    dead_masks = []
    total_dead = jnp.zeros((), jnp.float32)
    for l in range(len(widths)):
        z, a, dphi = cap["pre"][l], cap["post"][l], cap["dphi"][l]
        where = f"layer_{l}"
        dead = metrics.dead_units(dphi, act.max_derivative, cfg.dead_threshold)
        dead_masks.append(dead)
        total_dead = total_dead + dead.sum()
        if "dead" in families:
            out[f"dead_fraction/{where}"] = metrics.layer_fraction(dead)
            nan = jnp.full((), jnp.nan, jnp.float32)
            prev = state.prev_dead[l]
            out[f"dead_persistent/{where}"] = jnp.where(
                state.has_prev, metrics.persistent(dead, prev), nan)
            out[f"revived/{where}"] = jnp.where(state.has_prev, metrics.revived(dead, prev), nan)
        if "dormant" in families:
            for tau in cfg.dormant_taus:
                out[f"dormant_ratio_{tau:g}/{where}"] = metrics.layer_fraction(
                    metrics.dormant_units(a, tau))
        if "saturation" in families:
            if act.bounded:
                out[f"saturation/{where}"] = metrics.saturation_fraction(
                    dphi, act.max_derivative, cfg.saturation_threshold)
            for name, value in metrics.preact_moments(z).items():
                out[f"preact_{name}/{where}"] = value
        if "signal" in families:
            out[f"q/{where}"] = metrics.q_value(z)
            out[f"c/{where}"] = metrics.c_value(z)
        if "gradients" in families:
            out[f"delta_norm/{where}"] = jnp.linalg.norm(deltas[l])
    if "dead" in families and widths:
        out["dead_fraction/all"] = total_dead / sum(widths)
    if "gradients" in families:
        names = [f"layer_{l}" for l in range(len(widths))] + ["out"]
        for i, where in enumerate(names):
            g = gparams[f"Dense_{i}"]
            out[f"grad_norm/{where}"] = jnp.linalg.norm(g["kernel"])
            out[f"bias_grad_norm/{where}"] = (jnp.linalg.norm(g["bias"]) if "bias" in g
                                              else jnp.full((), jnp.nan, jnp.float32))
            out[f"weight_norm/{where}"] = jnp.linalg.norm(state.params[f"Dense_{i}"]["kernel"])
            out[f"update_ratio/{where}"] = state.update_ratio[i]
        if widths:
            out["grad_norm_ratio"] = (out["grad_norm/layer_0"]
                                      / out[f"grad_norm/layer_{len(widths) - 1}"])
    out["output_constant"] = metrics.output_constant(probe["logits"]).astype(jnp.float32)
    return out, tuple(dead_masks)


def diagnose_full(pop, state, probe: dict):
    """The costly diagnostics of a full evaluation, for one member:
    ``(scalars, histograms)``: pre-activation percentiles (a sort), Jacobian
    singular values and effective ranks (eigensolvers), and the histograms.
    Population.evaluate runs them every ``diagnostics.full_every``-th
    evaluation (and at the first and last)."""
    cfg = pop.config.diagnostics
    families = set(cfg.families)
    cap, deltas = probe["cap"], probe["deltas"]
    out: dict = {}
    hists: dict = {}
    token = jnp.zeros((), jnp.float32)  # orders the linear-algebra calls (see _after)
    for l in range(len(pop.widths)):
        z, a, h = cap["pre"][l], cap["post"][l], cap["out"][l]
        where = f"layer_{l}"
        if "saturation" in families:
            for name, value in metrics.preact_percentiles(z).items():
                out[f"preact_{name}/{where}"] = value
        if "jacobian" in families:
            n = min(cfg.jacobian_probe_size, z.shape[0])
            jac = _after(_layer_jacobians(pop, state.params, state.batch_stats, cap, l, n),
                         token)
            sv = jax.vmap(_mean_singular_value)(jac)
            out[f"jacobian_sv/{where}"] = token = sv.mean()
        if "rank" in families:
            out[f"effective_rank/{where}"] = token = metrics.effective_rank(_after(h, token))
        for kind, values in (("preact", z), ("activation", a), ("delta", deltas[l])):
            hists[f"{kind}/{where}"] = metrics.histogram(values, cfg.histogram_bins)
    return out, hists
