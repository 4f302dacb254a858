"""Remedies that act on a member during training, as optax-style transforms.

Each remedy is an entry of :data:`REMEDIES`: a :class:`Remedy` whose ``make``
builds, from the group's static config, a :class:`Transform` -- an ``init``
(one member's state) and an ``update`` (state, what the member's network did
on a batch, the member) -> (state, :class:`Edit`), like
``optax.GradientTransformation`` -- plus the config fields it reads. The
trainer (:mod:`deadjax.population`) chains the remedies a group uses
(:func:`chain`) and applies every member's :class:`Edit` (new parameters,
units to re-initialise, units to count); a new remedy is one pair of pure
functions and its entry here, with no edit to the trainer (docs/design.md has
a worked example).

When a remedy acts: ``every_step`` remedies (continual backprop) after every
training step, on the activations of that step's batch; the others every
``interventions.every`` steps, on the probe batch of the task just trained on.
A member acts only where its ``interventions.method`` names the remedy and it
has not diverged.

The pure functions below map one member's ``(params, opt_state)`` (Flax
layout: ``Dense_l`` kernels ``(U_in, U_out)`` and biases, ``BatchNorm_l`` /
``LayerNorm_l`` scales and biases, ``PReLU_l`` slopes) and per-unit boolean
masks of static shape to new ones, so they are jit- and vmap-safe. Hidden
layer ``l``'s unit ``j`` owns column ``j`` of ``Dense_l/kernel`` and entry
``j`` of ``Dense_l/bias``, of its normalisation's scale and bias and of its
PReLU slope (its *incoming* parameters), and row ``j`` of
``Dense_{l+1}/kernel`` (its *outgoing* weights). docs/interventions.md gives
the definitions and config fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from deadjax import activations, metrics
from deadjax.errors import ConfigError
from deadjax.fields import Field, boolean, integer, real


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
    masks of the recycled units.

    Where this differs from the authors' code (google/dopamine
    ``dopamine/labs/redo/weight_recyclers.py``, ``NeuronRecycler``; details in
    docs/interventions.md): the recycled units' bias optimiser moments are
    zeroed (dopamine's masks skip 1-D parameters, so it keeps them); a weight
    outgoing of one recycled unit and incoming of another gets the fresh value
    (dopamine zeroes it last); the score divides by the layer mean exactly,
    with no ``+ 1e-9`` (all-zero layer: every score 0, as there); fresh
    weights come from the member's initialiser (dopamine: xavier_uniform, bias
    0)."""
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
# Rank by the bias-corrected utility u / (1 - decay^age): what the reference
# code does unconditionally (lop/algos/gnt.py, GnT.update_utility and
# GnT.test_features, driven by lop/algos/cbp.py in the permuted-MNIST and
# slowly-changing-regression runners); the Nature paper's eq. 1 has no
# correction. See continual_backprop's docstring.
CBP_BIAS_CORRECTION = True


def init_cbp_state(widths: Sequence[int]) -> dict:
    """Continual-backprop bookkeeping for hidden layers of the given widths:
    utilities ``u_l`` (float32, 0), ages ``a_l`` (int32, 0) and the fractional
    number of replacements ``c_l`` carried over (float32 ``(L,)``, 0)."""
    return {"utility": tuple(jnp.zeros((int(w),), jnp.float32) for w in widths),
            "age": tuple(jnp.zeros((int(w),), jnp.int32) for w in widths),
            "pending": jnp.zeros((len(widths),), jnp.float32)}


