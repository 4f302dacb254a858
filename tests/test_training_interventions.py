"""Interventions and non-stationary tasks inside the trainer: a member with
the intervention off is bit for bit a member trained without the intervention
code; a population equals its members trained alone; the state they keep
survives a resume; tasks change where they should; the regression metrics
equal NumPy's."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import deadjax
from deadjax import data, metrics, population, runner, sweep, tasks
from deadjax.config import ConfigError, validate
from tests.conftest import compiled_for, device_data, init_members, tiny_config

METHODS = ("none", "activation_reset", "redo", "continual_backprop", "shrink_perturb")


def _base(**fields):
    # A high learning rate kills ReLU units within a few dozen steps, so every
    # intervention has something to act on.
    fields = {"optim__learning_rate": 0.1, "train__steps": 40, "train__eval_every": 20,
              "train__checkpoint_every": 20, "interventions__every": 10,
              "interventions__replacement_rate": 0.05, "interventions__maturity": 5,
              "interventions__redo_tau": 0.2, "interventions__shrink": 0.8,
              "diagnostics__families": ("dead", "dormant"), **fields}
    return tiny_config(**fields)


def _members(base, methods):
    out = []
    for i, m in enumerate(methods):
        c = type(base)(base.to_dict())
        c.seed = i
        c.interventions.method = m
        validate(c)
        out.append(c)
    return out


def _train(configs, steps, methods=None, pop=None):
    base = configs[0]
    if pop is None:
        pop = compiled_for(base, configs,
                           **({} if methods is None else {"remedies": tuple(methods)}))
    state = init_members(pop, configs)
    state, scalars, _ = pop.train_chunk(state, device_data(base), steps)
    return jax.device_get(state), jax.device_get(scalars)


def _member(tree, k):
    return jax.tree.map(lambda a: np.asarray(a)[k], tree)


@pytest.fixture(scope="module")
def mixed():
    """A population of one member per method, trained 40 steps."""
    members = _members(_base(), METHODS)
    return members, _train(members, 40)


@pytest.mark.slow
def test_member_with_intervention_off_is_bitwise_the_plain_member(mixed):
    members, (state, _) = mixed
    # Members with every intervention compiled in but switched off are, bit
    # for bit, members trained by the program without intervention code.
    off = _members(_base(), ["none"] * len(METHODS))
    with_code, with_scalars = _train(off, 40, methods=METHODS[1:])
    plain, plain_scalars = _train(off, 40, methods=())
    for name in ("params", "opt_state", "batch_stats", "step", "prev_dead"):
        jax.tree.map(np.testing.assert_array_equal, getattr(with_code, name),
                     getattr(plain, name))
    for k, v in plain_scalars.items():
        np.testing.assert_array_equal(with_scalars[k], v, err_msg=k)
    np.testing.assert_array_equal(with_scalars["units_reset/all"], 0)
    # In the mixed population too, the member without an intervention trains
    # exactly as alone without the code (its evaluation may differ in the
    # last bit: a population of 5 batches the evaluation's matmuls otherwise).
    alone, _ = _train(members[:1], 40, methods=())
    for name in ("params", "opt_state", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, _member(getattr(state, name), 0),
                     _member(getattr(alone, name), 0))


@pytest.mark.slow
def test_every_intervention_acts_and_counts_its_units(mixed):
    members, (state, scalars) = mixed
    counts = dict(zip(METHODS, scalars["units_reset/all"]))
    # The base member's dead units are what the remedies act on.
    assert scalars["dead_fraction/all"][0] > 0.1
    for m in ("activation_reset", "redo", "continual_backprop"):
        assert counts[m] > 0, m
    assert counts["shrink_perturb"] == 0  # it resets no unit
    per_layer = scalars["units_reset/layer_0"] + scalars["units_reset/layer_1"]
    np.testing.assert_array_equal(per_layer, scalars["units_reset/all"])
    # Activation reset: the count is the number of switched units, and a
    # switched unit is never dead (its leaky slope passes gradient).
    switched = state.interventions["switched"]
    k = METHODS.index("activation_reset")
    assert sum(int(s[k].sum()) for s in switched) == counts["activation_reset"]
    assert scalars["dead_fraction/all"][k] < scalars["dead_fraction/all"][0]
    # Continual backprop: replaced units are young again.
    k = METHODS.index("continual_backprop")
    ages = state.interventions["cbp"]["age"]
    assert min(int(a[k].min()) for a in ages) < 40


@pytest.mark.slow
def test_population_equals_members_alone(mixed):
    members, (state, scalars) = mixed
    # One population of one member, its program compiled once for all four.
    alone_pop = compiled_for(members[0], members)
    for k in range(1, len(METHODS)):
        alone_state, alone_scalars = _train([members[k]], 40, pop=alone_pop)
        assert alone_scalars["units_reset/all"][0] == scalars["units_reset/all"][k], METHODS[k]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     _member(state.params, k), _member(alone_state.params, 0))
        np.testing.assert_allclose(alone_scalars["test/loss"][0], scalars["test/loss"][k],
                                   rtol=1e-4)


def _frame(workdir):
    f = deadjax.load_results(workdir)
    return f.sort_values(["point", "step"]).reset_index(drop=True)


@pytest.mark.slow
def test_intervention_state_survives_a_resume(tmp_path):
    """20 steps, then a rerun to 40 from the checkpoint, equals 40 steps at once:
    switched units, utilities, ages and counts are in the checkpoint."""
    points = sweep.product({"interventions.method": ["activation_reset",
                                                     "continual_backprop", "redo"]})
    runner.run_sweep(_base(), points, tmp_path / "once", tensorboard=False)
    runner.run_sweep(_base(train__steps=20), points, tmp_path / "twice", tensorboard=False)
    runner.run_sweep(_base(), points, tmp_path / "twice", tensorboard=False)
    once, twice = _frame(tmp_path / "once"), _frame(tmp_path / "twice")
    assert (once.step.max(), twice.step.max()) == (40, 40)
    cols = [c for c in once.columns if c.startswith(("units_reset", "test/", "train/"))]
    pd.testing.assert_frame_equal(once[cols], twice[cols])
    assert once.loc[once.step == 40, "units_reset/all"].min() > 0


def test_task_boundaries_in_results_and_permuted_batches():
    base = tiny_config(data__task="permuted_inputs", data__task_every=20, train__steps=60,
                       train__eval_every=10, diagnostics__enabled=False)
    validate(base)
    ds = data.load(base)
    dd = device_data(base)
    plan = data.BatchPlan.of(base, ds.num_train)
    task_plan = tasks.for_data(base, ds.num_features, ds.num_classes)
    member = _member(init_members(compiled_for(base), [base], seeds=[0]), 0)
    key = tasks.task_key(base.data.seed, "permuted_inputs")
    for step in (0, 19, 20, 45):
        x, y = data.training_batch(plan, task_plan, dd["train"], jnp.int32(step),
                                   member.data_key, task_plan.at(step))
        idx = data.batch_indices(jnp.int32(step), num_train=ds.num_train,
                                 batch_size=base.data.batch_size, order=base.data.order,
                                 member_key=member.data_key, shared_key=data.shared_key(base))
        perm = np.asarray(tasks.input_permutation(key, step // 20, ds.num_features))
        np.testing.assert_array_equal(x, ds.x_train[np.asarray(idx)][:, perm])
        np.testing.assert_array_equal(y, ds.y_train[np.asarray(idx)])
    # The evaluation after step s measures the task of step s - 1.
    for step, task in ((0, 0), (10, 0), (20, 0), (21, 1), (40, 1), (41, 2)):
        assert int(task_plan.evaluated(jnp.int32(step))) == task
        x_test, _ = task_plan.present(*dd["test"], task_plan.evaluated(jnp.int32(step)))
        perm = np.asarray(tasks.input_permutation(key, task, ds.num_features))
        np.testing.assert_array_equal(x_test, ds.x_test[:, perm])


def test_task_column_in_results(tmp_path):
    base = tiny_config(data__task="shuffled_labels", data__task_every=20, train__steps=60,
                       train__eval_every=10, train__checkpoint_every=60,
                       diagnostics__enabled=False)
    runner.run_sweep(base, sweep.product({"seed": [0]}), tmp_path, tensorboard=False)
    frame = _frame(tmp_path)
    np.testing.assert_array_equal(frame.step, [0, 10, 20, 30, 40, 50, 60])
    np.testing.assert_array_equal(frame.task, [0, 0, 0, 1, 1, 2, 2])
    assert frame["train/online_loss"].iloc[1:].notna().all()
    assert np.isnan(frame["train/online_loss"].iloc[0])


def _regression_config(**fields):
    fields = {"data__name": "slowly_changing_regression", "data__num_features": 20,
              "data__flipping_bits": 15, "data__num_train": 200, "data__num_test": 300,
              "data__val_fraction": 0.0, "data__task_every": 25, "data__batch_size": 8,
              "train__loss": "mse", "train__steps": 50, "train__eval_every": 25,
              "train__checkpoint_every": 50, "optim__learning_rate": 0.01, **fields}
    c = tiny_config(**fields)
    validate(c)
    return c


@pytest.mark.slow
def test_regression_stream_metrics_equal_numpy():
    base = _regression_config()
    ds = data.load(base)
    pop = compiled_for(base)
    dd = device_data(base)
    state = init_members(pop, [base], seeds=[0])
    state, scalars, _ = pop.train_chunk(state, dd, 50)
    member = _member(jax.device_get(state), 0)
    key = tasks.task_key(base.data.seed, "slowly_changing_regression")
    teacher = jax.device_get(data.regression_teacher(base))
    # The test sample at the evaluated task (1): flipping bits of task 1, the
    # stored random bits, the teacher's targets.
    bits = np.asarray(tasks.flipping_bits(key, 1, 20, 15))
    x = np.array(ds.x_test)
    x[:, :15] = bits
    full = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    ltu = (full @ teacher["w1"].T > teacher["theta"]).astype(np.float64)
    y = ltu @ teacher["w2"] + teacher["b2"]
    pred = np.asarray(pop.program.apply(member, x))[:, 0]
    mse = np.mean((pred - y) ** 2)
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    np.testing.assert_allclose(scalars["test/loss"][0], mse, rtol=1e-5)
    np.testing.assert_allclose(scalars["test/r2"][0], r2, rtol=1e-4, atol=1e-6)
    assert "test/accuracy" not in scalars and "train/online_accuracy" not in scalars
    # A training batch: fresh random bits, the task's flipping bits, its targets.
    task_plan = tasks.for_data(base, ds.num_features, ds.num_classes)
    xb, yb = data.training_batch(data.BatchPlan.of(base, ds.num_train), task_plan, dd["train"],
                                 jnp.int32(30), member.data_key, task_plan.at(30))
    np.testing.assert_array_equal(np.asarray(xb)[:, :15], np.broadcast_to(bits, (8, 15)))
    fb = np.concatenate([np.asarray(xb), np.ones((8, 1), np.float32)], axis=1)
    np.testing.assert_array_equal(
        yb, (fb @ teacher["w1"].T > teacher["theta"]).astype(np.float32) @ teacher["w2"]
        + teacher["b2"])


@pytest.mark.parametrize("fields, message", [
    ({"interventions__method": "dropout"}, "interventions.method = 'dropout'"),
    ({"data__name": "slowly_changing_regression", "data__flipping_bits": 5},
     "train.loss = 'cross_entropy'"),
    ({"data__name": "slowly_changing_regression", "train__loss": "mse"},
     "data.flipping_bits = 15"),
    ({"train__loss": "mse"}, "train.loss = 'mse' is not allowed for data.name = 'random'"),
    ({"data__task": "rotated"}, "data.task = 'rotated'"),
    ({"data__name": "slowly_changing_regression", "train__loss": "mse",
      "data__flipping_bits": 5, "data__batch_size": 0}, "data.batch_size = 0"),
    ({"data__task_every": 0}, "data.task_every = 0"),
    ({"interventions__method": "redo", "model__widths": ()}, "model.widths = ()"),
    ({"interventions__reset_activation": "prelu"}, "interventions.reset_activation"),
    ({"interventions__replacement_rate": 2.0}, "interventions.replacement_rate = 2.0"),
])
def test_bad_fields_are_refused_in_one_sentence(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(tiny_config(**fields))


def test_activation_reset_switches_exactly_the_dead_units():
    """A hand-made member whose hidden units 1 and 3 of layer 0 are dead on
    every probe input (bias -100): the periodic step switches exactly those
    two to leaky ReLU, touches no parameter or optimiser entry, and the
    switched network computes leaky ReLU on them (NumPy forward)."""
    base = _base(interventions__method="activation_reset", interventions__reset_slope=0.1,
                 diagnostics__enabled=False)
    pop = compiled_for(base)
    dd = device_data(base)
    state = init_members(pop, [base], seeds=[0])
    params = jax.tree.map(np.array, jax.device_get(state.params))
    params["Dense_0"]["bias"][0, [1, 3]] = -100.0
    state = state.replace(params=jax.tree.map(jnp.asarray, params),
                          step=jnp.full((1,), 10, jnp.int32))
    after = jax.device_get(pop.program.periodic(state, dd))
    switched = [np.asarray(w[0]) for w in after.interventions["switched"]]
    np.testing.assert_array_equal(np.flatnonzero(switched[0]), [1, 3])
    # Every layer: switched = dead (z <= 0 on every probe input) in the ReLU network.
    h = np.asarray(dd["probe"][0])
    for l in range(len(base.model.widths)):
        z = h @ params[f"Dense_{l}"]["kernel"][0] + params[f"Dense_{l}"]["bias"][0]
        np.testing.assert_array_equal(switched[l], np.all(z <= 0, axis=0))
        h = np.maximum(z, 0)
    np.testing.assert_array_equal(np.asarray(after.interventions["units_reset"])[0],
                                  [w.sum() for w in switched])
    for name in ("params", "opt_state", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, getattr(after, name),
                     jax.device_get(getattr(state, name)))
    # The switched member's forward pass, against NumPy.
    member = _member(after, 0)
    x = np.asarray(dd["probe"][0])
    logits = pop.program.apply(member, jnp.asarray(x))
    h = x
    for l in range(len(base.model.widths)):
        z = h @ member.params[f"Dense_{l}"]["kernel"] + member.params[f"Dense_{l}"]["bias"]
        h = np.where(switched[l], np.where(z > 0, z, 0.1 * z), np.maximum(z, 0))
    ref = h @ member.params["Dense_2"]["kernel"] + member.params["Dense_2"]["bias"]
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_evaluation_at_a_remedy_step_measures_the_state_before_it():
    """ReDo every 10 steps, evaluations every 10: the evaluation at step 20 is
    the member's state after 20 steps with the resets at 10 but before the
    reset at 20 (pure step functions, the last without its periodic remedy,
    then evaluate), and the units_reset reported there includes the reset at
    20 (the periodic remedy applied to that state)."""
    base = _base(interventions__method="redo", interventions__every=10,
                 train__eval_every=10, diagnostics__families=("dead", "dormant"))
    pop = compiled_for(base)
    program = pop.program
    dd = device_data(base)
    start = init_members(pop, [base], seeds=[3])
    at_10, _, _ = pop.train_chunk(jax.tree.map(jnp.copy, start), dd, 10)
    ref = jax.tree.map(jnp.copy, at_10)
    for i in range(10):
        ref, _, _ = program.step(ref, dd, with_ratio=i == 9, periodic=i < 9)
    ref_scalars, _, _ = program.evaluate(ref, dd, False)
    after = program.periodic(ref, dd)
    at_20, scalars, _ = jax.device_get(pop.train_chunk(at_10, dd, 20, False))
    for name in ("dead_fraction/all", "dead_fraction/layer_0", "dormant_ratio_0.1/layer_1",
                 "test/loss"):
        np.testing.assert_allclose(scalars[name], ref_scalars[name], rtol=1e-5, err_msg=name)
    assert scalars["dead_fraction/all"][0] > 0  # what the reset at 20 then acts on
    np.testing.assert_array_equal(scalars["units_reset/all"],
                                  np.asarray(after.interventions["units_reset"]).sum(-1))
    assert scalars["units_reset/all"][0] > np.asarray(ref.interventions["units_reset"]).sum()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 at_20.params, jax.device_get(after.params))
