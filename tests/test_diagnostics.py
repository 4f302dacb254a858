"""The diagnostics as the trainer computes them, against a NumPy forward and
backward pass written here, on networks whose answers are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import data, diagnostics, population
from tests.conftest import compiled_for, device_data, init_members, tiny_config


def _setup(**fields):
    cfg = tiny_config(**fields)
    pop = compiled_for(cfg)
    state = init_members(pop, [cfg] * 2, seeds=[0, 1])
    return cfg, pop, device_data(cfg), state


def _evaluate(pop, state, dd):
    """The evaluation at the members' current step (no step to take)."""
    return pop.train_chunk(state, dd, int(jax.device_get(state.step[0])))


def _numpy_backprop(params, x, y, num_classes):
    """Forward and backward pass of a 2-hidden-layer ReLU MLP by hand."""
    W = [params[f"Dense_{i}"]["kernel"].astype(np.float64) for i in range(3)]
    b = [params[f"Dense_{i}"]["bias"].astype(np.float64) for i in range(3)]
    z0 = x @ W[0] + b[0]; h0 = np.maximum(z0, 0)
    z1 = h0 @ W[1] + b[1]; h1 = np.maximum(z1, 0)
    logits = h1 @ W[2] + b[2]
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    n = x.shape[0]
    d_out = (p - np.eye(num_classes)[y]) / n          # dL/dlogits of the mean loss
    d1 = (d_out @ W[2].T) * (z1 > 0)                   # delta_1 = dL/dz_1
    d0 = (d1 @ W[1].T) * (z0 > 0)                      # delta_0 = dL/dz_0
    grads = {"layer_0": (x.T @ d0, d0.sum(0)), "layer_1": (h0.T @ d1, d1.sum(0)),
             "out": (h1.T @ d_out, d_out.sum(0))}
    return dict(z=[z0, z1], h=[h0, h1], deltas=[d0, d1], grads=grads, W=W)


@pytest.mark.slow
def test_gradient_flow_and_signal_metrics_match_numpy():
    cfg, pop, dd, state = _setup()
    state, scalars, tables = jax.device_get(_evaluate(pop, state, dd))
    hists = tables["histograms"]
    x, y = np.asarray(dd["probe"][0], np.float64), np.asarray(dd["probe"][1])
    for m in range(2):
        params = jax.tree.map(lambda a: np.asarray(a[m]), state.params)
        ref = _numpy_backprop(params, x, y, 4)
        for where, (gw, gb) in ref["grads"].items():
            np.testing.assert_allclose(scalars[f"grad_norm/{where}"][m], np.linalg.norm(gw),
                                       rtol=1e-4)
            np.testing.assert_allclose(scalars[f"bias_grad_norm/{where}"][m],
                                       np.linalg.norm(gb), rtol=1e-4)
        for l in range(2):
            z, h, d, W = ref["z"][l], ref["h"][l], ref["deltas"][l], ref["W"][l]
            where = f"layer_{l}"
            np.testing.assert_allclose(scalars[f"delta_norm/{where}"][m], np.linalg.norm(d),
                                       rtol=1e-4)
            np.testing.assert_allclose(scalars[f"weight_norm/{where}"][m], np.linalg.norm(W),
                                       rtol=1e-5)
            np.testing.assert_allclose(scalars[f"q/{where}"][m], np.mean(z ** 2), rtol=1e-4)
            dead = np.all(z <= 0, axis=0)
            np.testing.assert_allclose(scalars[f"dead_fraction/{where}"][m], dead.mean())
            np.testing.assert_allclose(scalars[f"negative_fraction/{where}"][m], dead.mean())
            # mean singular value of diag(phi') W^T over the first J probe inputs
            J = cfg.diagnostics.jacobian_probe_size
            svs = [np.linalg.svd((z[i] > 0)[:, None] * W.T, compute_uv=False).mean()
                   for i in range(J)]
            np.testing.assert_allclose(scalars[f"jacobian_sv/{where}"][m], np.mean(svs),
                                       rtol=1e-3, atol=1e-5)
            s = np.linalg.svd(h, compute_uv=False)
            p = s / s.sum(); p = p[p > 0]
            np.testing.assert_allclose(scalars[f"effective_rank/{where}"][m],
                                       np.exp(-(p * np.log(p)).sum()), rtol=1e-4)
        ratio = np.linalg.norm(ref["grads"]["layer_0"][0]) / np.linalg.norm(
            ref["grads"]["layer_1"][0])
        np.testing.assert_allclose(scalars["grad_norm_ratio"][m], ratio, rtol=1e-4)
        assert scalars["grad_norm_ratio_undefined"][m] == 0
    # histograms of deltas count every (input, unit) entry
    lo, hi, counts = hists["delta/layer_1"]
    assert counts.shape == (2, cfg.diagnostics.histogram_bins)
    assert counts.sum(axis=1).tolist() == [x.shape[0] * 8] * 2


