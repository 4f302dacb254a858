"""The sharpness family (top Hessian eigenvalue of the training objective) as
the trainer computes it, against independent computations on saved members:
the full Hessian of a tiny network (``jax.hessian`` of a loss written here,
``numpy.linalg.eigvalsh`` in float64) and, on a larger network, ARPACK's
Lanczos (``scipy.sparse.linalg.eigsh``, largest algebraic) on float64
Hessian-vector products in a subprocess with ``jax_enable_x64``; for ReLU,
tanh (with an L2 term) and a BatchNorm member."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from deadjax import data, diagnostics, optim, runner, sweep
from deadjax.checkpoints import load_member
from deadjax.config import default_config
from deadjax.results import load_results
from tests.conftest import compiled_for, device_data, init_members, tiny_config

FAMILIES = ("dead", "output", "sharpness")

# Agreement asked of the trainer's sharpness with the independent references:
# 1e-3 relative, ten times the residual test's certified 1e-4 (these members
# run with diagnostics.sharpness_tol = 1e-4) and tighter than the 1% the issue
# asks. Measured when written: 1e-7 to 2e-7 relative on all six members.
TOLERANCE = 1e-3

# The members of the saved-member tests: ReLU; tanh whose objective has an L2
# term (weight decay, plain SGD); tanh with BatchNorm (training-mode statistics).
MEMBERS = {
    "relu": {"model.activation": "relu"},
    "tanh_l2": {"model.activation": "tanh", "optim.weight_decay": 0.01},
    "batchnorm": {"model.activation": "tanh", "model.norm": "batch"},
}


def reference_objective(params, x, y, activation, norm, weight_decay):
    """The training objective written from its definition, independently of
    deadjax.models: an MLP (Dense_l kernels (in, out), biases unless
    BatchNorm; BatchNorm in training mode normalises by the batch's mean and
    population variance, eps 1e-5, then scale and bias), mean softmax
    cross-entropy, plus 0.5 * weight_decay * sum of squared kernels."""
    act = {"relu": lambda z: jnp.maximum(z, 0.0), "tanh": jnp.tanh}[activation]
    n_layers = sum(1 for k in params if k.startswith("Dense_"))
    h = x
    for l in range(n_layers):
        dense = params[f"Dense_{l}"]
        z = h @ dense["kernel"] + (dense["bias"] if "bias" in dense else 0.0)
        if l == n_layers - 1:
            h = z
            break
        if norm == "batch":
            bn = params[f"BatchNorm_{l}"]
            mean = z.mean(0)
            var = ((z - mean) ** 2).mean(0)
            z = (z - mean) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]
        h = act(z)
    logz = jax.scipy.special.logsumexp(h, axis=1)
    ce = jnp.mean(logz - jnp.take_along_axis(h, y[:, None], axis=1)[:, 0])
    kernels = sum(jnp.sum(params[f"Dense_{l}"]["kernel"] ** 2) for l in range(n_layers))
    return ce + 0.5 * weight_decay * kernels


def _points():
    return [dict(v) for v in MEMBERS.values()]


def _saved_members(base, workdir):
    """Runs the MEMBERS sweep on ``base`` into ``workdir``; returns, per member
    name, ``(its last results row, load_member's state, its resolved config)``."""
    specs = runner.run_sweep(base, _points(), workdir, tensorboard=False)
    frame = load_results(workdir)
    out = {}
    for name, spec in zip(MEMBERS, specs):
        rows = frame[frame["point"] == spec.id]
        last = rows[rows["step"] == rows["step"].max()].iloc[0]
        member = load_member(workdir, spec.id)
        assert member["step"] == int(last["step"])
        out[name] = (last, member, spec.config)
    return out


def _tiny_base():
    c = tiny_config(data__batch_size=0, model__widths=(6, 5), optim__name="sgd",
                    optim__learning_rate=0.2, train__steps=20, train__eval_every=10,
                    train__checkpoint_every=20, diagnostics__families=FAMILIES,
                    diagnostics__sharpness_iters=500, diagnostics__sharpness_tol=1e-4)
    return c


@pytest.mark.slow
def test_sharpness_equals_the_full_hessians_top_eigenvalue_on_saved_tiny_members(tmp_path):
    """Full batch (the Hessian of the loss on the whole training set), 20 SGD
    steps: each saved member's top eigenvalue of the float64 Hessian of the
    reference objective (137 or so parameters) equals the table's sharpness
    within TOLERANCE; sharpness_x_lr is sharpness times the learning rate."""
    base = _tiny_base()
    dataset = data.load(base)
    x, y = dataset.x_train.astype(np.float64), dataset.y_train
    for name, (row, member, cfg) in _saved_members(base, tmp_path).items():
        params = jax.tree.map(lambda a: np.asarray(a, np.float64), member["params"])
        flat, unravel = ravel_pytree(params)
        with jax.enable_x64(True):
            f = lambda v: reference_objective(unravel(v), jnp.asarray(x), jnp.asarray(y),
                                              cfg.model.activation, cfg.model.norm,
                                              cfg.optim.weight_decay)
            hessian = np.asarray(jax.hessian(f)(jnp.asarray(flat, jnp.float64)), np.float64)
        assert hessian.dtype == np.float64
        top = np.linalg.eigvalsh((hessian + hessian.T) / 2)[-1]
        assert top > 0
        np.testing.assert_allclose(row["sharpness"], top, rtol=TOLERANCE, err_msg=name)
        np.testing.assert_allclose(row["sharpness_x_lr"], row["sharpness"] * 0.2, rtol=1e-6)
        assert row["sharpness_iterations"] < 500, name  # converged to the tolerance


@pytest.mark.slow
def test_sharpness_equals_float64_lanczos_on_saved_larger_members(tmp_path):
    """Minibatches of 64 from 512 examples (the sharpness batch: 200 of them,
    data.sharpness_indices), 40-64-64-10 networks, 30 steps of heavy-ball SGD:
    each saved member's sharpness equals, within TOLERANCE, the largest
    eigenvalue that ARPACK's Lanczos (eigsh, which="LA", tol 1e-10) finds from
    float64 Hessian-vector products of the reference objective on the same
    200 examples, in a subprocess with jax_enable_x64."""
    base = tiny_config(data__num_train=512, data__num_features=40, data__num_classes=10,
                       data__val_fraction=0.0, data__batch_size=64, model__widths=(64, 64),
                       optim__name="momentum", optim__learning_rate=0.05, train__steps=30,
                       train__eval_every=10, train__checkpoint_every=30,
                       diagnostics__families=FAMILIES, diagnostics__sharpness_batch=200,
                       diagnostics__sharpness_iters=1000, diagnostics__sharpness_tol=1e-4)
    idx = data.sharpness_indices(base)
    assert idx is not None and len(idx) == 200
    dataset = data.load(base)
    saved = _saved_members(base, tmp_path / "run")
    arrays = {"x": dataset.x_train[idx].astype(np.float64), "y": dataset.y_train[idx]}
    meta = {}
    for name, (row, member, cfg) in saved.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(member["params"]):
            arrays[name + "/" + "/".join(p.key for p in path)] = np.asarray(leaf, np.float64)
        meta[name] = {"activation": cfg.model.activation, "norm": cfg.model.norm,
                      "weight_decay": cfg.optim.weight_decay}
    np.savez(tmp_path / "members.npz", **arrays)
    (tmp_path / "members.json").write_text(json.dumps(meta))
    script = textwrap.dedent(f"""
        import json
        import jax, jax.numpy as jnp, numpy as np
        from jax.flatten_util import ravel_pytree
        from scipy.sparse.linalg import LinearOperator, eigsh
        from tests.test_sharpness import reference_objective
        arrays = dict(np.load({str(tmp_path / "members.npz")!r}, allow_pickle=False))
        meta = json.loads(open({str(tmp_path / "members.json")!r}).read())
        x, y = jnp.asarray(arrays["x"]), jnp.asarray(arrays["y"])
        for name, m in meta.items():
            params = {{}}
            for key, value in arrays.items():
                if key.startswith(name + "/"):
                    layer, leaf = key.split("/")[1:]
                    params.setdefault(layer, {{}})[leaf] = jnp.asarray(value)
            flat, unravel = ravel_pytree(params)
            assert flat.dtype == jnp.float64
            loss = lambda v: reference_objective(unravel(v), x, y, m["activation"], m["norm"],
                                                 m["weight_decay"])
            hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (flat,), (v,))[1])
            op = LinearOperator((flat.size, flat.size), dtype=np.float64,
                                matvec=lambda v: np.asarray(hvp(jnp.asarray(v.ravel()))))
            top = eigsh(op, k=1, which="LA", tol=1e-10, return_eigenvectors=False)[0]
            print("TOP", name, repr(float(top)))
    """)
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tops = {line.split()[1]: float(line.split()[2]) for line in out.stdout.splitlines()
            if line.startswith("TOP")}
    assert set(tops) == set(MEMBERS)
    for name, (row, _, _) in saved.items():
        assert tops[name] > 0
        np.testing.assert_allclose(row["sharpness"], tops[name], rtol=TOLERANCE, err_msg=name)


def _shared():
    """The config of the warm-start, divergence and initial-vector tests (one
    compiled program for the three): full batch, SGD."""
    return tiny_config(data__batch_size=0, optim__name="sgd", optim__learning_rate=0.2,
                       diagnostics__families=FAMILIES, diagnostics__sharpness_iters=500,
                       diagnostics__sharpness_tol=1e-4)


def _population(cfg, configs):
    pop = compiled_for(cfg, configs)
    return pop, init_members(pop, configs), device_data(cfg)


def _members(base, n, **per_member):
    out = []
    for i in range(n):
        c = type(base)(base.to_dict())
        c.seed = i
        for field, values in per_member.items():
            section, leaf = field.split("__")
            c[section][leaf] = values[i]
        out.append(c)
    return out


@pytest.mark.slow
def test_population_sharpness_equals_each_member_alone():
    """Four members (seeds, learning rates, one with weight decay) trained 20
    steps in one population: each one's sharpness, sharpness_x_lr and
    iteration count equal those of the member trained alone; sharpness_x_lr
    is sharpness times the scheduled learning rate (cosine over 40 steps: at
    step 20 the next update's rate is lr * 0.5 (1 + cos(pi/2)) = lr / 2)."""
    base = tiny_config(optim__name="sgd", optim__schedule="cosine", train__steps=40,
                       diagnostics__families=FAMILIES, diagnostics__sharpness_iters=300,
                       diagnostics__sharpness_tol=1e-4)
    configs = _members(base, 4, optim__learning_rate=[0.05, 0.1, 0.2, 0.4],
                       optim__weight_decay=[0.0, 0.0, 0.01, 0.0])
    pop, state, dd = _population(base, configs)
    _, together, _ = jax.device_get(pop.train_chunk(state, dd, 20))
    for k in range(4):
        _, alone, _ = jax.device_get(pop.train_chunk(init_members(pop, [configs[k]]), dd, 20))
        for name in ("sharpness", "sharpness_x_lr"):
            np.testing.assert_allclose(together[name][k], alone[name][0], rtol=1e-4,
                                       err_msg=f"{name} of member {k}")
        assert abs(together["sharpness_iterations"][k] - alone["sharpness_iterations"][0]) <= 1
    lr = np.array([0.05, 0.1, 0.2, 0.4]) * 0.5 * (1 + np.cos(np.pi * 20 / 40))
    np.testing.assert_allclose(together["sharpness_x_lr"], together["sharpness"] * lr,
                               rtol=1e-6)


@pytest.mark.slow
def test_warm_start_needs_fewer_iterations_for_the_same_value():
    """The second evaluation starts from the eigenvector the first found (the
    family's carry): at the same parameters it meets the tolerance at once;
    after 10 more training steps it needs fewer products than a cold start
    (the fixed initial vector) at the same parameters, for the same value
    within the tolerance."""
    base = _shared()
    pop, state, dd = _population(base, [base] * 2)
    fresh_carry = jax.device_get(state.carry)
    state, first, _ = pop.train_chunk(state, dd, 10)
    first = jax.device_get(first)
    state, again, _ = pop.train_chunk(state, dd, 10)   # same step: no training
    again = jax.device_get(again)
    np.testing.assert_array_equal(again["sharpness_iterations"], [1.0, 1.0])
    np.testing.assert_allclose(again["sharpness"], first["sharpness"], rtol=1e-4)
    assert np.all(first["sharpness_iterations"] > 1)

    trained, warm, _ = jax.device_get(pop.train_chunk(state, dd, 20))
    # The cold start at the same parameters: the trained state with the initial carry.
    trained = jax.tree.map(jnp.asarray, trained)
    cold_state = trained.replace(carry=jax.tree.map(jnp.asarray, fresh_carry))
    _, cold, _ = jax.device_get(pop.train_chunk(cold_state, dd, 20))
    assert np.all(warm["sharpness_iterations"] < cold["sharpness_iterations"]), (
        warm["sharpness_iterations"], cold["sharpness_iterations"])
    np.testing.assert_allclose(warm["sharpness"], cold["sharpness"], rtol=2e-4)


@pytest.mark.slow
def test_a_diverged_member_reads_nan_and_does_not_hold_the_others_up():
    """A member whose parameters are NaN: its sharpness is NaN after one
    product, its carry keeps the last finite vector, and the other member's
    numbers are those it has when no member diverged."""
    base = _shared()
    pop, state, dd = _population(base, [base] * 2)
    _, healthy, _ = jax.device_get(pop.train_chunk(jax.tree.map(jnp.copy, state), dd, 0))
    params = jax.tree.map(np.array, jax.device_get(state.params))
    params["Dense_1"]["kernel"][1, 0, 0] = np.nan
    bad = state.replace(params=jax.tree.map(jnp.asarray, params))
    start = jax.device_get(bad.carry["sharpness"]["vector"])
    after, scalars, _ = jax.device_get(pop.train_chunk(bad, dd, 0))
    assert np.isnan(scalars["sharpness"][1]) and scalars["sharpness_iterations"][1] == 1
    assert np.isfinite(scalars["sharpness"][0])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[1]),
                 after.carry["sharpness"]["vector"], start)
    np.testing.assert_allclose(scalars["sharpness"][0], healthy["sharpness"][0], rtol=1e-6)
    assert scalars["sharpness_iterations"][0] == healthy["sharpness_iterations"][0]