def continual_backprop(params, opt_state, fresh_params, cbp_state,
                       activations: Sequence[jax.Array], *, replacement_rate, maturity,
                       decay, bias_correction=CBP_BIAS_CORRECTION):
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
    ``gen_new_features``). Units are ranked by the score

        s_l,i = u_l,i / (1 - η^a_l,i)   (bias_correction true: the reference code)
        s_l,i = u_l,i                   (bias_correction false: the paper's eq. 1)

    (``a_l,i >= 1`` after the increment, so ``1 - η^a > 0``).
    Every unit of ``R_l`` then gets its incoming parameters (``Dense_l``
    kernel column and bias, normalisation scale and bias, PReLU slope) from
    ``fresh_params``, zero outgoing weights (row of ``Dense_{l+1}/kernel``),
    ``u = 0`` and ``a = 0``, and every optimiser entry of its incoming and
    outgoing parameters is set to 0 (:func:`reset_optimizer_entries`). A
    weight that is outgoing for a replaced unit of layer ``l`` and incoming
    for one of layer ``l+1`` gets the fresh value (the reference's order).

    Returns ``(params, opt_state, cbp_state, replaced)``; ``replaced`` is the
    tuple of per-layer bool ``(U_l,)`` masks of ``R_l``. ``replacement_rate``
    (in [0, 1]), ``maturity``, ``decay`` and ``bias_correction`` (a bool, or a
    number: non-zero means true) may be traced per-member scalars; the number replaced is dynamic but all shapes are static
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
    * Bias correction: the paper's eq. 1 (Methods, "Specifics of continual
      backpropagation") has none; the reference code that produced the
      feed-forward figures ranks by ``u/(1 - η^a)`` ("Adam-style bias
      correction", ``GnT.update_utility`` computes ``bias_corrected_util``
      and ``GnT.test_features`` takes ``torch.topk`` of it, with no switch
      to turn it off; ``lop/algos/cbp.py`` builds that ``GnT`` for
      ``lop/permuted_mnist/online_expr.py`` and
      ``lop/slowly_changing_regression/expr.py``). Default on
      (:data:`CBP_BIAS_CORRECTION`, config field
      ``interventions.cbp_bias_correction``). Without it a unit that has just
      matured (age m + 1 = 101) carries ``1 - 0.99^101 ≈ 0.64`` of its
      steady utility, so the units replaced last are the lowest-ranked again
      as soon as they mature, and a few units are replaced over and over
      while the others never are (tests/test_interventions.py). (The
      reference's ``CBPLinear``/``CBPConv`` of the convolutional experiments
      use no running utility at all; not implemented here.)
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
               maturity, decay, bias_correction=CBP_BIAS_CORRECTION):
    """The bookkeeping half of :func:`continual_backprop`: ``(cbp_state,
    replaced)`` with utilities and ages updated (replaced units' reset to 0)
    and the per-layer masks of the units to replace; parameters untouched.
    The trainer runs it every step and :func:`replace_units` only at steps
    where some member replaces a unit. ``bias_correction`` may be traced (a
    per-member value: the score is chosen with ``jnp.where``, so either
    choice gives bit for bit the score of the static one)."""
    rate = jnp.asarray(replacement_rate, jnp.float32)
    mat = jnp.asarray(maturity, jnp.float32)
    eta = jnp.asarray(decay, jnp.float32)
    corrected = jnp.asarray(bias_correction) != 0
    utilities, ages, pending, replaced = [], [], [], []
    for l, h in enumerate(activations):
        h = jnp.asarray(h, jnp.float32)
        w_out = jnp.asarray(params[f"Dense_{l + 1}"]["kernel"], jnp.float32)
        contribution = jnp.mean(jnp.abs(h), axis=0) * jnp.sum(jnp.abs(w_out), axis=1)
        age = cbp_state["age"][l] + 1
        u = eta * cbp_state["utility"][l] + (1 - eta) * contribution
        score = jnp.where(corrected, u / (1 - eta ** age.astype(jnp.float32)), u)
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


# --------------------------------------------------------------------------
# Remedies as transforms
# --------------------------------------------------------------------------

class Observation(NamedTuple):
    """What a remedy sees of a member's network on a batch, per hidden layer:
    the unit activations ``phi(z)`` (``post``) and derivatives ``phi'(z)``
    (``dphi``), each ``(batch, width)``."""
    post: tuple
    dphi: tuple


class Member(NamedTuple):
    """What a remedy may read of one member: its parameters, optimiser state,
    per-member hyperparameters (``MemberState.hparams``), dropout key and the
    number of steps taken."""
    params: Any
    opt_state: Any
    hparams: dict
    key: jax.Array
    step: jax.Array


class Edit(NamedTuple):
    """What one remedy does to a member at one application; ``None`` is nothing.

    ``params``: new parameters. ``reinit``: per-layer bool masks of units to
    re-initialise (:func:`replace_units` with a fresh draw of the member's
    initialiser). ``counted``: per-layer masks of the units the remedy acted
    on, added to ``units_reset``."""
    params: Any = None
    reinit: tuple | None = None
    counted: tuple | None = None


class Transform(NamedTuple):
    """One remedy for a group: ``init()`` is a member's state, ``update(state,
    observation, member) -> (state, Edit)``; ``model_kwargs(state)`` is what
    the model's forward pass needs of the state (activation reset's switched
    units)."""
    init: Callable[[], Any]
    update: Callable[[Any, Observation, Member], tuple[Any, Edit]]
    model_kwargs: Callable[[Any], dict] | None = None


@dataclasses.dataclass(frozen=True)
class Remedy:
    """A registry entry: ``make(config, widths) -> Transform`` from the group's
    static config and hidden widths; ``every_step`` (else every
    ``interventions.every`` steps); ``state_key``, where its state lives in
    ``MemberState.interventions`` (None: stateless); ``fields``, its config
    fields."""
    name: str
    make: Callable[[Any, tuple[int, ...]], Transform]
    doc: str
    every_step: bool = False
    state_key: str | None = None
    fields: tuple[Field, ...] = ()


# Constants that separate the random streams derived from a member's key.
PERTURB_STREAM = 0x70657274  # "pert": shrink-and-perturb noise
ADDED = "2026-11-27"


def _stateless():
    return ()


def _activation_reset(config, widths) -> Transform:
    act = activations.get(config.model.activation)
    threshold = config.diagnostics.dead_threshold

    def init():
        return tuple(jnp.zeros((w,), bool) for w in widths)

    def update(switched, obs, member):
        dead = [metrics.dead_units(d, act.max_derivative, threshold) for d in obs.dphi]
        newly = tuple(d & ~w for d, w in zip(dead, switched))
        return tuple(w | n for w, n in zip(switched, newly)), Edit(counted=newly)

    return Transform(init, update, model_kwargs=lambda switched: {"switched": switched})


def _redo(config, widths) -> Transform:
    def update(state, obs, member):
        recycle = tuple(metrics.dormant_units(h, member.hparams["redo_tau"]) for h in obs.post)
        return state, Edit(reinit=recycle, counted=recycle)
    return Transform(_stateless, update)


def _continual_backprop(config, widths) -> Transform:
    def update(cbp, obs, member):
        hp = member.hparams
        cbp, replaced = cbp_select(member.params, cbp, obs.post,
                                   replacement_rate=hp["replacement_rate"],
                                   maturity=hp["maturity"], decay=hp["utility_decay"],
                                   bias_correction=hp["cbp_bias_correction"])
        return cbp, Edit(reinit=replaced, counted=replaced)
    return Transform(lambda: init_cbp_state(widths), update)


def _shrink_perturb(config, widths) -> Transform:
    def update(state, obs, member):
        key = jax.random.fold_in(jax.random.fold_in(member.key, PERTURB_STREAM), member.step)
        hp = member.hparams
        return state, Edit(params=shrink_perturb(member.params, key, hp["shrink"], hp["noise"]))
    return Transform(_stateless, update)


def _reset_activation_check(f, v):
    alt = activations.get(v, field=f)
    if alt.learnable_slope:
        raise ConfigError(f"{f} = {v!r} is not allowed; a switched unit has no learnable "
                          "slope (use leaky_relu).")


REMEDIES: dict[str, Remedy] = {r.name: r for r in (
    Remedy("activation_reset", _activation_reset, state_key="switched",
           doc="units dead on the probe batch compute interventions.reset_activation "
               "from then on", fields=(
               Field("interventions.reset_activation", "leaky_relu", "activation_reset: "
                     "what a dead unit switches to", _reset_activation_check, added=ADDED),
               Field("interventions.reset_slope", 0.01, "activation_reset: slope of the "
                     "switched units' leaky ReLU", real(), per_member=True,
                     hparam="reset_slope", added=ADDED))),
    Remedy("redo", _redo, doc="ReDo (Sokar et al. 2023): tau-dormant units re-initialised",
           fields=(Field("interventions.redo_tau", 0.1, "redo: dormancy threshold tau",
                         real(0.0), per_member=True, hparam="redo_tau", added=ADDED),)),
    Remedy("continual_backprop", _continual_backprop, every_step=True, state_key="cbp",
           doc="continual backprop (Dohare et al. 2024): the lowest-utility mature units "
               "replaced at a fractional rate", fields=(
               Field("interventions.replacement_rate", 1e-4, "continual_backprop: "
                     "replacements per mature unit and step", real(0.0, 1.0),
                     per_member=True, hparam="replacement_rate", added=ADDED),
               Field("interventions.maturity", 100, "continual_backprop: steps before a "
                     "unit may be replaced", integer(low=0), per_member=True,
                     hparam="maturity", added=ADDED),
               Field("interventions.utility_decay", 0.99, "continual_backprop: decay of "
                     "the running utility", real(0.0, 1.0, high_open=True),
                     per_member=True, hparam="utility_decay", added=ADDED),
               Field("interventions.cbp_bias_correction", CBP_BIAS_CORRECTION,
                     "continual_backprop: rank units by u / (1 - decay^age) (True, the "
                     "reference code lop/algos/gnt.py) or by u (False, the paper's eq. 1)",
                     boolean(), per_member=True, hparam="cbp_bias_correction",
                     encode=float, added="2026-12-01", before=False))),
    Remedy("shrink_perturb", _shrink_perturb, doc="shrink and perturb (Ash & Adams 2020): "
           "theta <- shrink * theta + noise * N(0, 1)", fields=(
               Field("interventions.shrink", 0.9, "shrink_perturb: factor lambda",
                     real(0.0), per_member=True, hparam="shrink", added=ADDED),
               Field("interventions.noise", 0.01, "shrink_perturb: noise std sigma",
                     real(0.0), per_member=True, hparam="noise", added=ADDED))),
)}


def names() -> tuple[str, ...]:
    """The values ``interventions.method`` may take: "none", then the registry
    in order (a member's state stores the index into this tuple)."""
    return ("none",) + tuple(REMEDIES)


def remedy_fields() -> tuple[Field, ...]:
    return tuple(f for r in REMEDIES.values() for f in r.fields)


def remedy_of_field(name: str) -> str | None:
    """The remedy whose entry declares the config field ``name`` (None for
    the other fields): the field matters only to members using it."""
    for r in REMEDIES.values():
        if any(f.name == name for f in r.fields):
            return r.name
    return None


@contextlib.contextmanager
def registered(remedy: Remedy):
    """Adds ``remedy`` to the registry for the duration of a ``with`` block
    (the way a test or a notebook tries a new remedy)."""
    if remedy.name in REMEDIES:
        raise ValueError(f"a remedy named {remedy.name!r} is already registered.")
    REMEDIES[remedy.name] = remedy
    try:
        yield remedy
    finally:
        del REMEDIES[remedy.name]


def used_by(methods: Sequence[str]) -> tuple[str, ...]:
    """The remedies among ``methods`` (values of ``interventions.method``), in
    registry order."""
    used = set(methods)
    return tuple(name for name in REMEDIES if name in used)


class Chain(NamedTuple):
    """The remedies a group compiles in, for one member at a time.

    ``init()`` is ``MemberState.interventions``: ``{}`` without a remedy,
    else the cumulative ``units_reset`` count per hidden layer, per unit the
    step after which a remedy last acted on it (``last_reset``, -1 before any;
    the unit lifelines' reset events), and each
    stateful remedy's state under its ``state_key``. ``update(state,
    observation, member, diverged, every_step)`` applies the remedies of one
    kind (every step, or periodic) and returns ``(state, params, reinit)``:
    the new parameters (each remedy's edit kept only where the member uses
    it) and the OR of the masks to re-initialise (None when no remedy of
    that kind re-initialises)."""
    remedies: tuple
    transforms: tuple
    widths: tuple

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    @property
    def every_step(self) -> bool:
        return any(r.every_step for r in self.remedies)

    @property
    def periodic(self) -> bool:
        return any(not r.every_step for r in self.remedies)

    def init(self) -> dict:
        if not self.remedies:
            return {}
        out = {"units_reset": jnp.zeros((self.num_layers,), jnp.int32),
               # per unit, the step after which a remedy last acted on it (-1: never)
               "last_reset": tuple(jnp.full((w,), -1, jnp.int32) for w in self.widths)}
        for r, t in zip(self.remedies, self.transforms):
            if r.state_key is not None:
                out[r.state_key] = t.init()
        return out

    def model_kwargs(self, state: dict) -> dict:
        out = {}
        for r, t in zip(self.remedies, self.transforms):
            if t.model_kwargs is not None and r.state_key in state:
                out.update(t.model_kwargs(state[r.state_key]))
        return out

    def update(self, state: dict, obs: Observation, member: Member, diverged,
               every_step: bool):
        params, reinit = member.params, None
        for r, t in zip(self.remedies, self.transforms):
            if r.every_step != every_step:
                continue
            use = (member.hparams["intervention"] == names().index(r.name)) & ~diverged
            old = state[r.state_key] if r.state_key is not None else ()
            new, edit = t.update(old, obs, member._replace(params=params))
            if r.state_key is not None:
                state = dict(state, **{r.state_key: _where(use, new, old)})
            if edit.counted is not None:
                counts = jnp.stack([(u & use).sum(dtype=jnp.int32) for u in edit.counted])
                last = tuple(jnp.where(u & use, member.step, t)
                             for u, t in zip(edit.counted, state["last_reset"]))
                state = dict(state, units_reset=state["units_reset"] + counts, last_reset=last)
            if edit.params is not None:
                params = _where(use, edit.params, params)
            if edit.reinit is not None:
                masks = tuple(m & use for m in edit.reinit)
                reinit = masks if reinit is None else tuple(a | b for a, b in zip(reinit, masks))
        return state, params, reinit


def _where(use, new, old):
    return jax.tree.map(lambda n, o: jnp.where(use, n, o), new, old)


def chain(methods: Sequence[str], config, widths: Sequence[int]) -> Chain:
    """The :class:`Chain` of the remedies named in ``methods`` (registry order)."""
    remedies = tuple(REMEDIES[m] for m in used_by(methods))
    widths = tuple(int(w) for w in widths)
    return Chain(remedies, tuple(r.make(config, widths) for r in remedies), widths)
