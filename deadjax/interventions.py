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

The trainer (:class:`deadjax.population.Population`) applies them per member
under ``interventions.method``; docs/interventions.md gives the definitions
and config fields.
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
    params, opt_state = replace_units(params, opt_state, fresh_params, reset)
    return params, opt_state, reset


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


# --- Continual backprop (Dohare et al. 2024) ---------------------------------
# Published defaults. Decay rate: "set to 0.99 in all experiments" (Nature
# 632:768-774, Methods, "Specifics of continual backpropagation", eq. 1), also
# the ``decay_rate`` of every feed-forward config of the reference code
# (shibhansh/loss-of-plasticity lop/permuted_mnist/cfg/cbp.json,
# lop/slowly_changing_regression/cfg/sgd/cbp/relu.json, lop/imagenet/cfg/cbp.json).
CBP_DECAY = 0.99
# Maturity threshold: 100 updates in lop/permuted_mnist/cfg/cbp.json (key "mt",
# which its runner online_expr.py does not read; the runner's own default is 100
# too), lop/imagenet/cfg/cbp.json and lop/slowly_changing_regression/cfg/sgd/cbp/
# relu.json (key "maturity_threshold", which that runner, expr.py, does not read:
# it falls back to mt = 10, so those runs used 10).
CBP_MATURITY = 100
# Replacement rate of Online Permuted MNIST: the sweep in
# lop/permuted_mnist/cfg/cbp.json is [1e-4, 1e-5, 1e-6]; 1e-4 is the runner's
# default (lop/permuted_mnist/online_expr.py; which value the paper's headline
# curve uses is not recorded in the config). Slowly-changing regression sweeps
# [1e-6, 1e-5, 1e-4, 1e-3, 1e-2] (lop/slowly_changing_regression/cfg/sgd/cbp/relu.json);
# Continual ImageNet uses 3e-4 (lop/imagenet/cfg/cbp.json).
CBP_REPLACEMENT_RATE_PERMUTED_MNIST = 1e-4
CBP_REPLACEMENT_RATES_PERMUTED_MNIST = (1e-4, 1e-5, 1e-6)
CBP_REPLACEMENT_RATES_SLOWLY_CHANGING_REGRESSION = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
CBP_REPLACEMENT_RATE_CONTINUAL_IMAGENET = 3e-4


def init_cbp_state(widths: Sequence[int]) -> dict:
    """Continual-backprop bookkeeping for hidden layers of the given widths:
    utilities ``u_l`` (float32, 0), ages ``a_l`` (int32, 0) and the fractional
    number of replacements ``c_l`` carried over (float32 ``(L,)``, 0)."""
    return {"utility": tuple(jnp.zeros((int(w),), jnp.float32) for w in widths),
            "age": tuple(jnp.zeros((int(w),), jnp.int32) for w in widths),
            "pending": jnp.zeros((len(widths),), jnp.float32)}


