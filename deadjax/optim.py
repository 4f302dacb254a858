"""Optax optimisers by name, with per-member hyperparameters in the optimiser state.

A population is ``jax.vmap`` over a leading member axis, and
``optim.learning_rate``, ``optim.weight_decay`` and ``optim.momentum`` are
per-member traced scalars (DESIGN.md, "The one idea"). So that a sweep over
them stays one compiled program, the transformation returned by :func:`make`
is built from *static* fields only (``optim.name``, ``optim.schedule``,
``optim.warmup_steps``, ``optim.clip_norm``, ``train.steps``) and wrapped in
:func:`optax.inject_hyperparams`: the three hyperparameters live in
``opt_state.hyperparams`` (a dict of scalars per member, checkpointed with the
rest of the state) and :func:`init` writes each member's values there::

    tx = optim.make(config)
    opt_state = jax.vmap(lambda p, h: optim.init(tx, p, h))(params, hparams)
    updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)

Each member then gets exactly the update its own optimiser would give it.

Optimisers (``g`` the gradient, ``lr_t = learning_rate * s(t)`` the scheduled
learning rate, ``m = momentum``, ``t`` the optimiser's step count from 0):

``sgd``
    ``θ ← θ − lr_t g``. ``momentum`` unused.
``momentum``
    Heavy ball, ``optax.sgd(momentum=m)``: ``b ← g + m b``; ``θ ← θ − lr_t b``.
``nesterov``
    Optax's Nesterov form, ``optax.sgd(momentum=m, nesterov=True)``:
    ``b ← g + m b``; ``θ ← θ − lr_t (g + m b)`` (Sutskever et al., 2013, as
    rewritten by Bengio et al., 2013).
``adam``
    Kingma & Ba (2015), ``b1=0.9, b2=0.999, eps=1e-8`` (eps outside the square
    root, bias-corrected moments). ``momentum`` unused.
``adamw``
    Loshchilov & Hutter (2019), ``optax.adamw`` with the same Adam constants and
    *decoupled* weight decay ``λ = weight_decay`` applied to Dense kernels only
    (leaves named ``kernel``; biases and normalisation scales/offsets are not
    decayed): ``θ ← θ − lr_t (adam_direction + λ θ)``. As in optax (and the
    paper's schedule multiplier η_t), the decay is scaled by ``lr_t``.
    ``momentum`` unused.
``rmsprop``
    Hinton (2012), ``optax.rmsprop`` with its defaults ``decay=0.9, eps=1e-8``
    (eps *inside* the square root, ``eps_in_sqrt=True``; PyTorch puts it
    outside) and ``momentum=m`` applied after the learning rate, as in
    TensorFlow: ``ν ← 0.9 ν + 0.1 g²``; ``b ← lr_t g / √(ν + eps) + m b``;
    ``θ ← θ − b``. ``momentum = 0`` is plain RMSprop.

Weight decay: for every optimiser but ``adamw`` it is an L2 penalty
``0.5 · weight_decay · Σ‖kernel‖²`` that the trainer adds to the loss
(:func:`l2_penalty`), so its gradient goes through the optimiser (Adam's
normalisation, clipping, ...); for ``adamw`` the penalty is 0 and the decay is
decoupled inside the optimiser.

Schedules ``s(t)`` have peak 1 and multiply the per-member learning rate; ``t``
is the optimiser's own step count (kept in its state, so a resumed run carries
on exactly), ``T = train.steps``, ``W = optim.warmup_steps``:

``constant``       ``s(t) = 1``.
``cosine``         ``s(t) = 0.5 (1 + cos(π min(t, T) / T))``, from 1 to 0 at ``T``.
``warmup_cosine``  ``s(t) = t / W`` for ``t < W`` (linear from 0), then
                   ``0.5 (1 + cos(π min(t − W, T − W) / (T − W)))``.

The update taken at step ``t`` (the ``t+1``-th update) uses ``s(t)``, so the
first update of a warm-up has learning rate 0, as in
``optax.warmup_cosine_decay_schedule``.

``optim.clip_norm > 0`` prepends ``optax.clip_by_global_norm(clip_norm)`` (per
member: the norm is over that member's gradient pytree, L2-penalty gradient
included, before momentum/Adam and before adamw's decay).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from deadjax.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine")

# The per-member hyperparameters that live in ``opt_state.hyperparams``.
HYPERPARAMS = ("learning_rate", "weight_decay", "momentum")

# Constants of the optimisers (static; documented above).
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8
RMSPROP_DECAY = 0.9
RMSPROP_EPS = 1e-8

# Placeholder values :func:`make` gives the hyperparameters. They are NaN so that
# forgetting :func:`init` (calling ``tx.init`` alone) shows at once as NaN
# updates rather than silently training with some default.
_UNSET = float("nan")


def _error(field: str, value: Any, allowed) -> ValueError:
    return ConfigError(f"{field} = {value!r} is not allowed; choose one of "
                       f"{', '.join(repr(a) for a in allowed)}.")


def _path_name(entry) -> str | None:
    """The name of one step of a pytree path (dict key or attribute), if any."""
    for attr in ("key", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return None


def _is_kernel(path) -> bool:
    return bool(path) and _path_name(path[-1]) == "kernel"


def kernel_mask(params) -> Any:
    """A pytree like ``params`` with True at Dense kernels (leaves named ``kernel``)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------