@pytest.mark.slow
def test_network_born_dead_on_purpose():
    cfg, pop, dd, state = _setup()
    params = jax.device_get(state.params)
    params["Dense_1"]["bias"] = np.full_like(params["Dense_1"]["bias"], -1e3)  # member-wide
    state = state.replace(params=jax.tree.map(jnp.asarray, params))
    state, scalars, _ = jax.device_get(_evaluate(pop, state, dd))
    np.testing.assert_array_equal(scalars["dead_fraction/layer_1"], [1.0, 1.0])
    np.testing.assert_array_equal(scalars["output_constant"], [1.0, 1.0])
    np.testing.assert_array_equal(scalars["born_dead"], [1.0, 1.0])
    np.testing.assert_allclose(scalars["dead_fraction/all"],
                               (scalars["dead_fraction/layer_0"] * 10 + 8) / 18)
    # no gradient reaches the dead layer's weights or anything below it
    np.testing.assert_array_equal(scalars["grad_norm/layer_0"], [0.0, 0.0])
    np.testing.assert_array_equal(scalars["grad_norm/layer_1"], [0.0, 0.0])
    np.testing.assert_array_equal(scalars["delta_norm/layer_1"], [0.0, 0.0])
    # grad_norm_ratio is 0/0 there: reported as 0 (not NaN) and flagged
    np.testing.assert_array_equal(scalars["grad_norm_ratio"], [0.0, 0.0])
    np.testing.assert_array_equal(scalars["grad_norm_ratio_undefined"], [1.0, 1.0])


@pytest.mark.slow
def test_dead_last_layer_bypassed_by_a_residual_gives_an_infinite_ratio():
    """With a residual connection around the fully dead last hidden layer the
    first layer still gets a gradient (through the identity) while the last
    gets none: grad_norm_ratio = +inf (x/0, x > 0), not flagged undefined; the
    first layer's gradient equals NumPy's backward pass through h_1 = h_0 + 0."""
    cfg, pop, dd, state = _setup(model__widths=(8, 8), model__residual=True)
    params = jax.device_get(state.params)
    params["Dense_1"]["bias"] = np.full_like(params["Dense_1"]["bias"], -1e3)
    state = state.replace(params=jax.tree.map(jnp.asarray, params))
    state, scalars, _ = jax.device_get(_evaluate(pop, state, dd))
    np.testing.assert_array_equal(scalars["dead_fraction/layer_1"], [1.0, 1.0])
    np.testing.assert_array_equal(scalars["grad_norm/layer_1"], [0.0, 0.0])
    np.testing.assert_array_equal(scalars["grad_norm_ratio"], [np.inf, np.inf])
    np.testing.assert_array_equal(scalars["grad_norm_ratio_undefined"], [0.0, 0.0])
    x, y = np.asarray(dd["probe"][0], np.float64), np.asarray(dd["probe"][1])
    for m in range(2):
        W = [np.asarray(params[f"Dense_{i}"]["kernel"][m], np.float64) for i in range(3)]
        b = [np.asarray(params[f"Dense_{i}"]["bias"][m], np.float64) for i in range(3)]
        z0 = x @ W[0] + b[0]
        h1 = np.maximum(z0, 0)            # + relu(z_1) = 0: the dead layer adds nothing
        logits = h1 @ W[2] + b[2]
        p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        d_out = (p - np.eye(4)[y]) / x.shape[0]
        d0 = (d_out @ W[2].T) * (z0 > 0)
        np.testing.assert_allclose(scalars["grad_norm/layer_0"][m], np.linalg.norm(x.T @ d0),
                                   rtol=1e-4)