@pytest.mark.slow
def test_initial_vector_is_a_fixed_unit_vector_shaped_like_the_parameters():
    cfg = _shared()
    pop, state, _ = _population(cfg, [cfg] * 2)
    v = jax.device_get(state.carry["sharpness"]["vector"])
    params = jax.device_get(state.params)
    assert jax.tree.structure(v) == jax.tree.structure(params)
    for m in range(2):
        flat = ravel_pytree(jax.tree.map(lambda a: a[m], v))[0]
        np.testing.assert_allclose(np.linalg.norm(np.asarray(flat, np.float64)), 1.0, rtol=1e-6)
    jax.tree.map(lambda a: np.testing.assert_array_equal(a[0], a[1]), v)   # same for all
    # leaf i is N(0, 1) from fold_in(PRNGKey(SHARPNESS_VECTOR_KEY), i), normalised
    key = jax.random.PRNGKey(diagnostics.SHARPNESS_VECTOR_KEY)
    leaves = jax.tree.leaves(jax.tree.map(lambda a: a[0], params))
    draws = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), leaf.shape), np.float64)
             for i, leaf in enumerate(leaves)]
    norm = np.sqrt(sum((d ** 2).sum() for d in draws))
    for got, d in zip(jax.tree.leaves(v), draws):
        np.testing.assert_allclose(got[0], d / norm, rtol=1e-5, atol=1e-8)