def continual_backprop(params, opt_state, fresh_params, cbp_state,
                       activations: Sequence[jax.Array], *, replacement_rate, maturity,
                       decay, bias_correction: bool = False):
    """Continual backpropagation (Dohare, Hernandez-Garcia, Lan, Rahman,
    Mahmood & Sutton 2024, "Loss of plasticity in deep continual learning",
    Nature 632:768-774, Methods "Continual backpropagation" and its
    Algorithm 1; reference code shibhansh/loss-of-plasticity
    ``lop/algos/gnt.py`` as driven by ``lop/algos/cbp.py``, ``accumulate=True``).

    Called once per training step, after the optimiser update. For every
    hidden layer ``l`` (``U_l`` units, activations ``h_l`` of shape ``(B, U_l)``,
    the post-activation outputs of this step's training batch, i.e. of the
    forward pass that produced the gradient) and decay rate ``η = decay``::

        a_l   <- a_l + 1
        u_l,i <- η u_l,i + (1 - η) mean_b |h_l,b,i| · Σ_k |W_{l+1}[i, k]|      (eq. 1)
        E_l    = {i : a_l,i > m}                       (mature, m = maturity)
        c_l   <- c_l + ρ |E_l|,  n_l = floor(c_l),  c_l <- c_l - n_l   (ρ = replacement_rate)
        R_l    = the n_l units of E_l with the smallest score (at most |E_l|)

    with ``W_{l+1} = Dense_{l+1}/kernel`` (the output layer's kernel for the
    last hidden layer) taken *after* the optimiser update, as in the reference
    (``cbp.py`` calls generate-and-test after ``opt.step()``), and all
    utilities computed from the parameters as passed in, before any of this
    step's replacements (as ``GnT.test_features`` does for every layer before
    ``gen_new_features``). The score is ``u_l`` (paper), or with
    ``bias_correction=True`` the reference's Adam-style ``u_l / (1 - η^a_l)``.
    Every unit of ``R_l`` then gets its incoming parameters (``Dense_l``
    kernel column and bias, normalisation scale and bias, PReLU slope) from
    ``fresh_params``, zero outgoing weights (row of ``Dense_{l+1}/kernel``),
    ``u = 0`` and ``a = 0``, and every optimiser entry of its incoming and
    outgoing parameters is set to 0 (:func:`reset_optimizer_entries`). A
    weight that is outgoing for a replaced unit of layer ``l`` and incoming
    for one of layer ``l+1`` gets the fresh value (the reference's order).

    Returns ``(params, opt_state, cbp_state, replaced)``; ``replaced`` is the
    tuple of per-layer bool ``(U_l,)`` masks of ``R_l``. ``replacement_rate``
    (in [0, 1]), ``maturity`` and ``decay`` may be traced per-member float32
    scalars; the number replaced is dynamic but all shapes are static
    (eligible units are ranked by score with a stable argsort and those of
    rank < ``n_l`` are replaced), so the function is jit- and vmap-safe. With
    ``replacement_rate = 0`` params and opt_state come back bit for bit.

    Choices where the paper leaves it open or where this differs from the
    reference:

    * Utility variant: the paper's eq. 1 (plain contribution utility). The
      reference configs of the feed-forward results (permuted MNIST,
      slowly-changing regression, continual ImageNet) select
      ``util_type="adaptable_contribution"`` instead,
      ``|h - f̂| Σ_k|w_out| / Σ_j|w_in|`` with ``f̂`` a bias-corrected running
      mean of ``h`` (the 2021 arXiv:2108.06325 "overall utility"); it needs a
      per-unit mean-activation state and is not implemented here.
    * Sum vs mean: eq. 1 sums the outgoing magnitudes, the reference averages
      them (divides by ``U_{l+1}``), a per-layer constant that leaves the
      ranking unchanged. A batch of ``B > 1`` examples enters through
      ``mean_b |h|`` (the reference's ``features.abs().mean(dim=0)``; the
      paper trains on single examples).
    * Bias correction: the paper's eq. 1 has none; the reference ranks by
      ``u/(1 - η^a)``. Default off; ``bias_correction=True`` (a static Python
      bool) follows the reference.
    * Number replaced: fractional replacements accumulate across steps
      (reference ``accumulate=True``, used for permuted MNIST). The reference's
      other mode (``accumulate=False``, the slowly-changing-regression
      runner's default), which replaces one unit with probability ``ρ|E_l|``
      when that is below 1, is not implemented.
    * Ties in the score are broken by the lower unit index (the reference's
      ``torch.topk`` leaves them unspecified).
    * Fresh incoming parameters come from ``fresh_params`` (the member's own
      initialiser, so the bias is whatever that initialiser gives, 0 for
      Flax's default); the reference redraws the kernel from its Kaiming
      uniform and sets the bias to 0. Running BatchNorm statistics live
      outside ``params`` and are not touched here (``cbp_linear.py`` resets
      them to mean 0, variance 1).
    * No correction of the next layer's bias: the reference's ``gnt.py``
      adds ``w_out · f̂ / (1 - η^a)`` to it but zeroes ``f̂`` of the replaced
      units first, so the correction is 0 there; the paper has none.
    * Optimiser: every parameter-shaped entry (Adam's two moments, a momentum
      trace, ...) of the replaced units' incoming and outgoing parameters is
      zeroed, as :func:`redo` does. The reference's ``AdamGnT`` also resets a
      per-parameter step count; optax keeps one shared count, left alone, so
      the first Adam steps of a fresh weight use the member's bias
      correction. With SGD the reference leaves momentum buffers untouched;
      here they are zeroed too.
    * Bookkeeping: ages and utilities are updated on every call, also when
      ``replacement_rate = 0`` (the reference then skips them; nothing is
      replaced either way).
    """
    state, replaced = cbp_select(params, cbp_state, activations,
                                 replacement_rate=replacement_rate, maturity=maturity,
                                 decay=decay, bias_correction=bias_correction)
    params, opt_state = replace_units(params, opt_state, fresh_params, replaced)
    return params, opt_state, state, replaced


