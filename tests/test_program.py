"""The trainer as pure functions: its parts compose to the one compiled
program, a new remedy (with its own per-member hyperparameter) is one
transform and one registry entry, every config field is declared once, and
no module of the package imports another in a cycle."""

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deadjax
from deadjax import activations, config as config_lib, data, interventions, metrics, population
from deadjax import sweep
from deadjax.errors import ConfigError
from deadjax.fields import Field, real
from tests.conftest import compiled_for, device_data, init_members, tiny_config


@pytest.mark.slow
def test_step_evaluate_observe_compose_to_train_chunk():
    """Three calls of the pure ``step``, then ``evaluate`` and ``observe``,
    each compiled on its own, give the state and scalars of the compiled
    ``train_chunk``."""
    base = tiny_config(model__norm="batch", model__dropout=0.1)
    configs = [tiny_config(model__norm="batch", model__dropout=0.1, seed=s,
                           optim__learning_rate=lr) for s, lr in ((0, 1e-3), (1, 3e-2))]
    compiled = compiled_for(base, configs)
    program = compiled.program
    dd = device_data(base)
    start = init_members(compiled, configs)
    state = jax.tree.map(jnp.copy, start)
    step, evaluate, observe = (jax.jit(f) for f in (program.step, program.evaluate,
                                                    program.observe))
    losses = []
    for _ in range(3):
        state, loss, _ = step(state, dd)
        losses.append(loss)
    scalars, _, evidence = evaluate(state, dd, jnp.bool_(True))
    state = observe(state, evidence)
    want_state, want, _ = jax.device_get(compiled.train_chunk(start, dd, 3))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    jax.tree.map(close, jax.device_get(state.params), want_state.params)
    jax.tree.map(close, jax.device_get(state.batch_stats), want_state.batch_stats)
    assert np.all(np.asarray(state.step) == 3) and np.all(want_state.step == 3)
    for name in ("test/loss", "train/accuracy", "dead_fraction/layer_0", "grad_norm/out",
                 "effective_rank/layer_1"):
        close(scalars[name], want[name])
    close(np.mean(losses, axis=0), want["train/online_loss"])


# --------------------------------------------------------------------------
# The worked example of docs/design.md: a new remedy in one declaration
# --------------------------------------------------------------------------

def _reset_dead_biases(config, widths):
    """Every dead unit's bias set to the member's ``interventions.dead_bias``."""
    act = activations.get(config.model.activation)

    def update(state, obs, member):
        dead = tuple(metrics.dead_units(d, act.max_derivative) for d in obs.dphi)
        params = dict(member.params)
        for l, mask in enumerate(dead):
            layer = dict(params[f"Dense_{l}"])
            layer["bias"] = jnp.where(mask, member.hparams["dead_bias"], layer["bias"])
            params[f"Dense_{l}"] = layer
        return state, interventions.Edit(params=params, counted=dead)

    return interventions.Transform(init=lambda: (), update=update)


DEAD_BIAS_RESET = interventions.Remedy(
    "dead_bias_reset", _reset_dead_biases, doc="dead units' biases set to dead_bias",
    fields=(Field("interventions.dead_bias", 0.1, "dead_bias_reset: the new bias", real(),
                  per_member=True, hparam="dead_bias", added="2026-12-01"),))