def schedule(name: str, steps: int, warmup_steps: int = 0) -> Callable[[Any], jax.Array]:
    """The learning-rate multiplier ``s(t)`` (peak 1) of a schedule, as a jnp function.

    ``t`` is the optimiser's step count (an integer array, traced is fine);
    see the module docstring for the closed forms.
    """
    if name not in SCHEDULES:
        raise _error("optim.schedule", name, SCHEDULES)
    total = max(int(steps), 1)
    warm = max(int(warmup_steps), 0)
    decay = max(total - warm, 1)

    # The default float dtype: float32, or float64 when x64 is enabled.
    def as_float(t):
        return jnp.asarray(t).astype(jnp.result_type(float))

    def cosine(t, length):
        t = jnp.clip(as_float(t), 0.0, float(length))
        return 0.5 * (1.0 + jnp.cos(math.pi * t / length))

    if name == "constant":
        return lambda t: jnp.ones_like(as_float(t))
    if name == "cosine":
        return lambda t: cosine(t, total)

    def warmup_cosine(t):
        tf = as_float(t)
        if warm == 0:
            return cosine(tf, decay)
        return jnp.where(tf < warm, tf / warm, cosine(tf - warm, decay))

    return warmup_cosine


def schedule_from_config(config) -> Callable[[Any], jax.Array]:
    """:func:`schedule` for ``optim.schedule``, ``train.steps``, ``optim.warmup_steps``."""
    o = config.optim
    return schedule(o.schedule, config.train.steps, o.warmup_steps)


# --------------------------------------------------------------------------
# The transformation
# --------------------------------------------------------------------------

def _base(name: str, learning_rate, weight_decay, momentum) -> optax.GradientTransformation:
    """The optax optimiser ``name``; ``learning_rate`` is a schedule (count -> lr)."""
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "nesterov":
        return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return optax.adam(learning_rate, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)
    if name == "adamw":
        return optax.adamw(learning_rate, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS,
                           weight_decay=weight_decay, mask=kernel_mask)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate, decay=RMSPROP_DECAY, eps=RMSPROP_EPS,
                             momentum=momentum)
    raise _error("optim.name", name, OPTIMIZERS)


def make(config) -> optax.GradientTransformation:
    """The optimiser of ``config``, with injectable per-member hyperparameters.

    Built from static fields only (``optim.name``, ``optim.schedule``,
    ``optim.warmup_steps``, ``optim.clip_norm``, ``train.steps``); the result is
    ``optax.inject_hyperparams(...)(learning_rate=, weight_decay=, momentum=)``
    whose hyperparameters are placeholders (NaN) until :func:`init` sets each
    member's values. ``weight_decay`` is used only by ``adamw`` (the others
    take it as an L2 penalty in the loss, :func:`l2_penalty`); ``momentum`` only
    by ``momentum``, ``nesterov`` and ``rmsprop``.
    """
    o = config.optim
    name = o.name
    if name not in OPTIMIZERS:
        raise _error("optim.name", name, OPTIMIZERS)
    s = schedule_from_config(config)  # validates optim.schedule
    clip_norm = float(o.clip_norm)

    def factory(learning_rate, weight_decay, momentum):
        # The learning rate is a schedule of the inner state's own step count
        # (optax.scale_by_schedule keeps it), scaled by this member's value.
        lr = lambda count: learning_rate * s(count)
        tx = _base(name, lr, weight_decay, momentum)
        if clip_norm > 0:
            tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
        return tx

    return optax.inject_hyperparams(factory)(
        learning_rate=_UNSET, weight_decay=_UNSET, momentum=_UNSET)


def init(tx: optax.GradientTransformation, params, hparams: Mapping[str, Any]):
    """``tx.init(params)`` with this member's hyperparameters written into the state.

    ``hparams`` maps each of ``learning_rate``, ``weight_decay`` and ``momentum``
    to a scalar (a traced one under ``jax.vmap``); they are stored in
    ``opt_state.hyperparams`` in the state's own dtype.
    """
    missing = [k for k in HYPERPARAMS if k not in hparams]
    extra = [k for k in hparams if k not in HYPERPARAMS]
    if missing or extra:
        raise ValueError(f"optim.init needs hparams with exactly the keys "
                         f"{', '.join(HYPERPARAMS)}; missing {missing}, unknown {extra}.")
    state = tx.init(params)
    values = {}
    for k in HYPERPARAMS:
        old = state.hyperparams[k]
        value = jnp.asarray(hparams[k], dtype=old.dtype)
        if value.shape != old.shape:
            raise ValueError(f"optim.init: hparams[{k!r}] has shape {value.shape}; "
                             f"one member's value must be a scalar (vmap over members).")
        values[k] = value
    return state._replace(hyperparams=values)


def hyperparams(opt_state) -> dict[str, jax.Array]:
    """The per-member hyperparameters stored in ``opt_state``."""
    return dict(opt_state.hyperparams)


def step_count(opt_state) -> jax.Array:
    """The number of updates ``opt_state`` has taken (the schedule's ``t``)."""
    return opt_state.count


def current_learning_rate(config, opt_state) -> jax.Array:
    """``learning_rate · s(t)``: the learning rate the next update will use."""
    s = schedule_from_config(config)
    return opt_state.hyperparams["learning_rate"] * s(opt_state.count)


def l2_penalty(params, weight_decay, optimizer_name: str) -> jax.Array:
    """``0.5 · weight_decay · Σ ‖W‖²`` over Dense kernels (leaves named ``kernel``).

    The trainer adds it to the loss for every optimiser except ``adamw``, whose
    weight decay is decoupled inside the optimiser; for ``adamw`` it is 0.
    Biases and normalisation parameters are never penalised.
    """
    if optimizer_name not in OPTIMIZERS:
        raise _error("optim.name", optimizer_name, OPTIMIZERS)
    leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
              if _is_kernel(path)]
    dtype = jnp.result_type(*leaves, weight_decay) if leaves else jnp.float32
    if optimizer_name == "adamw" or not leaves:
        return jnp.zeros((), dtype)
    total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    return (0.5 * weight_decay * total).astype(dtype)