def cbp_select(params, cbp_state, activations: Sequence[jax.Array], *, replacement_rate,
               maturity, decay, bias_correction: bool = False):
    """The bookkeeping half of :func:`continual_backprop`: ``(cbp_state,
    replaced)`` with utilities and ages updated (replaced units' reset to 0)
    and the per-layer masks of the units to replace; parameters untouched.
    The trainer runs it every step and :func:`replace_units` only at steps
    where some member replaces a unit."""
    rate = jnp.asarray(replacement_rate, jnp.float32)
    mat = jnp.asarray(maturity, jnp.float32)
    eta = jnp.asarray(decay, jnp.float32)
    utilities, ages, pending, replaced = [], [], [], []
    for l, h in enumerate(activations):
        h = jnp.asarray(h, jnp.float32)
        w_out = jnp.asarray(params[f"Dense_{l + 1}"]["kernel"], jnp.float32)
        contribution = jnp.mean(jnp.abs(h), axis=0) * jnp.sum(jnp.abs(w_out), axis=1)
        age = cbp_state["age"][l] + 1
        u = eta * cbp_state["utility"][l] + (1 - eta) * contribution
        score = u / (1 - eta ** age.astype(jnp.float32)) if bias_correction else u
        eligible = age.astype(jnp.float32) > mat
        c = cbp_state["pending"][l] + rate * jnp.sum(eligible).astype(jnp.float32)
        n = jnp.floor(c)
        order = jnp.argsort(jnp.where(eligible, score, jnp.inf), stable=True)
        rank = jnp.argsort(order, stable=True)
        rep = eligible & (rank.astype(jnp.float32) < n)
        utilities.append(jnp.where(rep, 0.0, u))
        ages.append(jnp.where(rep, 0, age).astype(jnp.int32))
        pending.append(c - n)
        replaced.append(rep)
    state = {"utility": tuple(utilities), "age": tuple(ages), "pending": jnp.stack(pending)}
    return state, tuple(replaced)


def replace_units(params, opt_state, fresh_params, masks: Sequence[jax.Array]):
    """``(params, opt_state)`` with the units of ``masks`` re-initialised: incoming
    parameters from ``fresh_params``, outgoing weights 0 (the fresh value wins
    where a weight is both), every optimiser entry of both reset to 0."""
    incoming, outgoing = unit_parameter_masks(params, masks)
    params = jax.tree.map(lambda p, f, i, o: jnp.where(i, f, jnp.where(o, jnp.zeros_like(p), p)),
                          params, fresh_params, incoming, outgoing)
    either = jax.tree.map(jnp.logical_or, incoming, outgoing)
    return params, reset_optimizer_entries(opt_state, either)