def test_sharpness_is_off_by_default_and_its_fields_are_checked():
    from deadjax.config import validate
    from deadjax.errors import ConfigError
    c = default_config()
    assert "sharpness" not in c.diagnostics.families
    assert "sharpness" in diagnostics.FAMILY_NAMES
    assert c.diagnostics.families == tuple(n for n in diagnostics.FAMILY_NAMES
                                           if n != "sharpness")
    validate(c)
    for field, bad in (("sharpness_iters", 0), ("sharpness_tol", 0.0), ("sharpness_tol", 1.0),
                       ("sharpness_batch", 0), ("sharpness_tol", -1e-3)):
        c = default_config()
        c.diagnostics[field] = bad
        with pytest.raises(ConfigError, match=f"diagnostics.{field}"):
            validate(c)


def test_sharpness_indices():
    """Full batch: None (the whole training set). Minibatches: a sorted,
    distinct draw of diagnostics.sharpness_batch training indices fixed by
    data.seed (not the member's seed), not the probe batch; None when it would
    be every example."""
    c = tiny_config()          # 72 training examples, batches of 16
    c.diagnostics.sharpness_batch = 30
    idx = data.sharpness_indices(c)
    assert len(idx) == 30 and np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 72
    c2 = tiny_config()
    c2.diagnostics.sharpness_batch = 30
    c2.seed = 7
    np.testing.assert_array_equal(data.sharpness_indices(c2), idx)
    c2.data.seed = 1
    assert not np.array_equal(data.sharpness_indices(c2), idx)
    c.diagnostics.probe_size = 30
    assert not np.array_equal(data.probe_indices(c), idx)
    c.diagnostics.sharpness_batch = 1000
    assert data.sharpness_indices(c) is None
    c.data.batch_size = 0
    c.diagnostics.sharpness_batch = 30
    assert data.sharpness_indices(c) is None
    np.testing.assert_array_equal(data.sharpness_indices(tiny_config(
        diagnostics__sharpness_batch=30), n_train=72), idx)
