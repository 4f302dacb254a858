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


# --- continual backprop --------------------------------------------------------------

def _cbp_numpy(params, fresh, state, hs, rate, maturity, decay, bias_correction=False):
    """Independent float64 NumPy version of the continual-backprop step (one unit
    at a time): returns (params, state, replaced, incoming/outgoing touched masks)."""
    new = {k: {kk: np.array(vv) for kk, vv in v.items()} for k, v in params.items()}
    touched = {k: {kk: np.zeros(np.shape(vv), bool) for kk, vv in v.items()}
               for k, v in params.items()}
    util = [np.array(u, np.float64) for u in state["utility"]]
    age = [np.array(a, np.int64) for a in state["age"]]
    pending = np.array(state["pending"], np.float64)
    replaced = []
    for l, h in enumerate(hs):          # every utility from the parameters as passed in
        h = np.asarray(h, np.float64)
        w_out = np.asarray(params[f"Dense_{l + 1}"]["kernel"], np.float64)
        age[l] = age[l] + 1
        for i in range(len(util[l])):
            contribution = np.mean(np.abs(h[:, i])) * np.sum(np.abs(w_out[i, :]))
            util[l][i] = decay * util[l][i] + (1 - decay) * contribution
        eligible = [i for i in range(len(util[l])) if age[l][i] > maturity]
        pending[l] += rate * len(eligible)
        n = int(np.floor(pending[l]))
        pending[l] -= n
        score = lambda i: (util[l][i] / (1 - decay ** age[l][i]) if bias_correction
                           else util[l][i])
        chosen = sorted(eligible, key=lambda i: (score(i), i))[:n]
        mask = np.zeros(len(util[l]), bool)
        mask[chosen] = True
        util[l][mask] = 0
        age[l][mask] = 0
        replaced.append(mask)
    for l, mask in enumerate(replaced):  # layer by layer: a later layer's incoming wins
        for i in np.flatnonzero(mask):
            for name in (f"Dense_{l}", f"BatchNorm_{l}"):
                for k in new.get(name, {}):
                    if k == "kernel":
                        new[name][k][:, i] = np.asarray(fresh[name][k])[:, i]
                        touched[name][k][:, i] = True
                    else:
                        new[name][k][i] = np.asarray(fresh[name][k])[i]
                        touched[name][k][i] = True
            new[f"Dense_{l + 1}"]["kernel"][i, :] = 0
            touched[f"Dense_{l + 1}"]["kernel"][i, :] = True
    return new, {"utility": util, "age": age, "pending": pending}, replaced, touched


def _moments(opt_state, params):
    structure = jax.tree.structure(params)
    is_moment = lambda x: jax.tree.structure(x) == structure
    leaves = jax.tree.leaves(opt_state, is_leaf=is_moment)
    return ([x for x in leaves if is_moment(x)],
            [np.asarray(x) for x in leaves if not is_moment(x)])


@pytest.mark.parametrize("name,norm,bias_correction", [("adam", False, False),
                                                       ("adam", True, True),
                                                       ("momentum", False, True),
                                                       ("momentum", True, False)])
