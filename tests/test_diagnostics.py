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


def test_gradient_flow_and_signal_metrics_match_numpy():
    cfg, pop, dd, state = _setup()
    state, scalars, hists = jax.device_get(_evaluate(pop, state, dd))
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
    # histograms of deltas count every (input, unit) entry
    lo, hi, counts = hists["delta/layer_1"]
    assert counts.shape == (2, cfg.diagnostics.histogram_bins)
    assert counts.sum(axis=1).tolist() == [x.shape[0] * 8] * 2


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
    np.testing.assert_array_equal(scalars["delta_norm/layer_1"], [0.0, 0.0])


def test_healthy_network_is_not_born_dead_and_flag_is_kept():
    cfg, pop, dd, state = _setup()
    state, scalars, _ = _evaluate(pop, state, dd)
    assert np.all(np.asarray(scalars["born_dead"]) == 0)
    state, scalars, _ = jax.device_get(pop.train_chunk(state, dd, 10))
    assert np.all(scalars["born_dead"] == 0) and np.all(scalars["dead_persistent/layer_0"] >= 0)


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


def test_mean_singular_value_of_units_dead_at_the_input_is_exact():
    """A unit with phi' = 0 at an input makes a zero row of the Jacobian and
    an exactly-zero singular value: it reads 0, not the square root of the
    eigensolver's round-off (~3e-4 sigma_max, ~1e-4 on the mean)."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 48)) / 8).astype(np.float32)        # kernel (in, out)
    mean_sv = jax.jit(lambda j: diagnostics._mean_singular_value(diagnostics._gram(j)))
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