@pytest.mark.slow
def test_leaky_layer_in_its_negative_region_reads_negative_not_dead():
    """A leaky-ReLU layer pushed below 0 on every probe input (hand-made biases)
    reads negative_fraction 1 while dead_fraction stays 0 (phi' = slope > 0
    everywhere) and no unit is dormant (every |a| is about slope * 1000)."""
    cfg, pop, dd, state = _setup(model__activation="leaky_relu")
    params = jax.device_get(state.params)
    params["Dense_1"]["bias"] = np.full_like(params["Dense_1"]["bias"], -1e3)
    state = state.replace(params=jax.tree.map(jnp.asarray, params))
    state, scalars, _ = jax.device_get(_evaluate(pop, state, dd))
    np.testing.assert_array_equal(scalars["negative_fraction/layer_1"], [1.0, 1.0])
    np.testing.assert_array_equal(scalars["dead_fraction/layer_1"], [0.0, 0.0])
    np.testing.assert_array_equal(scalars["dead_fraction/all"], [0.0, 0.0])
    np.testing.assert_array_equal(scalars["dormant_ratio_0.1/layer_1"], [0.0, 0.0])
    np.testing.assert_allclose(scalars["negative_fraction/all"],
                               (scalars["negative_fraction/layer_0"] * 10 + 8) / 18)
    x = np.asarray(dd["probe"][0], np.float64)
    for m in range(2):   # layer 0, left as initialised, against NumPy
        w = np.asarray(params["Dense_0"]["kernel"][m], np.float64)
        b = np.asarray(params["Dense_0"]["bias"][m], np.float64)
        np.testing.assert_allclose(scalars["negative_fraction/layer_0"][m],
                                   np.all(x @ w + b <= 0, axis=0).mean())


def _numpy_activation(name, z, slope):
    """phi in float64 NumPy, from the formulas of deadjax/activations.py's table."""
    from scipy.special import erf, expit
    lam, alpha = 1.0507009873554805, 1.6732632423543772
    return {
        "relu": lambda: np.maximum(z, 0), "identity": lambda: z,
        "leaky_relu": lambda: np.where(z > 0, z, slope * z),
        "prelu": lambda: np.where(z > 0, z, slope * z),
        "elu": lambda: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
        "selu": lambda: lam * np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0))),
        "gelu": lambda: z * 0.5 * (1 + erf(z / np.sqrt(2))),
        "silu": lambda: z * expit(z), "softplus": lambda: np.logaddexp(0, z),
        "softsign": lambda: z / (1 + np.abs(z)), "sigmoid": lambda: expit(z),
        "tanh": lambda: np.tanh(z),
    }[name]()


