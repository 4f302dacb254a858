"""Interventions on a hand-made member touch exactly the units they should."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deadjax import interventions, optim
from tests.conftest import tiny_config


def _params(rng, sizes=(5, 3, 4, 2), norm=False):
    p = {}
    for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        p[f"Dense_{l}"] = {"kernel": jnp.asarray(rng.normal(size=(a, b)), jnp.float32),
                           "bias": jnp.asarray(rng.normal(size=b), jnp.float32)}
        if norm and l < len(sizes) - 2:
            p[f"BatchNorm_{l}"] = {"scale": jnp.asarray(rng.normal(size=b), jnp.float32),
                                   "bias": jnp.asarray(rng.normal(size=b), jnp.float32)}
    return p


def _optimizers():
    cfg = tiny_config(optim__name="adam")
    yield "adam", optax.adam(1e-2)
    yield "momentum", optax.sgd(1e-2, momentum=0.9)
    yield "rmsprop", optax.rmsprop(1e-2)
    yield "registry adam", optim.make(cfg)


@pytest.mark.parametrize("name,tx", list(_optimizers()))
@pytest.mark.parametrize("norm", [False, True])
def test_redo_touches_exactly_the_dormant_units(name, tx, norm):
    rng = np.random.default_rng(0)
    params, fresh = _params(rng, norm=norm), _params(np.random.default_rng(1), norm=norm)
    grads = _params(np.random.default_rng(2), norm=norm)
    opt_state = tx.init(params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-zero moments
    # layer 0 (3 units): unit 1 never active; layer 1 (4 units): units 0 and 3
    h0 = np.abs(rng.normal(size=(6, 3))).astype(np.float32); h0[:, 1] = 0
    h1 = np.abs(rng.normal(size=(6, 4))).astype(np.float32); h1[:, [0, 3]] = 0
    new, new_state, reset = interventions.redo(params, opt_state, fresh,
                                               [jnp.asarray(h0), jnp.asarray(h1)], 0.0)
    assert [list(np.asarray(r)) for r in reset] == [[False, True, False],
                                                    [True, False, False, True]]
    want = jax.tree.map(np.array, params)
    want["Dense_0"]["kernel"][:, 1] = fresh["Dense_0"]["kernel"][:, 1]
    want["Dense_0"]["bias"][1] = fresh["Dense_0"]["bias"][1]
    want["Dense_1"]["kernel"][1, :] = 0
    want["Dense_1"]["kernel"][:, [0, 3]] = np.asarray(fresh["Dense_1"]["kernel"])[:, [0, 3]]
    want["Dense_1"]["bias"][[0, 3]] = np.asarray(fresh["Dense_1"]["bias"])[[0, 3]]
    want["Dense_2"]["kernel"][[0, 3], :] = 0
    if norm:
        for k in ("scale", "bias"):
            want["BatchNorm_0"][k][1] = fresh["BatchNorm_0"][k][1]
            want["BatchNorm_1"][k][[0, 3]] = np.asarray(fresh["BatchNorm_1"][k])[[0, 3]]
    jax.tree.map(np.testing.assert_array_equal, new, want)
    # optimiser entries: zero exactly on the touched parameters, unchanged elsewhere
    touched = jax.tree.map(lambda a, b: a != b, jax.tree.map(np.asarray, new),
                           jax.tree.map(np.asarray, params))
    touched["Dense_1"]["kernel"][1, :] = True      # zeroed rows equal to 0 may coincide
    touched["Dense_2"]["kernel"][[0, 3], :] = True
    structure = jax.tree.structure(params)
    is_moment = lambda x: jax.tree.structure(x) == structure
    old_moments = [x for x in jax.tree.leaves(opt_state, is_leaf=is_moment) if is_moment(x)]
    new_moments = [x for x in jax.tree.leaves(new_state, is_leaf=is_moment) if is_moment(x)]
    assert len(new_moments) == {"adam": 2, "momentum": 1, "rmsprop": 1,
                                "registry adam": 2}[name]
    for old, got in zip(old_moments, new_moments):
        for o, g, m in zip(jax.tree.leaves(old), jax.tree.leaves(got), jax.tree.leaves(touched)):
            o, g = np.asarray(o), np.asarray(g)
            assert (g[m] == 0).all() and (m.sum() == 0 or (o[m] != 0).any())
            np.testing.assert_array_equal(g[~m], o[~m])
    others = lambda s: [np.asarray(x) for x in jax.tree.leaves(s, is_leaf=is_moment)
                        if not is_moment(x)]
    for a, b in zip(others(new_state), others(opt_state)):  # counts, hyperparameters
        np.testing.assert_array_equal(a, b)


def test_redo_vmaps_over_members():
    """A population of members with their own dormant units equals each alone."""
    tx = optax.adam(1e-2)
    members = [_params(np.random.default_rng(s)) for s in range(3)]
    fresh = [_params(np.random.default_rng(10 + s)) for s in range(3)]
    hs = [[jnp.asarray(np.random.default_rng(20 + s).normal(size=(6, w)) * (s % 2), jnp.float32)
           for w in (3, 4)] for s in range(3)]
    states = [tx.init(p) for p in members]
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
    out = jax.vmap(lambda p, o, f, h: interventions.redo(p, o, f, h, 0.1))(
        stack(members), stack(states), stack(fresh), stack(hs))
    for s in range(3):
        alone = interventions.redo(members[s], states[s], fresh[s], hs[s], 0.1)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[s], b), out, alone)


def test_shrink_perturb_against_numpy():
    params = _params(np.random.default_rng(0))
    key = jax.random.PRNGKey(3)
    out = interventions.shrink_perturb(params, key, 0.5, 0.01)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    for got, p, k in zip(jax.tree.leaves(out), leaves, keys):
        eps = np.asarray(jax.random.normal(k, p.shape, p.dtype))
        np.testing.assert_allclose(got, 0.5 * np.asarray(p) + 0.01 * eps, rtol=1e-6, atol=1e-7)
    same = interventions.shrink_perturb(params, key, 1.0, 0.0)
    jax.tree.map(np.testing.assert_array_equal, same, params)