def test_continual_backprop_against_numpy(name, norm, bias_correction):
    """Several steps: utilities, ages and the carried fraction follow the rule,
    exactly the lowest-score mature units are recycled (never an immature one)
    and nothing else in params or optimiser state changes, bit for bit."""
    tx = {"adam": optax.adam(1e-2), "momentum": optax.sgd(1e-2, momentum=0.9)}[name]
    sizes, widths = (5, 6, 7, 3), (6, 7)
    rate, maturity, decay = 0.25, 2.0, 0.9
    params = _params(np.random.default_rng(0), sizes, norm=norm)
    opt_state = tx.init(params)
    state = interventions.init_cbp_state(widths)
    ref_state = {k: [np.asarray(x) for x in v] if isinstance(v, tuple) else np.asarray(v)
                 for k, v in state.items()}
    step = jax.jit(lambda p, o, f, s, h: interventions.continual_backprop(
        p, o, f, s, h, replacement_rate=rate, maturity=maturity, decay=decay,
        bias_correction=bias_correction))
    counts = []
    for t in range(8):
        rng = np.random.default_rng(100 + t)
        grads = _params(rng, sizes, norm=norm)
        updates, opt_state = tx.update(grads, opt_state, params)   # the training step
        params = optax.apply_updates(params, updates)
        fresh = _params(rng, sizes, norm=norm)
        hs = [jnp.asarray(np.abs(rng.normal(size=(4, w))), jnp.float32) for w in widths]
        ages_before = [np.asarray(a) for a in state["age"]]
        new, new_opt, state, replaced = step(params, opt_state, fresh, state, hs)
        want, ref_state, want_rep, touched = _cbp_numpy(params, fresh, ref_state, hs, rate,
                                                        maturity, decay, bias_correction)
        for got_r, want_r, a in zip(replaced, want_rep, ages_before):
            np.testing.assert_array_equal(got_r, want_r)
            assert (a[np.asarray(got_r)] + 1 > maturity).all()      # only mature units
        jax.tree.map(np.testing.assert_array_equal, new, want)
        for got_u, want_u in zip(state["utility"], ref_state["utility"]):
            np.testing.assert_allclose(got_u, want_u, rtol=1e-5, atol=1e-7)
        for got_a, want_a in zip(state["age"], ref_state["age"]):
            assert got_a.dtype == jnp.int32
            np.testing.assert_array_equal(got_a, want_a)
        np.testing.assert_allclose(state["pending"], ref_state["pending"], atol=1e-6)
        old_m, old_rest = _moments(opt_state, params)
        new_m, new_rest = _moments(new_opt, params)
        assert len(new_m) == {"adam": 2, "momentum": 1}[name]
        for old, got in zip(old_m, new_m):
            for o, g, m in zip(jax.tree.leaves(old), jax.tree.leaves(got),
                               jax.tree.leaves(touched)):
                np.testing.assert_array_equal(np.asarray(g), np.where(m, 0, np.asarray(o)))
        for a, b in zip(new_rest, old_rest):                          # counts
            np.testing.assert_array_equal(a, b)
        counts.append([int(np.sum(r)) for r in replaced])
        params, opt_state = new, new_opt
    # ages 1, 2 immature; from step 3 on the carried fraction yields recycling
    assert counts[:2] == [[0, 0], [0, 0]] and sum(map(sum, counts)) >= 6, counts


def test_continual_backprop_utility_formula():
    """One step from zero state: u = (1 - η) mean_b|h| Σ_k |W_{l+1}[i, k]|, the last
    hidden layer using the output kernel; ages 1; nothing mature, nothing replaced."""
    params = _params(np.random.default_rng(0))
    hs = [jnp.asarray(np.random.default_rng(1).normal(size=(5, w)), jnp.float32)
          for w in (3, 4)]
    _, _, state, replaced = interventions.continual_backprop(
        params, optax.adam(1e-2).init(params), params, interventions.init_cbp_state((3, 4)),
        hs, replacement_rate=1.0, maturity=1.0, decay=0.99)
    for l, h in enumerate(hs):
        w = np.asarray(params[f"Dense_{l + 1}"]["kernel"])
        want = 0.01 * np.abs(np.asarray(h)).mean(0) * np.abs(w).sum(1)
        np.testing.assert_allclose(state["utility"][l], want, rtol=1e-5)
        np.testing.assert_array_equal(state["age"][l], 1)
        assert not np.asarray(replaced[l]).any()


def test_continual_backprop_carries_the_fraction():
    """ρU = 0.03 · 10 = 0.3 per step: one replacement on steps 4 and 7."""
    sizes = (5, 10, 2)
    params = _params(np.random.default_rng(0), sizes)
    fresh = _params(np.random.default_rng(1), sizes)
    opt_state = optax.adam(1e-2).init(params)
    state = interventions.init_cbp_state((10,))
    h = [jnp.asarray(np.abs(np.random.default_rng(2).normal(size=(3, 10))), jnp.float32)]
    got = []
    for _ in range(8):
        params, opt_state, state, replaced = interventions.continual_backprop(
            params, opt_state, fresh, state, h, replacement_rate=0.03, maturity=0.0,
            decay=0.99)
        got.append(int(np.sum(replaced[0])))
    assert got == [0, 0, 0, 1, 0, 0, 1, 0]
    np.testing.assert_allclose(state["pending"], [0.4], atol=1e-5)