@pytest.mark.parametrize("norm", ["none", pytest.param("layer", marks=pytest.mark.slow)])
def test_negative_fraction_matches_numpy_for_every_activation(norm):
    """On random members (biases shifted so that some units of each layer sit
    below 0 on every probe input and some do not; leaky slopes per member and
    traced, PReLU slopes random), for every activation of the registry:
    negative_fraction/layer_L and /all from the trainer's probe pass and the
    "dead" family, vmapped over 3 members, equal NumPy's share of units with
    z <= 0 on all probe inputs, z computed here in float64 (after LayerNorm where
    there is one); for ReLU it equals dead_fraction. Members whose max_x z_j is
    within 1e-4 of 0 (where float32 and float64 may disagree) are refused by
    construction."""
    from deadjax import activations, diagnostics, metrics, models
    n, widths, features, members = 16, (10, 8), 12, 3
    x = np.random.default_rng(0).normal(size=(n, features)).astype(np.float32)
    y = np.zeros(n, np.int32)
    slopes = np.array([0.01, 0.2, 0.5], np.float32)
    for name in activations.NAMES:
        cfg = tiny_config(model__activation=name, model__norm=norm,
                          diagnostics__families=("dead",))
        model = models.from_config(cfg, 4)
        ctx = diagnostics.Context.of(cfg)
        hyper = {"sigma_w": np.ones(members, np.float32),
                 "sigma_b": np.zeros(members, np.float32), "leaky_slope": slopes,
                 "dropout": np.zeros(members, np.float32)}
        stack = []
        for m in range(members):
            hp = {k: v[m] for k, v in hyper.items()}
            params = jax.tree.map(np.array, model.init({"params": jax.random.PRNGKey(m)},
                                                       jnp.asarray(x[:1]), hp)["params"])
            rng = np.random.default_rng(100 + m)
            for l, w in enumerate(widths):   # the shift: below, around or above 0
                key = f"LayerNorm_{l}" if norm == "layer" else f"Dense_{l}"
                params[key]["bias"] = rng.choice([-6.0, -0.5, 0.0, 4.0], size=w)
                if name == "prelu":
                    params[f"PReLU_{l}"] = rng.uniform(0.0, 0.5, size=w)
            stack.append(jax.tree.map(lambda a: np.asarray(a, np.float32), params))
        batched = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *stack)

        def measure(p, hp):
            logits, cap, gp, deltas = diagnostics.probe_pass(
                lambda q, xx, **kw: model.apply({"params": q}, xx, hp, **kw),
                metrics.cross_entropy, p, widths, jnp.asarray(x), jnp.asarray(y))
            probe = diagnostics.Probe(logits, cap, gp, deltas, p, {}, None,
                                      tuple(jnp.zeros((w,), bool) for w in widths),
                                      jnp.zeros((), bool), diagnostics.init_carries(ctx, p))
            return diagnostics.measure(probe, ctx)[0]

        got = jax.device_get(jax.jit(jax.vmap(measure))(batched, hyper))
        for m, params in enumerate(stack):
            h, total = x.astype(np.float64), 0
            for l, w in enumerate(widths):
                p = {k: np.asarray(v, np.float64) for k, v in params[f"Dense_{l}"].items()}
                z = h @ p["kernel"] + p.get("bias", 0.0)
                if norm == "layer":
                    ln = {k: np.asarray(v, np.float64)
                          for k, v in params[f"LayerNorm_{l}"].items()}
                    z = ((z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
                         * ln["scale"] + ln["bias"])
                assert np.abs(z.max(0)).min() > 1e-4, (name, m, l)
                negative = np.all(z <= 0, axis=0)
                total += negative.sum()
                slope = (np.asarray(params[f"PReLU_{l}"], np.float64) if name == "prelu"
                         else float(slopes[m]))
                h = _numpy_activation(name, z, slope)
                np.testing.assert_allclose(got[f"negative_fraction/layer_{l}"][m],
                                           negative.mean(), err_msg=f"{name} {m} {l}")
                if name == "relu":
                    assert (got[f"dead_fraction/layer_{l}"][m]
                            == got[f"negative_fraction/layer_{l}"][m])
            np.testing.assert_allclose(got["negative_fraction/all"][m], total / sum(widths),
                                       err_msg=name)
            assert 0 < total < sum(widths), (name, m)


@pytest.mark.slow
def test_healthy_network_is_not_born_dead_and_flag_is_kept():
    cfg, pop, dd, state = _setup()
    state, scalars, _ = _evaluate(pop, state, dd)
    assert np.all(np.asarray(scalars["born_dead"]) == 0)
    state, scalars, _ = jax.device_get(pop.train_chunk(state, dd, 10))
    assert np.all(scalars["born_dead"] == 0) and np.all(scalars["dead_persistent/layer_0"] >= 0)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_jacobian_with_normalisation_matches_autodiff(norm):
    cfg, pop, dd, state = _setup(model__norm=norm, model__residual=True,
                                 model__widths=(8, 8), model__activation="tanh")
    state, scalars, _ = jax.device_get(_evaluate(pop, state, dd))
    member = jax.tree.map(lambda a: a[0], state)
    variables = {"params": member.params}
    if member.batch_stats:
        variables["batch_stats"] = member.batch_stats
    x = dd["probe"][0][: cfg.diagnostics.jacobian_probe_size]

    def layer_out(h_prev, l, xi):
        """h_l as a function of h_{l-1}, through the model's own captures."""
        def f(hp):
            # run the model with layer l-1's output replaced: emulate by recomputing layer l
            w = member.params[f"Dense_{l}"]["kernel"]
            u = hp @ w + (member.params[f"Dense_{l}"].get("bias", 0.0))
            if norm == "batch":
                bn = member.batch_stats[f"BatchNorm_{l}"]
                pbn = member.params[f"BatchNorm_{l}"]
                z = (u - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5) * pbn["scale"] + pbn["bias"]
            else:
                pln = member.params[f"LayerNorm_{l}"]
                mu = u.mean(); var = ((u - mu) ** 2).mean()
                z = (u - mu) / jnp.sqrt(var + 1e-5) * pln["scale"] + pln["bias"]
            a = jnp.tanh(z)
            return hp + a if l > 0 else a
        return jax.jacfwd(f)(h_prev)

    _, cap = pop.program.apply(member, x, capture=True)
    for l in range(2):
        h_prev = x if l == 0 else cap["out"][l - 1]
        svs = [np.linalg.svd(np.asarray(layer_out(h_prev[i], l, i)), compute_uv=False).mean()
               for i in range(x.shape[0])]
        np.testing.assert_allclose(scalars[f"jacobian_sv/layer_{l}"][0], np.mean(svs),
                                   rtol=1e-3)


@pytest.mark.slow
def test_diagnostics_are_invariant_to_probe_order():
    cfg, pop, dd, state = _setup(diagnostics__families=("dead", "dormant", "saturation",
                                                        "gradients", "signal", "rank", "output"))
    _, a, _ = jax.device_get(_evaluate(pop, state, dd))
    perm = np.random.default_rng(0).permutation(dd["probe"][0].shape[0])
    dd2 = dict(dd, probe=(dd["probe"][0][perm], dd["probe"][1][perm]))
    state2 = init_members(pop, [cfg] * 2, seeds=[0, 1])
    _, b, _ = jax.device_get(_evaluate(pop, state2, dd2))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_negative_persistent_and_revived_follow_numpy_across_evaluations():
    """negative_persistent / negative_revived compare an evaluation's negative
    masks (z <= 0 on every probe input) with the previous evaluation's, which
    the "dead" family carries: NaN at the first evaluation, then NumPy's
    shares. Layer 0 of a leaky-ReLU network is pushed negative on units {1, 3}
    (bias -100), evaluated, then on {3, 5}, evaluated again: 1 of 10 units
    stayed, 1 came back."""
    cfg, pop, dd, state = _setup(model__activation="leaky_relu", model__leaky_slope=0.2)
    x = np.asarray(dd["probe"][0], np.float64)

    def pushed(s, units):
        params = jax.tree.map(np.array, jax.device_get(s.params))
        params["Dense_0"]["bias"][:, units] = -100.0
        return s.replace(params=jax.tree.map(jnp.asarray, params))

    def negative_masks(s, m):
        p = jax.tree.map(lambda a: np.asarray(a[m], np.float64), s.params)
        h, out = x, []
        for l in range(2):
            z = h @ p[f"Dense_{l}"]["kernel"] + p[f"Dense_{l}"]["bias"]
            out.append(np.all(z <= 0, axis=0))
            h = np.where(z > 0, z, 0.2 * z)
        return out

    first_state = pushed(state, [1, 3])
    before = [negative_masks(first_state, m) for m in range(2)]
    state, first, _ = jax.device_get(_evaluate(pop, first_state, dd))  # donates it
    assert np.isnan(first["negative_persistent/layer_0"]).all()
    np.testing.assert_allclose(first["negative_fraction/layer_0"], 0.2)
    np.testing.assert_array_equal(first["dead_fraction/layer_0"], 0.0)  # leaky: not dead
    second_state = jax.tree.map(jnp.asarray, state)  # the observed carry, same params
    params = jax.tree.map(np.array, jax.device_get(second_state.params))
    params["Dense_0"]["bias"][:, 1] = 0.5
    params["Dense_0"]["bias"][:, 5] = -100.0
    second_state = second_state.replace(params=jax.tree.map(jnp.asarray, params))
    nows = [negative_masks(second_state, m) for m in range(2)]
    _, second, _ = jax.device_get(_evaluate(pop, second_state, dd))
    for m in range(2):
        now = nows[m]
        assert now[0][[3, 5]].all() and not now[0][1]
        for l in range(2):
            where = f"layer_{l}"
            np.testing.assert_allclose(second[f"negative_persistent/{where}"][m],
                                       (now[l] & before[m][l]).mean())
            np.testing.assert_allclose(second[f"negative_revived/{where}"][m],
                                       (before[m][l] & ~now[l]).mean())
    np.testing.assert_allclose(second["negative_persistent/layer_0"], 0.1)
    np.testing.assert_allclose(second["negative_revived/layer_0"], 0.1)


def test_mean_singular_value_of_units_dead_at_the_input_is_exact():
    """A unit with phi' = 0 at an input makes a zero row of the Jacobian and
    an exactly-zero singular value: it reads 0, not the square root of the
    eigensolver's round-off (~3e-4 sigma_max, ~1e-4 on the mean)."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 48)) / 8).astype(np.float32)        # kernel (in, out)
    mean_sv = jax.jit(lambda j: diagnostics._mean_singular_values(diagnostics._gram(j)[None])[0])
    for dead in (0, 1, 24, 47):
        d = np.ones(48, np.float32)
        d[rng.permutation(48)[:dead]] = 0
        j = d[:, None] * w.T                                         # (out, in), out < in
        ref = np.linalg.svd(j.astype(np.float64), compute_uv=False).mean()
        np.testing.assert_allclose(mean_sv(j), ref, rtol=2e-6, err_msg=f"{dead} dead")
    assert float(mean_sv(np.zeros((48, 64), np.float32))) == 0.0
    assert np.isnan(float(mean_sv(np.full((48, 64), np.nan, np.float32))))
    wide = (rng.normal(size=(12, 40)) / 4).astype(np.float32)         # out > in: j^T j
    np.testing.assert_allclose(mean_sv(wide.T), np.linalg.svd(wide.T.astype(np.float64),
                                                              compute_uv=False).mean(),
                               rtol=1e-5)