@pytest.mark.slow
def test_a_new_remedy_with_its_own_hyperparameter_is_one_declaration():
    with interventions.registered(DEAD_BIAS_RESET):
        # The field is in every default config, per member, validated.
        assert config_lib.default_config().interventions.dead_bias == 0.1
        assert "interventions.dead_bias" in config_lib.per_member_fields()
        with pytest.raises(ConfigError, match="interventions.dead_bias = nan"):
            config_lib.validate(tiny_config(interventions__dead_bias=float("nan")))
        # Two values of it and two methods share one group.
        base = tiny_config(interventions__every=10, diagnostics__enabled=False)
        points = sweep.resolve_points(base, sweep.product(
            {"interventions.method": ["none", "dead_bias_reset"],
             "interventions.dead_bias": [0.1, 0.5]}))
        (group,) = sweep.group_points(points)
        configs = [p.config for p in group.points]
        compiled = compiled_for(base, configs)
        assert compiled.spec.remedies == ("dead_bias_reset",)
        # Hand-made members whose units 1 and 3 of layer 0 are dead on every
        # probe input: the remedy sets exactly those biases, per member.
        state = init_members(compiled, configs, seeds=[0] * 4)
        params = jax.tree.map(np.array, jax.device_get(state.params))
        params["Dense_0"]["bias"][:, [1, 3]] = -100.0
        state = state.replace(params=jax.tree.map(jnp.asarray, params),
                              step=jnp.full((4,), 10, jnp.int32))
        after = jax.device_get(compiled.program.periodic(state, device_data(base)))
    assert "dead_bias_reset" not in interventions.names()  # the registry is restored
    for k, p in enumerate(group.points):
        bias = after.params["Dense_0"]["bias"][k]
        if p.config.interventions.method == "none":
            np.testing.assert_array_equal(bias, params["Dense_0"]["bias"][k])
            assert after.interventions["units_reset"][k].sum() == 0
            continue
        want = params["Dense_0"]["bias"][k].copy()
        want[[1, 3]] = np.float32(p.config.interventions.dead_bias)
        np.testing.assert_array_equal(bias, want)
        assert after.interventions["units_reset"][k][0] == 2
        np.testing.assert_array_equal(after.params["Dense_0"]["kernel"][k],
                                      params["Dense_0"]["kernel"][k])


# --------------------------------------------------------------------------
# One declaration per field
# --------------------------------------------------------------------------

def test_every_config_field_is_declared_once():
    names = [f.name for f in config_lib.all_fields()]
    assert len(names) == len(set(names))
    assert set(names) == set(config_lib.flatten(config_lib.default_config()))
    for f in config_lib.all_fields():
        assert f.doc, f.name
        if f.per_member and f.name != "seed":
            assert f.hparam, f.name
        if f.hparam:
            assert f.per_member, f.name
    # The state holds exactly the declared hyperparameters.
    plain = population.hparams_of([tiny_config()], with_remedies=False)
    assert set(plain) == {"learning_rate", "weight_decay", "momentum", "sigma_w", "sigma_b",
                          "leaky_slope", "dropout"}
    with_remedies = population.hparams_of([tiny_config()], with_remedies=True)
    assert set(with_remedies) - set(plain) == {
        f.hparam for f in config_lib.all_fields() if f.section == "interventions" and f.hparam}


# --------------------------------------------------------------------------
# No import cycle
# --------------------------------------------------------------------------

def _package_imports(path: Path, package: str) -> tuple[set, list]:
    """(sibling modules imported at top level, imports of siblings inside functions)."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []

    def names(node):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == package or node.module.startswith(package + ".")):
            # "from a.b import c" imports the module a.b.c where there is one
            return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in sys.modules
                    else node.module for a in node.names]
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.startswith(package + ".")]
        return []

    for node in tree.body:
        top.update(names(node))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                nested += names(node)
    return top, nested


def test_no_import_cycle_and_no_function_level_sibling_imports():
    root = Path(deadjax.__file__).parent
    modules = {}
    for info in pkgutil.walk_packages([str(root)], prefix="deadjax."):
        mod = importlib.import_module(info.name)
        top, nested = _package_imports(Path(mod.__file__), "deadjax")
        assert not nested, f"{info.name} imports {nested} inside a function"
        modules[info.name] = top
    # Depth-first search for a cycle among top-level imports.
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in modules.get(m, ()):
            assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in modules:
        if m not in state:
            visit(m, [m])
    assert {m for deps in modules.values() for m in deps} <= set(sys.modules)