def test_continual_backprop_rate_zero_is_identity():
    tx = optax.sgd(1e-2, momentum=0.9)
    params = _params(np.random.default_rng(0), norm=True)
    fresh = _params(np.random.default_rng(1), norm=True)
    _, opt_state = tx.update(_params(np.random.default_rng(2), norm=True), tx.init(params),
                             params)
    state = interventions.init_cbp_state((3, 4))
    hs = [jnp.asarray(np.random.default_rng(3).normal(size=(6, w)), jnp.float32)
          for w in (3, 4)]
    p, o = params, opt_state
    for _ in range(4):
        p, o, state, replaced = interventions.continual_backprop(
            p, o, fresh, state, hs, replacement_rate=0.0, maturity=0.0, decay=0.99)
        assert not any(np.asarray(r).any() for r in replaced)
    jax.tree.map(np.testing.assert_array_equal, p, params)
    jax.tree.map(np.testing.assert_array_equal, o, opt_state)
    for a in state["age"]:
        np.testing.assert_array_equal(a, 4)      # bookkeeping still runs


def test_continual_backprop_vmaps_over_members():
    """Three members with their own rate, maturity and decay, jitted and vmapped,
    equal each member alone, over several steps."""
    tx = optax.adam(1e-2)
    members = [_params(np.random.default_rng(s)) for s in range(3)]
    fresh = [_params(np.random.default_rng(10 + s)) for s in range(3)]
    states = [tx.init(p) for p in members]
    cbps = [interventions.init_cbp_state((3, 4)) for _ in range(3)]
    hps = dict(replacement_rate=np.array([0.0, 0.2, 0.5], np.float32),
               maturity=np.array([0.0, 1.0, 2.0], np.float32),
               decay=np.array([0.9, 0.99, 0.5], np.float32))
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
    pop = jax.jit(jax.vmap(lambda p, o, f, c, h, r, m, d: interventions.continual_backprop(
        p, o, f, c, h, replacement_rate=r, maturity=m, decay=d)))
    carry = (stack(members), stack(states), stack(cbps))
    alone = [(members[s], states[s], cbps[s]) for s in range(3)]
    total = 0
    for t in range(5):
        hs = [[jnp.asarray(np.random.default_rng(100 * t + s).normal(size=(6, w)), jnp.float32)
               for w in (3, 4)] for s in range(3)]
        out = pop(carry[0], carry[1], stack(fresh), carry[2], stack(hs), *hps.values())
        for s in range(3):
            one = interventions.continual_backprop(
                *alone[s][:2], fresh[s], alone[s][2], hs[s],
                **{k: v[s] for k, v in hps.items()})
            mine = jax.tree.map(lambda a: a[s], out)
            for k in (0, 1, 3):        # params, optimiser state, masks: bit for bit
                jax.tree.map(np.testing.assert_array_equal, mine[k], one[k])
            for k in ("age", "pending"):
                jax.tree.map(np.testing.assert_array_equal, mine[2][k], one[2][k])
            # utilities: up to the last bit of a float32 reduction (fused differently)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                         mine[2]["utility"], one[2]["utility"])
            alone[s] = one[:3]
        total += sum(int(np.sum(r)) for r in out[3])
        carry = out[:3]
    assert total > 0


# --- continual backprop's ranking on statistically identical units -------------------

