"""The benchmark's helpers: its FLOP count, and a hand-written baseline that
trains exactly what deadjax trains (no timing here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import benchmarking as bm, data as data_lib


def test_parameter_and_flop_count_of_the_seed_mlp():
    # 784*128 + 128 + 128*128 + 128 + 128*10 + 10
    assert bm.num_params(784, (128, 128), 10) == 118_282
    assert bm.flops_per_member_step(784, (128, 128), 10, 128) == 6 * 118_282 * 128
    assert bm.num_params(5, (), 3) == 18  # logistic regression


def _small_seed_config(steps):
    c = bm.seed_config(eval_every=steps, steps=steps, max_population=3, num_test=16)
    c.data.num_train = 80
    c.data.num_features = 12
    c.data.batch_size = 16
    c.model.widths = (10, 8)
    c.diagnostics.probe_size = 16
    return c


@pytest.mark.slow
def test_handwritten_step_trains_what_deadjax_trains():
    steps = 7  # more than an epoch of 4 batches: the permutation changes
    cfg = _small_seed_config(steps)
    pop, state, data = bm.deadjax_population(cfg, 3)
    hw = bm.Handwritten(cfg, data_lib.load(cfg))
    members = hw.from_deadjax(state)

    # The loss of the first step, on the same batch, from the same parameters.
    first = jax.vmap(lambda m: hw.step(m)[1])(members)
    x, y = data["train"]
    for i in range(3):
        idx = data_lib.batch_indices(0, num_train=hw.n, batch_size=hw.b, order="shuffle",
                                     member_key=state.data_key[i])
        logits = pop.program.apply(jax.tree.map(lambda a: a[i], state), x[idx])
        ref = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(hw.b), y[idx]])
        np.testing.assert_allclose(first[i], ref, rtol=1e-6)

    after, _ = hw.population_program(steps)(members)
    state, scalars, _ = pop.train_chunk(state, data, steps)
    names = sorted(state.params, key=lambda n: int(n.split("_")[1]))
    for l, n in enumerate(names):
        np.testing.assert_allclose(after[0][l][0], state.params[n]["kernel"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[0][l][1], state.params[n]["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(after[3], state.step)

    # The loop baseline is the same step, one member at a time.
    one, _ = hw.member_program(steps)(bm.member(hw.from_deadjax(
        bm.deadjax_population(cfg, 3)[1]), 1))
    np.testing.assert_allclose(one[0][0][0], after[0][0][0][1], rtol=1e-5, atol=1e-6)


def test_matmul_peak_is_positive():
    assert bm.matmul_flops_per_second(jax.devices()[0], size=64, repeats=1) > 0


def test_budget_shares_what_is_left():
    unlimited = bm.Budget(0)
    assert unlimited.allows(1e9) and unlimited.left() == float("inf")
    b = bm.Budget(100)
    assert b.allows(50) and not b.allows(200)
    assert 49 < b.share(2) <= 50


def test_static_profile_counts_launches_outside_fusions():
    f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum() + jnp.sin(a).mean())
    a = jnp.ones((8, 8))
    counts = bm.hlo_op_counts(f.lower(a, a).compile())
    assert set(counts) == {"fusion", "custom-call", "while", "other"}
    assert sum(counts.values()) >= 1
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, jnp.int32(x.shape[0]) + x[0].astype(jnp.int32),
                                               lambda i, c: c * 2.0, x))
    assert bm.hlo_op_counts(loop.lower(a[0]).compile())["while"] == 1


def test_trace_summary_of_a_folder_without_a_trace(tmp_path):
    assert bm.trace_summary(tmp_path) == {"events": 0, "busy_us": 0.0, "top": [],
                                          "where": "no trace"}


@pytest.mark.slow
@pytest.mark.benchmark
def test_sweep_section_runs_deadjax_and_the_handwritten_sweep(tmp_path):
    """``benchmark.py --only sweep`` end to end at 1/16 of the seed64 sweep
    (4 members, 512 examples, 25 steps): both whole runs finish and the
    table gives their wall times and a ratio."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "benchmark.py"), "--only",
                          "sweep", "--sweeps", "seed64", "--sweep-scale", "16", "--repeats",
                          "1", "--json", str(tmp_path / "b.json")], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    row = re.search(r"\| seed64 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) ", out.stdout)
    assert row, out.stdout
    dj, hand, ratio = map(float, row.groups())
    assert dj > 0 and hand > 0 and abs(ratio - dj / hand) < 0.05 * ratio + 0.01


@pytest.mark.slow
@pytest.mark.benchmark
def test_evaluation_section_times_every_default_family(tmp_path):
    """``benchmark.py --only evaluation`` at 1/64 of the mnist1d1024 group (16
    members): a row per default family, diagnostics off, output alone and all
    defaults, each with positive times; the JSON record holds the same."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    from deadjax import diagnostics
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "benchmark.py"), "--only",
                          "evaluation", "--sweep-scale", "64", "--repeats", "1", "--json",
                          str(tmp_path / "b.json")], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "b.json").read_text())["evaluation"]
    expected = {"off", "default", *diagnostics.DEFAULT_FAMILIES}
    assert set(record) == expected
    for name, row in record.items():
        assert row["compile_s"] > 0 and row["full_s"] > 0 and row["regular_s"] > 0, name
        assert f"| {name} | {row['full_s']:.2f} | {row['regular_s']:.2f} |" in out.stdout


@pytest.mark.slow
@pytest.mark.benchmark
def test_sweep_section_with_diagnostics_times_the_intervals_of_both_runs(tmp_path):
    """``benchmark.py --only sweep`` on 1/64 of the mnist1d1024 sweep (16
    members, 7 steps): the run with the default diagnostics is timed and its
    instrumented run, like the one without, puts the program calls in
    ``training intervals`` (the host loop calls ``Compiled.start``)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "benchmark.py"), "--only",
                          "sweep", "--sweeps", "mnist1d1024", "--sweep-scale", "64",
                          "--repeats", "1", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "b.json").read_text())["sweep"]["mnist1d1024"]
    assert len(record["diagnostics_s"]) == 1 and record["diagnostics_s"][0] > 0
    assert "with the default diagnostics:" in out.stdout
    for key in ("breakdown", "breakdown_diagnostics"):
        parts = record[key]
        assert parts["training intervals"] > 0 and parts["compile"] > 0, (key, parts)
        assert parts["device to host"] < parts["training intervals"], (key, parts)
