"""The population programs: a member trained in a population is the member
trained alone; runs are deterministic; nothing recompiles; divergence is
contained to the member that diverged."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import data, population, runner, sharding, sweep
from tests.conftest import compiled_for, device_data, init_members, tiny_config


def _configs(base, n, **per_member):
    out = []
    for i in range(n):
        c = type(base)(base.to_dict())
        c.seed = i
        for field, values in per_member.items():
            section, leaf = field.split("__")
            c[section][leaf] = values[i]
        out.append(c)
    return out


def _train(base, configs, steps):
    program = compiled_for(base)
    state = init_members(program, configs)
    state, scalars, _ = program.train_chunk(state, device_data(base), steps)
    return jax.device_get(state), jax.device_get(scalars)


@pytest.mark.slow
def test_member_in_population_equals_member_alone_float32():
    base = tiny_config(model__norm="batch", train__eval_every=50, train__steps=50,
                       train__checkpoint_every=50, model__dropout=0.2,
                       diagnostics__enabled=False)
    members = _configs(base, 8, optim__learning_rate=np.geomspace(1e-3, 3e-2, 8),
                       model__dropout=[0.0, 0.1, 0.2, 0.3, 0.0, 0.1, 0.2, 0.3])
    pop_state, pop_scalars = _train(base, members, 50)
    for k in (0, 5):
        alone_state, alone_scalars = _train(base, [members[k]], 50)
        for split in ("train", "test"):
            np.testing.assert_allclose(pop_scalars[f"{split}/loss"][k],
                                       alone_scalars[f"{split}/loss"][0], rtol=1e-5)
            n = {"train": 72, "test": 48}[split]
            assert abs(pop_scalars[f"{split}/accuracy"][k]
                       - alone_scalars[f"{split}/accuracy"][0]) <= 1.0 / n + 1e-7
        member_params = jax.tree.map(lambda x: x[k], pop_state.params)
        alone_params = jax.tree.map(lambda x: x[0], alone_state.params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     member_params, alone_params)


@pytest.mark.slow
def test_member_in_population_equals_member_alone_float64():
    """With jax_enable_x64 the agreement is to 1e-9 in every parameter."""
    script = textwrap.dedent("""
        import jax, numpy as np
        from tests.test_population import _configs, _train
        from tests.conftest import tiny_config
        base = tiny_config(model__norm="batch", train__eval_every=50, train__steps=50,
                           train__checkpoint_every=50, model__dropout=0.2,
                           diagnostics__enabled=False)
        members = _configs(base, 8, optim__learning_rate=np.geomspace(1e-3, 3e-2, 8),
                           model__dropout=[0.0, 0.1, 0.2, 0.3, 0.0, 0.1, 0.2, 0.3])
        pop_state, _ = _train(base, members, 50)
        alone_state, _ = _train(base, [members[5]], 50)
        leaves = jax.tree.leaves(pop_state.params)
        assert leaves[0].dtype == np.float64, leaves[0].dtype
        diff = max(float(np.max(np.abs(a[5] - b[0]))) for a, b in
                   zip(leaves, jax.tree.leaves(alone_state.params)))
        print("MAXDIFF", diff)
    """)
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    diff = float(out.stdout.split("MAXDIFF")[1])
    assert diff <= 1e-9


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(tmp_path):
    base = tiny_config(diagnostics__families=("dead", "rank"))
    points = sweep.product({"seed": [0, 1, 2]})
    runner.run_sweep(base, points, tmp_path / "a")
    population.compiled.cache_clear()
    runner.run_sweep(base, points, tmp_path / "b")
    a = runner.results.load_results(tmp_path / "a")
    b = runner.results.load_results(tmp_path / "b")
    assert len(a) == 3 * 3
    import pandas as pd
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.slow
def test_no_recompilation_across_chunks_evaluations_and_reruns(tmp_path, without_compilation_cache):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    base = tiny_config(train__max_population=4, train__steps=30)
    points = sweep.product({"seed": range(6)})  # chunks of 4 and 2 (+2 padding)
    population.compiled.cache_clear()
    runner.run_sweep(base, points, tmp_path / "a")
    assert population.compiled.cache_info().currsize == 1
    _, (group,), _ = runner.plan(base, points, tmp_path / "a")
    program = population.compiled(runner.group_spec(group, data.load(base)))
    assert program.init._cache_size() == 1
    # one program: the step-0 evaluation, 3 chunks of steps, 2 population chunks
    # (on one CPU device, and one for the costly diagnostics beside it)
    chunk = program.chunk if program.beside is None else program.chunk_measured
    assert chunk._cache_size() == 1
    assert len(program._beside_programs) == (program.beside is not None)
    before = len(compiles)
    runner.run_sweep(base, points, tmp_path / "b")
    assert chunk._cache_size() == 1
    assert len(compiles) == before, "a rerun compiled again"
    frame = runner.results.load_results(tmp_path / "b")
    assert sorted(frame.seed.unique()) == list(range(6))  # padding never reaches results
    assert len(frame) == 6 * 4  # steps 0, 10, 20, 30


@pytest.mark.slow
def test_costly_diagnostics_beside_training_equal_those_computed_in_the_chunk(monkeypatch):
    """On one CPU device a full evaluation's costly diagnostics run in their own
    program, in blocks of members, beside the next chunk: the same numbers, bit
    for bit, as the chunk computing them itself, also at a step where a
    periodic remedy then changes every parameter (they measure the network
    before it)."""
    monkeypatch.setattr(population, "host_cores", lambda: 2)   # two blocks of 2
    base = tiny_config(interventions__method="shrink_perturb", interventions__every=10,
                       diagnostics__full_every=1)
    configs = _configs(base, 4)
    program = compiled_for(base, configs)
    assert program.beside is not None, "one CPU device: the costly diagnostics run beside"
    data = device_data(base)
    inside, beside = init_members(program, configs), init_members(program, configs)
    for stop in (0, 10, 20):
        if stop:   # shrink-and-perturb acts after this evaluation: it changes the network
            after, _, _, measured = program.chunk_measured(jax.tree.map(jnp.copy, beside), data,
                                                           jnp.int32(stop))
            kernel = lambda s: np.asarray(s.params["Dense_0"]["kernel"])
            assert np.abs(kernel(after) - kernel(measured)).max() > 1e-3
        inside, s_in, t_in = jax.device_get(
            program.chunk(inside, data, jnp.int32(stop), jnp.bool_(True)))
        beside, s_bs, t_bs = program.train_chunk(beside, data, stop, True)
        s_bs, t_bs = jax.device_get((s_bs, t_bs))
        assert s_in.keys() == s_bs.keys()
        for key in s_in:
            np.testing.assert_array_equal(s_bs[key], s_in[key], err_msg=key)
        assert np.isfinite(s_bs["effective_rank/layer_0"]).all()
        assert t_in["histograms"].keys() == t_bs["histograms"].keys() != set()
        jax.tree.map(np.testing.assert_array_equal, t_bs["histograms"], t_in["histograms"])
    # Not full: the costly scalars NaN, as inside the chunk.
    _, s_in, _ = jax.device_get(program.chunk(inside, data, jnp.int32(20), jnp.bool_(False)))
    _, s_bs, _ = jax.device_get(program.train_chunk(beside, data, 20, False))
    assert np.isnan(s_bs["effective_rank/layer_0"]).all()
    for key in s_in:
        np.testing.assert_array_equal(s_bs[key], s_in[key], err_msg=key)


@pytest.mark.slow
def test_costly_diagnostics_beside_training_follow_this_threads_float64_setting():
    """``jax.enable_x64`` holds for the calling thread only: the workers that
    compute the costly diagnostics trace under it too (float64 numbers, the
    same as the chunk computing them itself)."""
    base = tiny_config()
    with jax.enable_x64(True):
        program = compiled_for(base)
        data = device_data(base)
        inside, beside = init_members(program, [base]), init_members(program, [base])
        _, s_in, _ = program.chunk(inside, data, jnp.int32(0), jnp.bool_(True))
        _, s_bs, _ = program.train_chunk(beside, data, 0, True)
    assert s_bs["effective_rank/layer_0"].dtype == np.float64
    np.testing.assert_array_equal(s_bs["effective_rank/layer_0"],
                                  np.asarray(s_in["effective_rank/layer_0"]))


@pytest.mark.slow
def test_an_evaluation_that_is_not_full_has_the_chunks_placeholders_beside_training():
    """Where the costly diagnostics run beside training, the chunk leaves
    them out of an evaluation that is not full, and the evaluation gets the
    placeholders the chunk computing them itself gives (NaN scalars,
    histograms with NaN ranges and no counts), shaped from the costly
    program, also when it is the process's first evaluation (a resume
    between full ones): the same columns, the same values."""
    population.compiled.cache_clear()
    base = tiny_config()
    program = compiled_for(base)
    assert program.beside is not None
    data = device_data(base)
    first, again = init_members(program, [base]), init_members(program, [base])
    _, s_bs, t_bs = jax.device_get(program.train_chunk(first, data, 0, False))
    _, s_in, t_in = jax.device_get(program.chunk(again, data, jnp.int32(0), jnp.bool_(False)))
    assert s_bs.keys() == s_in.keys()
    assert np.isnan(s_bs["effective_rank/layer_0"]).all()
    for key in s_in:
        np.testing.assert_array_equal(s_bs[key], s_in[key], err_msg=key)
        assert s_bs[key].dtype == s_in[key].dtype, key
    assert t_bs["histograms"].keys() == t_in["histograms"].keys() != set()
    jax.tree.map(np.testing.assert_array_equal, t_bs["histograms"], t_in["histograms"])
    lo, hi, counts = t_bs["histograms"]["preact/layer_0"]
    assert np.isnan(lo).all() and np.isnan(hi).all() and not counts.any()


def test_blocks_of_the_costly_diagnostics_divide_the_population(monkeypatch):
    monkeypatch.setattr(population, "host_cores", lambda: 3)
    assert [population.beside_parts(n) for n in (1, 2, 4, 6, 7, 8, 9)] == [1, 2, 2, 3, 1, 2, 3]


@pytest.mark.slow
def test_the_costly_program_compiles_after_the_chunk_never_beside_it(without_compilation_cache):
    """A chunk compiled while another program compiles runs slower (same HLO;
    ~25% on the sweep benchmark's group, docs/benchmarks.md), so the worker
    compiles the costly diagnostics' program only once the chunk is
    compiled. Compilations are read from JAX's own events, with the thread
    each ran in."""
    compiles = []   # (start, end, thread name)

    def listen(event, seconds, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            end = time.perf_counter()
            compiles.append((end - seconds, end, threading.current_thread().name))

    population.compiled.cache_clear()
    jax.clear_caches()
    base = tiny_config(diagnostics__full_every=1)
    program = compiled_for(base)
    assert program.beside is not None
    state = init_members(program, [base])
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        state, evaluation = program.start(state, device_data(base), 0, True)
        evaluation.result()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    workers = [c for c in compiles if c[2].startswith("deadjax-diagnostics")]
    chunk = [c for c in compiles if c[2] == threading.current_thread().name]
    assert workers and chunk, compiles
    assert min(start for start, _, _ in workers) >= max(end for _, end, _ in chunk)


@pytest.mark.slow
def test_the_costly_program_compiles_from_shapes_before_the_evaluation_ends():
    """The worker compiles the costly program from the shapes of the network
    an evaluation measures, so compiling need not wait for that evaluation
    to finish: shapes alone compile it, and the evaluation then reuses that
    executable."""
    population.compiled.cache_clear()
    base = tiny_config(diagnostics__full_every=1)
    program = compiled_for(base)
    state = init_members(program, [base])
    data = device_data(base)
    shapes = jax.eval_shape(program.chunk_measured, state, data, jnp.int32(0))[3]
    members = sharding.members()
    measured = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=members),
                            shapes)
    size = jax.tree.leaves(state)[0].shape[0]
    executable = program._program_for(measured, size, data, False)
    assert list(program._beside_programs.values()) == [executable]
    _, scalars, _ = program.train_chunk(state, data, 0, True)
    assert list(program._beside_programs.values()) == [executable]
    assert np.isfinite(np.asarray(scalars["effective_rank/layer_0"])).all()


def test_a_failure_beside_training_reaches_the_caller():
    """An error in the worker that computes the costly diagnostics is raised
    where the evaluation is read, not lost in its thread."""
    base = tiny_config()
    program = compiled_for(base)

    class Refused:
        def lower(self, *args):
            raise RuntimeError("the costly diagnostics could not compile")

    broken = dataclasses.replace(program, beside=Refused(), _beside_programs={})
    state = init_members(broken, [base])
    with pytest.raises(RuntimeError, match="could not compile"):
        broken.train_chunk(state, device_data(base), 0, True)


@pytest.mark.slow
def test_diverging_member_is_contained(tmp_path):
    base = tiny_config(optim__name="sgd", train__steps=30, train__max_population=4,
                       diagnostics__families=("gradients",))
    lrs = [0.05, 1e12, 0.05]
    points = sweep.zipped({"seed": [0, 1, 2], "optim.learning_rate": lrs})
    runner.run_sweep(base, points, tmp_path / "mixed")
    runner.run_sweep(base, [points[0], points[2]], tmp_path / "sane")
    mixed = runner.results.load_results(tmp_path / "mixed")
    sane = runner.results.load_results(tmp_path / "sane")
    bad = mixed[mixed["optim.learning_rate"] == 1e12]
    assert bad.diverged.iloc[-1] == 1.0
    first = bad[bad.diverged == 1].step.min()
    assert 0 < bad.diverged_step.iloc[-1] <= first
    import deadjax
    member = deadjax.load_member(tmp_path / "mixed", bad.point.iloc[0])
    assert member["diverged"] and member["step"] == 30
    good = mixed[mixed["optim.learning_rate"] != 1e12].sort_values(["seed", "step"])
    sane = sane.sort_values(["seed", "step"])
    assert (good.diverged == 0).all()
    np.testing.assert_allclose(good["train/loss"].to_numpy(), sane["train/loss"].to_numpy(),
                               rtol=1e-6)


@pytest.mark.slow
def test_update_ratio_nan_at_step_zero_and_finite_after(tmp_path):
    base = tiny_config()
    runner.run_sweep(base, [{}], tmp_path)
    frame = runner.results.load_results(tmp_path)
    assert frame.loc[frame.step == 0, "update_ratio/layer_0"].isna().all()
    assert frame.loc[frame.step > 0, "update_ratio/layer_0"].notna().all()
    assert frame.loc[frame.step == 0, "dead_persistent/layer_0"].isna().all()
    assert frame["born_dead"].nunique() == 1


def test_zero_steps_evaluates_the_initialisation(tmp_path):
    base = tiny_config(train__steps=0, diagnostics__families=("dead", "output"))
    runner.run_sweep(base, sweep.product({"seed": [0, 1]}), tmp_path, tensorboard=False)
    frame = runner.results.load_results(tmp_path)
    assert frame.step.tolist() == [0, 0]
    assert frame["born_dead"].notna().all()


@pytest.mark.slow
def test_diverged_member_stops_updating():
    """After its first non-finite training loss a member's parameters and
    statistics never change again, while its neighbour trains on."""
    base = tiny_config(optim__name="sgd", model__norm="batch", diagnostics__enabled=False)
    members = _configs(base, 2, optim__learning_rate=[0.05, 1e12])
    program = compiled_for(base)
    dd = device_data(base)
    state = init_members(program, members)
    state, _, _ = program.train_chunk(state, dd, 10)
    at_10 = jax.device_get(state)
    state, scalars, _ = program.train_chunk(state, dd, 20)
    at_20 = jax.device_get(state)
    assert list(at_10.diverged) == [False, True]
    assert 0 < at_10.diverged_step[1] < 10 and at_20.diverged_step[1] == at_10.diverged_step[1]
    frozen = lambda s: jax.tree.map(lambda a: a[1], (s.params, s.batch_stats))
    jax.tree.map(np.testing.assert_array_equal, frozen(at_10), frozen(at_20))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a[0], b[0]), at_10.params, at_20.params)
    assert all(jax.tree.leaves(moved))
    assert np.isfinite(scalars["train/loss"][0]) and scalars["diverged"][1] == 1.0


def _memory_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux's /proc only")
def test_a_process_running_many_groups_keeps_its_memory_maps_bounded():
    """Each group's executables hold ~1,600 memory mappings; a process that
    kept every group's programs reached Linux's vm.max_map_count (65,530)
    after ~40 groups and died in LLVM. Only the last COMPILED_GROUPS stay."""
    population.compiled.cache_clear()
    jax.clear_caches()
    kept = population.COMPILED_GROUPS

    def run_group(i):
        c = tiny_config(model__widths=(10 + i, 8), train__steps=10,
                        diagnostics__enabled=False)
        comp = compiled_for(c)
        out = comp.train_chunk(init_members(comp, [c]), device_data(c), 10)
        jax.block_until_ready(out)

    counts = []
    for i in range(2 * kept + 1):
        run_group(i)
        counts.append(_memory_maps())
    assert population.compiled.cache_info().currsize == kept
    per_group = (counts[kept - 1] - counts[0]) / (kept - 1)
    assert per_group > 100, "the measurement no longer sees a group's mappings"
    # Once the cache is full, each new group replaces the oldest: no growth
    # beyond a fraction of one group's mappings over kept + 1 more groups.
    assert counts[-1] - counts[kept] < 0.5 * per_group, counts