def _identical_units_run(bias_correction, steps, width, batch, rate, maturity, decay, seed):
    """The float64 NumPy reference of the selection rule (vectorised over units):
    ``width`` units whose contributions are i.i.d. over units and steps (|N(0, 1)|
    activations, equal outgoing weights), so no unit is better than another.
    Returns (the activations fed, per-unit replacement counts, the per-step states)."""
    rng = np.random.default_rng(seed)
    hs = np.abs(rng.normal(size=(steps, batch, width))).astype(np.float32)
    w_out = np.ones((width, 3))
    util, age, pending = np.zeros(width), np.zeros(width, np.int64), 0.0
    counts = np.zeros(width, np.int64)
    for t in range(steps):
        contribution = np.abs(hs[t].astype(np.float64)).mean(0) * np.abs(w_out).sum(1)
        util, age, pending, rep, _ = _select_numpy(util, age, pending, contribution, rate,
                                                   maturity, decay, bias_correction)
        counts += rep
    return hs, counts


def _select_numpy(util, age, pending, contribution, rate, maturity, decay, bias_correction):
    """One step of the ranking rule of Dohare et al. 2024 (lop/algos/gnt.py,
    GnT.test_features), float64: (utility, age, pending, replaced mask)."""
    age = age + 1
    util = decay * util + (1 - decay) * contribution
    score = util / (1 - decay ** age) if bias_correction else util.copy()
    eligible = np.flatnonzero(age > maturity)
    pending = pending + rate * eligible.size
    n = int(np.floor(pending))
    pending -= n
    chosen = sorted(eligible, key=lambda i: (score[i], i))[:n]
    rep = np.zeros(util.shape, bool)
    rep[chosen] = True
    # the gap between the last unit chosen and the next one (inf: no cut)
    ranked = np.sort(score[eligible])
    gap = (ranked[n] - ranked[n - 1]) / ranked[n] if 0 < n < ranked.size else np.inf
    return np.where(rep, 0.0, util), np.where(rep, 0, age), pending, rep, gap


CBP_IDENTICAL = dict(steps=10_000, width=16, batch=4, rate=1e-3, maturity=100, decay=0.99)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_cbp_ranking_of_identical_units_against_numpy(bias_correction):
    """16 statistically identical units, 10,000 steps, rho = 1e-3, m = 100,
    eta = 0.99 (the paper's and the reference's values but rho): 144
    replacements. With the reference's bias correction every unit is replaced
    (expected ~9 times each; the test asks >= 2 and none above 3x the mean); without
    it a unit that has just matured carries 1 - 0.99^101 = 0.64 of its steady
    utility and is the lowest again, so the same few units are replaced over and
    over (the test asks >= 10 units never replaced and one unit with > 1/4 of
    all replacements). Both the float64 NumPy reference's own run and the
    deadjax run (cbp_select, float32, jitted, the per-member value traced) show
    it, and each deadjax step's selection equals the reference's selection from
    the same state wherever the reference's ranking margin at the cut exceeds
    float32 round-off (1e-4 relative; the steps skipped are counted)."""
    p = CBP_IDENTICAL
    hs, ref_counts = _identical_units_run(bias_correction, p["steps"], p["width"], p["batch"],
                                          p["rate"], p["maturity"], p["decay"], seed=0)
    params = {"Dense_1": {"kernel": jnp.ones((p["width"], 3), jnp.float32)}}

    def body(state, h):
        new, rep = interventions.cbp_select(
            params, state, [h], replacement_rate=p["rate"], maturity=p["maturity"],
            decay=p["decay"], bias_correction=flag)
        return new, (state, rep[0])

    flag = jnp.asarray(float(bias_correction))   # traced, as in the trainer
    _, (before, reps) = jax.jit(lambda h: jax.lax.scan(
        body, interventions.init_cbp_state((p["width"],)), h))(jnp.asarray(hs))
    reps = np.asarray(reps)
    counts = reps.sum(0)
    # step by step: deadjax's selection from its own state equals the reference's
    utils, ages, pend = (np.asarray(before["utility"][0], np.float64),
                         np.asarray(before["age"][0]), np.asarray(before["pending"][:, 0]))
    compared = skipped = 0
    for t in np.flatnonzero(reps.any(1) | (pend + p["rate"] * p["width"] >= 1)):
        contribution = np.abs(hs[t].astype(np.float64)).mean(0) * 3.0
        *_, rep, gap = _select_numpy(utils[t], ages[t], float(pend[t]), contribution,
                                     p["rate"], p["maturity"], p["decay"], bias_correction)
        if gap <= 1e-4:
            skipped += 1
            continue
        compared += 1
        np.testing.assert_array_equal(reps[t], rep, err_msg=f"step {t}")
    assert compared >= 100 and skipped <= compared // 20, (compared, skipped)
    total = int(counts.sum())
    for c in (counts, ref_counts):
        assert int(c.sum()) == total and 130 <= total <= 170, c
        if bias_correction:
            assert c.min() >= 2 and c.max() <= 3 * total / p["width"], c
        else:
            assert (c == 0).sum() >= 10 and c.max() > total / 4, c


