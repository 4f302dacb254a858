"""Tests of deadjax.optim: populations equal per-member runs and NumPy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import optim
from deadjax.config import ConfigError, default_config

TOL = 1e-6
STEPS = 5

# Three members with different hyperparameters.
HPARAMS = {
    "learning_rate": np.array([0.05, 0.1, 0.02]),
    "weight_decay": np.array([0.0, 0.1, 0.3]),
    "momentum": np.array([0.0, 0.5, 0.9]),
}


def _config(name, schedule="constant", steps=8, warmup_steps=0, clip_norm=0.0):
    c = default_config()
    c.optim.name = name
    c.optim.schedule = schedule
    c.optim.warmup_steps = warmup_steps
    c.optim.clip_norm = clip_norm
    c.train.steps = steps
    return c


def _params(seed):
    """A small Flax-layout params dict: two Dense layers and a LayerNorm scale."""
    rng = np.random.default_rng(seed)
    return {"params": {
        "Dense_0": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
        "LayerNorm_0": {"scale": 1.0 + 0.1 * rng.normal(size=(4,))},
        "Dense_1": {"kernel": rng.normal(size=(4, 2)), "bias": rng.normal(size=(2,))},
    }}


# Gradient of a fixed separable loss: g = a * p + c (same in NumPy and JAX),
# with a, c chosen so that no gradient component is near zero.
_RNG = np.random.default_rng(123)
_A = jax.tree.map(lambda x: _RNG.uniform(0.5, 1.5, size=x.shape), _params(0))
_C = jax.tree.map(lambda x: _RNG.choice([-1.0, 1.0], size=x.shape)
                  * _RNG.uniform(2.0, 3.0, size=x.shape), _params(0))


def _grad_np(p):
    return jax.tree.map(lambda a, x, c: a * x + c, _A, p, _C)


def _is_kernel_np(path):
    return getattr(path[-1], "key", None) == "kernel"


def _schedule_np(name, t, steps, warmup):
    T = max(steps, 1)
    if name == "constant":
        return 1.0
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, T) / T))
    if t < warmup:
        return t / warmup
    D = max(T - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(t - warmup, D) / D))


def _reference(name, params, lr, wd, m, n_steps, schedule="constant", steps=8, warmup=0):
    """Independent NumPy (float64) implementation of each update rule."""
    f = np.float64
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    kern = [_is_kernel_np(path) for path, _ in flat]
    p = [np.array(x, f) for _, x in flat]
    b = [np.zeros_like(x) for x in p]   # momentum buffer / first moment
    v = [np.zeros_like(x) for x in p]   # second moment
    lr, wd, m = f(lr), f(wd), f(m)
    b1, b2, eps, rho = f(0.9), f(0.999), f(1e-8), f(0.9)
    for t in range(n_steps):
        g = jax.tree_util.tree_leaves(_grad_np(treedef.unflatten(p)))
        if name != "adamw":  # L2 penalty 0.5 wd ||W||^2 on kernels, in the loss
            g = [gi + wd * pi if k else gi for gi, pi, k in zip(g, p, kern)]
        lr_t = lr * f(_schedule_np(schedule, t, steps, warmup))
        new = []
        for i, (pi, gi) in enumerate(zip(p, g)):
            if name == "sgd":
                pi = pi - lr_t * gi
            elif name == "momentum":
                b[i] = gi + m * b[i]
                pi = pi - lr_t * b[i]
            elif name == "nesterov":
                b[i] = gi + m * b[i]
                pi = pi - lr_t * (gi + m * b[i])
            elif name in ("adam", "adamw"):
                b[i] = b1 * b[i] + (1 - b1) * gi
                v[i] = b2 * v[i] + (1 - b2) * gi ** 2
                mhat = b[i] / (1 - b1 ** f(t + 1))
                vhat = v[i] / (1 - b2 ** f(t + 1))
                step = mhat / (np.sqrt(vhat) + eps)
                if name == "adamw" and kern[i]:
                    step = step + wd * pi
                pi = pi - lr_t * step
            elif name == "rmsprop":
                v[i] = rho * v[i] + (1 - rho) * gi ** 2
                b[i] = lr_t * gi / np.sqrt(v[i] + eps) + m * b[i]
                pi = pi - b[i]
            assert pi.dtype == f
            new.append(pi)
        p = new
    return treedef.unflatten(p)


def _loss_grad(name):
    """Gradient the trainer would take: the fixed loss plus the L2 penalty."""
    dtype = jnp.result_type(float)  # float32, or float64 under enable_x64
    a = jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), _A)
    c = jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), _C)

    def loss(p, wd):
        quad = sum(jnp.sum(0.5 * ai * x ** 2 + ci * x) for ai, x, ci in
                   zip(jax.tree.leaves(a), jax.tree.leaves(p), jax.tree.leaves(c)))
        return quad + optim.l2_penalty(p, wd, name)

    return jax.grad(loss)


def _trainer(tx, name, n_steps, population):
    """A jitted ``(params, hparams) -> (params, opt_state)`` after ``n_steps`` updates.

    ``population=False``: one member alone; ``True``: all members, vmapped.
    """
    grad = _loss_grad(name)

    def train(params, hp):
        state = optim.init(tx, params, hp)

        def step(_, carry):
            p, s = carry
            u, s = tx.update(grad(p, s.hyperparams["weight_decay"]), s, p)
            return jax.tree.map(lambda x, d: x + d, p, u), s

        return jax.lax.fori_loop(0, n_steps, step, (params, state))

    return jax.jit(jax.vmap(train) if population else train)


def _run_population(tx, name, params, hp, n_steps):
    """All members as one vmapped program."""
    return _trainer(tx, name, n_steps, population=True)(params, hp)


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _close(actual, expected, tol=TOL):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64),
                                   rtol=0, atol=tol)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_population_equals_members_and_reference(name):
    """float32 (as trained): population == each member alone, both near the reference."""
    steps, schedule, warmup = 8, "warmup_cosine", 2
    tx = optim.make(_config(name, schedule, steps=steps, warmup_steps=warmup))
    members = [_params(i) for i in range(3)]
    stacked = _f32(jax.tree.map(lambda *xs: np.stack(xs), *members))

    pop, pop_state = _run_population(tx, name, stacked, _f32(HPARAMS), STEPS)
    assert int(pop_state.count[0]) == STEPS
    run_alone = _trainer(tx, name, STEPS, population=False)
    for i, member in enumerate(members):
        h = {k: float(v[i]) for k, v in HPARAMS.items()}
        alone, _ = run_alone(_f32(member), _f32(h))
        in_pop = jax.tree.map(lambda x: x[i], pop)
        _close(in_pop, alone)
        ref = _reference(name, member, h["learning_rate"], h["weight_decay"],
                         h["momentum"], STEPS, schedule, steps, warmup)
        # float32 rounding of Adam's bias correction 1 - 0.999^t alone is
        # ~1e-5 relative, hence the looser bound here; the float64 test below
        # checks the rule itself at 1e-6.
        _close(in_pop, ref, tol=1e-5)
        # The parameters actually moved (the test is not vacuous).
        assert not np.allclose(np.asarray(in_pop["params"]["Dense_0"]["kernel"]),
                               member["params"]["Dense_0"]["kernel"], atol=1e-3)


@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("warmup_cosine", 2)])
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_population_equals_members_and_reference_float64(name, schedule, warmup):
    """float64: population, each member alone and the NumPy reference agree within 1e-6."""
    steps = 8
    with jax.enable_x64(True):
        tx = optim.make(_config(name, schedule, steps=steps, warmup_steps=warmup))
        members = [_params(i) for i in range(3)]
        stacked = _f64(jax.tree.map(lambda *xs: np.stack(xs), *members))
        pop, pop_state = _run_population(tx, name, stacked, _f64(HPARAMS), STEPS)
        assert pop_state.hyperparams["learning_rate"].dtype == jnp.float64
        run_alone = _trainer(tx, name, STEPS, population=False)
        for i, member in enumerate(members):
            h = {k: float(v[i]) for k, v in HPARAMS.items()}
            alone, _ = run_alone(_f64(member), _f64(h))
            in_pop = jax.tree.map(lambda x: x[i], pop)
            ref = _reference(name, member, h["learning_rate"], h["weight_decay"],
                             h["momentum"], STEPS, schedule, steps, warmup)
            _close(in_pop, alone, tol=TOL)
            _close(in_pop, ref, tol=TOL)
            _close(alone, ref, tol=TOL)
            # Far tighter than required: the rules agree to float64 rounding.
            _close(in_pop, ref, tol=1e-10)


def test_hyperparams_live_in_state_per_member():
    tx = optim.make(_config("momentum"))
    stacked = _f32(jax.tree.map(lambda *xs: np.stack(xs), *[_params(i) for i in range(3)]))
    state = jax.vmap(lambda p, h: optim.init(tx, p, h))(stacked, _f32(HPARAMS))
    hp = optim.hyperparams(state)
    assert set(hp) == set(optim.HYPERPARAMS)
    for k, v in HPARAMS.items():
        assert hp[k].shape == (3,) and hp[k].dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(hp[k]), v, rtol=1e-7)
    # Updating keeps them, per member.
    _, state2 = jax.vmap(tx.update)(stacked, state, stacked)
    for k, v in HPARAMS.items():
        np.testing.assert_allclose(np.asarray(state2.hyperparams[k]), v, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(optim.step_count(state2)), [1, 1, 1])


def test_update_reads_hyperparams_from_state():
    tx = optim.make(_config("sgd"))
    p = {"kernel": jnp.ones(3)}
    s = optim.init(tx, p, {"learning_rate": 0.5, "weight_decay": 0.0, "momentum": 0.0})
    u, _ = tx.update(p, s, p)
    np.testing.assert_allclose(np.asarray(u["kernel"]), -0.5)
    s = s._replace(hyperparams={**s.hyperparams, "learning_rate": jnp.float32(0.25)})
    u, _ = tx.update(p, s, p)
    np.testing.assert_allclose(np.asarray(u["kernel"]), -0.25)


def test_uninitialised_hyperparams_are_nan_and_init_checks_keys():
    tx = optim.make(_config("adam"))
    p = {"kernel": jnp.ones(3)}
    state = tx.init(p)
    assert all(np.isnan(np.asarray(v)) for v in state.hyperparams.values())
    with pytest.raises(ValueError, match="momentum"):
        optim.init(tx, p, {"learning_rate": 0.1, "weight_decay": 0.0})
    with pytest.raises(ValueError, match="scalar"):
        optim.init(tx, p, {"learning_rate": jnp.ones(2), "weight_decay": 0.0,
                           "momentum": 0.0})


def test_unknown_names():
    with pytest.raises(ConfigError, match="optim.name"):
        optim.make(_config("lion"))
    with pytest.raises(ConfigError, match="optim.schedule"):
        optim.make(_config("sgd", schedule="step"))
    with pytest.raises(ConfigError, match="optim.name"):
        optim.l2_penalty({"kernel": jnp.ones(2)}, 0.1, "lion")


@pytest.mark.parametrize("T", [10, 37])
def test_cosine_schedule_closed_form(T):
    s = optim.schedule("cosine", T)
    for t in [0, 1, T // 4, T // 2, T - 1, T, T + 5]:
        expected = 0.5 * (1 + math.cos(math.pi * min(t, T) / T))
        np.testing.assert_allclose(float(s(jnp.int32(t))), expected, atol=1e-6)
    assert float(s(0)) == 1.0 and abs(float(s(T))) < 1e-7


def test_warmup_cosine_schedule_closed_form():
    T, W = 20, 5
    s = optim.schedule("warmup_cosine", T, W)
    for t in range(W):
        np.testing.assert_allclose(float(s(t)), t / W, atol=1e-7)   # linear from 0
    np.testing.assert_allclose(float(s(W)), 1.0, atol=1e-7)       # peak 1
    for t in [W + 1, W + (T - W) // 2, T - 1, T, T + 3]:
        expected = 0.5 * (1 + math.cos(math.pi * min(t - W, T - W) / (T - W)))
        np.testing.assert_allclose(float(s(t)), expected, atol=1e-6)
    np.testing.assert_allclose(float(optim.schedule("constant", T)(7)), 1.0)


def test_schedule_uses_optimiser_step_count_and_resumes():
    T, W = 10, 3
    c = _config("sgd", "warmup_cosine", steps=T, warmup_steps=W)
    tx = optim.make(c)
    p = {"kernel": jnp.zeros(2)}
    g = {"kernel": jnp.ones(2)}
    state = optim.init(tx, p, {"learning_rate": 2.0, "weight_decay": 0.0, "momentum": 0.0})
    update = jax.jit(tx.update)
    for t in range(T + 2):
        np.testing.assert_allclose(float(optim.current_learning_rate(c, state)),
                                   2.0 * _schedule_np("warmup_cosine", t, T, W), atol=1e-6)
        if t == 6:  # "checkpoint and resume": a copy of the state carries on exactly
            state = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
        u, state = update(g, state, p)
        np.testing.assert_allclose(np.asarray(u["kernel"]),
                                   -2.0 * _schedule_np("warmup_cosine", t, T, W), atol=1e-6)


def test_clip_norm_per_member():
    clip = 0.5
    tx = optim.make(_config("sgd", clip_norm=clip))
    # Member 0 has a big gradient (norm 10), member 1 a small one (norm 0.1).
    grads = {"a": {"kernel": jnp.array([[6.0, 0.0], [0.06, 0.0]])},
             "b": {"bias": jnp.array([[8.0], [0.08]])}}
    params = jax.tree.map(jnp.zeros_like, grads)
    hp = {"learning_rate": jnp.ones(2), "weight_decay": jnp.zeros(2),
          "momentum": jnp.zeros(2)}
    state = jax.vmap(lambda p, h: optim.init(tx, p, h))(params, hp)
    u, _ = jax.vmap(tx.update)(grads, state, params)
    norms = np.sqrt(sum(np.sum(np.asarray(x) ** 2, axis=tuple(range(1, x.ndim)))
                        for x in jax.tree.leaves(u)))
    np.testing.assert_allclose(norms, [clip, 0.1], rtol=1e-6)
    # Direction kept.
    np.testing.assert_allclose(np.asarray(u["a"]["kernel"][0]), [-0.3, 0.0], rtol=1e-6)
    # No clipping without clip_norm.
    tx0 = optim.make(_config("sgd"))
    s0 = jax.vmap(lambda p, h: optim.init(tx0, p, h))(params, hp)
    u0, _ = jax.vmap(tx0.update)(grads, s0, params)
    np.testing.assert_allclose(np.asarray(u0["a"]["kernel"][0]), [-6.0, 0.0])


def test_l2_penalty_by_hand():
    params = {"params": {
        "Dense_0": {"kernel": jnp.ones((3, 4)), "bias": 5 * jnp.ones(4)},
        "LayerNorm_0": {"scale": 7 * jnp.ones(4), "bias": jnp.ones(4)},
        "Dense_1": {"kernel": 2 * jnp.ones((4, 2)), "bias": jnp.ones(2)},
    }}
    # sum of squared kernels = 12 * 1 + 8 * 4 = 44; biases and scales ignored.
    for name in optim.OPTIMIZERS:
        value = float(jax.jit(optim.l2_penalty, static_argnums=2)(params, 0.1, name))
        expected = 0.0 if name == "adamw" else 0.5 * 0.1 * 44
        np.testing.assert_allclose(value, expected, rtol=1e-6)
    # Per member under vmap, with traced weight decay.
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    pen = jax.jit(jax.vmap(lambda p, wd: optim.l2_penalty(p, wd, "adam")))(
        stacked, jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(np.asarray(pen), [2.2, 0.5 * 0.2 * 4 * 44], rtol=1e-6)
    # Only kernels get a gradient.
    grad = jax.jit(jax.grad(lambda p: optim.l2_penalty(p, 0.1, "sgd")))(params)
    assert float(jnp.abs(grad["params"]["Dense_0"]["bias"]).max()) == 0.0
    assert float(jnp.abs(grad["params"]["LayerNorm_0"]["scale"]).max()) == 0.0
    np.testing.assert_allclose(np.asarray(grad["params"]["Dense_1"]["kernel"]), 0.2)


def test_adamw_decays_kernels_only():
    tx = optim.make(_config("adamw"))
    params = _f32(_params(0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = optim.init(tx, params, {"learning_rate": 0.1, "weight_decay": 0.5,
                                    "momentum": 0.9})
    u, _ = jax.jit(tx.update)(zeros, state, params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(u):
        p = params
        for entry in path:
            p = p[entry.key]
        expected = -0.1 * 0.5 * np.asarray(p) if _is_kernel_np(path) else 0.0
        np.testing.assert_allclose(np.asarray(leaf), expected, atol=1e-7)
