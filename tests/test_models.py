"""The MLP against a NumPy forward pass: BatchNorm in train and eval mode,
inverted dropout, residual connections, PReLU, captures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import models

HYPER = {"sigma_w": 1.0, "sigma_b": 0.0, "leaky_slope": 0.01, "dropout": 0.0}


def _init(model, x, hyper=HYPER):
    return model.init({"params": jax.random.PRNGKey(0)}, x, hyper)


def _relu(z):
    return np.maximum(z, 0.0)


def test_plain_forward_matches_numpy():
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    model = models.MLP(widths=(6, 4), num_outputs=3, activation="tanh",
                       kernel_init="glorot_uniform", bias_init="standard")
    v = _init(model, x)
    p = jax.tree.map(np.asarray, v["params"])
    h = np.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    h = np.tanh(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    ref = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(model.apply(v, x, HYPER), ref, rtol=1e-5, atol=1e-6)


def test_logistic_regression_has_one_layer():
    x = np.ones((2, 5), np.float32)
    v = _init(models.MLP(widths=(), num_outputs=3), x)
    assert list(v["params"]) == ["Dense_0"]
    assert v["params"]["Dense_0"]["kernel"].shape == (5, 3)


def test_batchnorm_train_and_eval_modes_match_numpy():
    """Ioffe & Szegedy (2015), Alg. 1 (train: batch statistics, biased variance)
    and Sec. 3.1 (inference: running averages), with no bias before BN."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    model = models.MLP(widths=(6,), num_outputs=2, norm="batch")
    v = _init(model, x)
    assert "bias" not in v["params"]["Dense_0"]
    p = jax.tree.map(np.asarray, v["params"])
    u = x @ p["Dense_0"]["kernel"]
    mean, var = u.mean(0), u.var(0)
    z = (u - mean) / np.sqrt(var + models.NORM_EPSILON)
    z = z * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
    ref = _relu(z) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    out, mutated = model.apply(v, x, HYPER, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    m = models.BATCHNORM_MOMENTUM
    stats = mutated["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], (1 - m) * mean, rtol=1e-5, atol=1e-6)
    # running averages start at mean 0, variance 1 and use the biased batch variance
    np.testing.assert_allclose(stats["var"], m * 1.0 + (1 - m) * var, rtol=1e-4)
    # eval mode uses the running statistics
    v2 = {"params": v["params"], "batch_stats": mutated["batch_stats"]}
    z = (u - stats["mean"]) / np.sqrt(stats["var"] + models.NORM_EPSILON)
    z = z * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
    ref = _relu(z) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply(v2, x, HYPER), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5])
def test_inverted_dropout_scales_kept_units(rate):
    x = np.ones((4000, 50), np.float32)
    out = np.asarray(models.inverted_dropout(jax.random.PRNGKey(3), jnp.float32(rate), x))
    kept = out != 0
    np.testing.assert_allclose(out[kept], 1.0 / (1.0 - rate), rtol=1e-6)
    # kept share ~ 1 - rate within 5 standard errors
    se = np.sqrt(rate * (1 - rate) / out.size)
    assert abs(kept.mean() - (1 - rate)) <= 5 * se + 1e-12
    assert abs(out.mean() - 1.0) < 0.02


def test_dropout_is_off_at_evaluation_and_per_member_rate_traces():
    x = np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32)
    model = models.MLP(widths=(6,), num_outputs=2)
    v = _init(model, x)
    hyper = dict(HYPER, dropout=0.5)
    np.testing.assert_array_equal(model.apply(v, x, hyper), model.apply(v, x, HYPER))
    train = jax.jit(lambda rate: model.apply(v, x, dict(HYPER, dropout=rate), train=True,
                                             dropout_key=jax.random.PRNGKey(0)))
    np.testing.assert_allclose(train(0.0), model.apply(v, x, HYPER), rtol=1e-6)
    assert not np.allclose(train(0.5), train(0.0))


def test_residual_connection_between_equal_widths_only():
    x = np.random.default_rng(3).normal(size=(3, 5)).astype(np.float32)
    model = models.MLP(widths=(4, 4), num_outputs=2, residual=True)
    v = _init(model, x)
    p = jax.tree.map(np.asarray, v["params"])
    h1 = _relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])  # 5 -> 4: no skip
    h2 = h1 + _relu(h1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    ref = h2 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(model.apply(v, x, HYPER), ref, rtol=1e-5, atol=1e-6)


def test_prelu_slopes_are_learnt_per_unit_from_a_quarter():
    x = -np.ones((2, 3), np.float32)
    model = models.MLP(widths=(5,), num_outputs=2, activation="prelu")
    v = _init(model, x)
    np.testing.assert_array_equal(v["params"]["PReLU_0"], np.full(5, 0.25, np.float32))


def test_capture_returns_every_hidden_layer():
    x = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    model = models.MLP(widths=(4, 3), num_outputs=2, activation="tanh")
    v = _init(model, x)
    logits, cap = model.apply(v, x, HYPER, capture=True)
    assert [z.shape for z in cap["pre"]] == [(6, 4), (6, 3)]
    np.testing.assert_allclose(cap["post"][0], np.tanh(cap["pre"][0]), rtol=1e-6)
    np.testing.assert_allclose(cap["dphi"][1], 1 - np.tanh(cap["pre"][1]) ** 2, rtol=1e-5)
