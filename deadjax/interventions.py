"""Remedies that act on a member during training: pure functions of one member.

Each function maps one member's ``(params, opt_state)`` (Flax layout:
``Dense_l`` kernels ``(U_in, U_out)`` and biases, ``BatchNorm_l`` /
``LayerNorm_l`` scales and biases, ``PReLU_l`` slopes) and per-unit boolean
masks of static shape to new ones, so it is jit- and vmap-safe: a population
applies it to every member at once, each with its own masks. Hidden layer
``l``'s unit ``j`` owns column ``j`` of ``Dense_l/kernel`` and entry ``j`` of
``Dense_l/bias``, of its normalisation's scale and bias and of its PReLU
slope (its *incoming* parameters), and row ``j`` of ``Dense_{l+1}/kernel``
(its *outgoing* weights).

Not yet wired into the trainer (docs/interventions.md says what is done).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from deadjax import metrics


def unit_parameter_masks(params, masks: Sequence[jax.Array]):
    """``(incoming, outgoing)``: params-shaped bool trees marking the incoming
    parameters and the outgoing weights of the units in ``masks`` (one
    ``(U_l,)`` bool array per hidden layer)."""
    incoming = jax.tree.map(lambda a: jnp.zeros(a.shape, bool), params)
    outgoing = jax.tree.map(lambda a: jnp.zeros(a.shape, bool), params)
    incoming, outgoing = dict(incoming), dict(outgoing)
    for l, m in enumerate(masks):
        m = jnp.asarray(m, bool)
        dense = dict(incoming[f"Dense_{l}"])
        dense["kernel"] = jnp.broadcast_to(m[None, :], dense["kernel"].shape)
        if "bias" in dense:
            dense["bias"] = m
        incoming[f"Dense_{l}"] = dense
        for name in (f"BatchNorm_{l}", f"LayerNorm_{l}", f"PReLU_{l}"):
            if name in incoming:
                incoming[name] = jax.tree.map(lambda a: jnp.broadcast_to(m, a.shape),
                                              incoming[name])
        nxt = dict(outgoing[f"Dense_{l + 1}"])
        nxt["kernel"] = jnp.broadcast_to(m[:, None], nxt["kernel"].shape)
        outgoing[f"Dense_{l + 1}"] = nxt
    return incoming, outgoing


def params_like_subtrees(opt_state, params, fn):
    """``opt_state`` with ``fn`` applied to every subtree shaped like
    ``params`` (same tree structure): Adam's moments, a momentum trace,
    RMSProp's average, ... of any optax chain or injected-hyperparameter
    wrapper; counts and hyperparameters untouched."""
    structure = jax.tree.structure(params)

    def like_params(x):
        return jax.tree.structure(x) == structure

    return jax.tree.map(lambda x: fn(x) if like_params(x) else x, opt_state,
                        is_leaf=like_params)


def reset_optimizer_entries(opt_state, mask):
    """``opt_state`` with every parameter-shaped entry set to 0 where ``mask``
    (a params-shaped bool tree) is True, so it works for every optimiser in
    the registry."""
    return params_like_subtrees(
        opt_state, mask,
        lambda sub: jax.tree.map(lambda leaf, m: jnp.where(m, jnp.zeros_like(leaf), leaf),
                                 sub, mask))


def redo(params, opt_state, fresh_params, activations: Sequence[jax.Array], tau: float):
    """ReDo (Sokar, Agarwal, Castro & Evci 2023, "The Dormant Neuron Phenomenon
    in Deep Reinforcement Learning", Sec. 4, Alg. 1): every τ-dormant unit
    (score ``s_j <= τ``, :func:`deadjax.metrics.dormant_scores`, on the
    activations ``h_l`` of a batch) gets fresh incoming parameters (from
    ``fresh_params``, a new draw of the member's initialiser), zero outgoing
    weights, and its optimiser entries (incoming and outgoing) reset to 0.

    Returns ``(params, opt_state, reset)`` with ``reset`` the per-layer bool
    masks of the recycled units."""
    reset = [metrics.dormant_units(h, tau) for h in activations]
    incoming, outgoing = unit_parameter_masks(params, reset)
    params = jax.tree.map(lambda p, f, i, o: jnp.where(i, f, jnp.where(o, 0, p)),
                          params, fresh_params, incoming, outgoing)
    either = jax.tree.map(jnp.logical_or, incoming, outgoing)
    return params, reset_optimizer_entries(opt_state, either), reset


def shrink_perturb(params, key, shrink: float, noise: float):
    """Shrink and perturb (Ash & Adams 2020, "On Warm-Starting Neural Network
    Training", Sec. 4): every parameter ``θ <- λ θ + ε``, ``ε ~ N(0, σ²)``
    drawn independently, with ``λ = shrink`` and ``σ = noise``. λ = 1 and
    σ = 0 leave the parameters exactly as they are."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = [shrink * p + noise * jax.random.normal(k, p.shape, p.dtype)
           for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, out)