def test_cbp_bias_correction_is_a_traced_per_member_value():
    """Members with the correction on and off, vmapped in one program with the
    flag traced, equal each member with the static Python bool, bit for bit; and
    the continual_backprop remedy reads the member's cbp_bias_correction."""
    rng = np.random.default_rng(5)
    params = _params(rng, (5, 6, 7, 3))
    # ages spread so that the correction reorders units (a young unit's u is small)
    state = {"utility": tuple(jnp.asarray(rng.uniform(0.5, 1.0, w), jnp.float32) for w in (6, 7)),
             "age": tuple(jnp.asarray(rng.integers(1, 40, w), jnp.int32) for w in (6, 7)),
             "pending": jnp.asarray([0.9, 0.9], jnp.float32)}
    hs = [jnp.asarray(np.abs(rng.normal(size=(4, w))), jnp.float32) for w in (6, 7)]
    kw = dict(replacement_rate=0.5, maturity=0.0, decay=0.9)
    alone = [interventions.cbp_select(params, state, hs, bias_correction=b, **kw)
             for b in (False, True)]
    assert any((np.asarray(a) != np.asarray(b)).any()
               for a, b in zip(alone[0][1], alone[1][1])), "the correction must matter here"
    pop = jax.jit(jax.vmap(lambda b: interventions.cbp_select(params, state, hs,
                                                              bias_correction=b, **kw)))
    out = pop(jnp.asarray([0.0, 1.0]))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)  # fused reductions
    for m in range(2):
        mine = jax.tree.map(lambda a: a[m], out)
        jax.tree.map(np.testing.assert_array_equal, mine[1], alone[m][1])
        for k in ("age", "pending"):
            jax.tree.map(np.testing.assert_array_equal, mine[0][k], alone[m][0][k])
        jax.tree.map(close, mine[0]["utility"], alone[m][0]["utility"])
    # the registry entry passes the member's hyperparameter
    cfg = tiny_config(interventions__method="continual_backprop")
    transform = interventions.REMEDIES["continual_backprop"].make(cfg, (6, 7))
    obs = interventions.Observation(tuple(hs), ())
    for m, flag in enumerate((0.0, 1.0)):
        hp = {"replacement_rate": 0.5, "maturity": 0.0, "utility_decay": 0.9,
              "cbp_bias_correction": jnp.asarray(flag)}
        member = interventions.Member(params, None, hp, jax.random.PRNGKey(0), jnp.asarray(1))
        new, edit = transform.update(state, obs, member)
        jax.tree.map(close, new, alone[m][0])
        jax.tree.map(np.testing.assert_array_equal, edit.reinit, alone[m][1])


def test_cbp_bias_correction_field():
    """Declared once, per member, default the reference's (True); refused
    unless a bool, in one sentence."""
    from deadjax import config as config_lib
    from deadjax.errors import ConfigError
    f = config_lib.field("interventions.cbp_bias_correction")
    assert f.per_member and f.hparam == "cbp_bias_correction" and f.default is True
    assert f.added == "2026-12-01" and f.value_for_state(False) == 0.0
    assert config_lib.default_config().interventions.cbp_bias_correction is True
    config_lib.validate(tiny_config(interventions__cbp_bias_correction=False))
    with pytest.raises(ConfigError, match=r"^interventions.cbp_bias_correction = 1 is not "
                                          r"allowed; it must be True or False\.$"):
        f.check(f.name, 1)      # what validate calls (a ConfigDict refuses 1 for a bool)
