"""Nothing is lost: a killed sweep resumes to exactly the uninterrupted result,
damaged checkpoints fall back to the previous one, grown sweeps keep old rows."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import deadjax
from deadjax import runner, sweep
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent

EXPERIMENT = """
from tests.conftest import tiny_config
from deadjax.sweep import product

def get_config():
    c = tiny_config(train__steps={steps}, train__eval_every=20, train__checkpoint_every=40)
    c.data.num_features = 256
    c.data.num_train = 512
    c.data.batch_size = 256
    c.model.widths = (384, 384)
    c.diagnostics.families = ("dead", "gradients")
    return c

def get_sweep():
    return product({{"seed": [0, 1]}})
"""


def _experiment(tmp_path, steps):
    path = tmp_path / f"exp_{steps}.py"
    path.write_text(EXPERIMENT.format(steps=steps))
    return path


def _load(path):
    base, points = sweep.load_experiment(path)
    return base, points


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    exp = _experiment(tmp_path, 400)
    killed = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "scripts/sweep.py", "--config", str(exp), "--workdir", str(killed)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        first = None
        while time.time() < deadline and proc.poll() is None:
            steps = [p for p in (killed / "checkpoints").glob("*/chunk_0000/*")
                     if p.name.isdigit()]
            if steps:
                first = steps
                break
            time.sleep(0.05)
        assert first, "no checkpoint appeared"
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = deadjax.load_results(killed)
    assert partial.step.max() < 400
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    base, points = _load(exp)
    runner.run_sweep(base, points, tmp_path / "straight", tensorboard=False)
    resumed = deadjax.load_results(killed)
    straight = deadjax.load_results(tmp_path / "straight")
    assert not resumed.duplicated(["point", "step"]).any()
    assert len(resumed) == 2 * (400 // 20 + 1)
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path):
    base = tiny_config(train__steps=40, train__eval_every=10, train__checkpoint_every=10,
                       diagnostics__families=("dead",))
    points = sweep.product({"seed": [0, 1]})
    work = tmp_path / "w"
    runner.run_sweep(base, points, work, tensorboard=False)
    (chunk,) = list((work / "checkpoints").glob("*/chunk_0000"))
    newest = chunk / "40"
    files = sorted(p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 64)
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    longer = tiny_config(train__steps=60, train__eval_every=10, train__checkpoint_every=10,
                         diagnostics__families=("dead",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.run_sweep(longer, points, work, tensorboard=False)
    assert any("40" in str(w.message) for w in caught), [str(w.message) for w in caught]
    runner.run_sweep(longer, points, tmp_path / "straight", tensorboard=False)
    pd.testing.assert_frame_equal(deadjax.load_results(work),
                                  deadjax.load_results(tmp_path / "straight"), check_exact=True)


@pytest.mark.slow
def test_grown_sweep_keeps_old_points_and_trains_new_ones(tmp_path):
    base = tiny_config(diagnostics__families=("dead",))
    work = tmp_path / "w"
    runner.run_sweep(base, sweep.product({"seed": [0, 1]}), work, tensorboard=False)
    before = deadjax.load_results(work)
    parts = {p: p.stat().st_mtime_ns for p in (work / "results.parquet").rglob("*.parquet")}
    runner.run_sweep(base, sweep.product({"seed": [0, 1, 2]}), work, tensorboard=False)
    after = deadjax.load_results(work)
    assert sorted(after.seed.unique()) == [0, 1, 2]
    old = after[after.point.isin(before.point)].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, before, check_exact=True)
    # the finished chunk was skipped: its parts were not rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in parts.items())
    # and the new point equals the same point in a fresh sweep (another population
    # size, so float32 agreement rather than bitwise)
    runner.run_sweep(base, sweep.product({"seed": [2]}), tmp_path / "fresh", tensorboard=False)
    fresh = deadjax.load_results(tmp_path / "fresh")
    new = after[after.seed == 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(new.drop(columns=["group"]), fresh.drop(columns=["group"]),
                                  rtol=1e-5)


@pytest.mark.slow
def test_load_member_returns_flax_layout_params(tmp_path):
    base = tiny_config(diagnostics__enabled=False)
    runner.run_sweep(base, sweep.product({"seed": [0, 1]}), tmp_path, tensorboard=False)
    frame = deadjax.load_results(tmp_path)
    member = deadjax.load_member(tmp_path, frame.point.iloc[0])
    assert member["step"] == 20
    assert list(member["params"]) == ["Dense_0", "Dense_1", "Dense_2"]
    assert member["params"]["Dense_0"]["kernel"].shape == (12, 10)
    assert member["params"]["Dense_2"]["kernel"].shape == (8, 4)


@pytest.mark.slow
def test_histograms_are_stored_compactly_per_point_and_step(tmp_path):
    base = tiny_config(diagnostics__families=("dead",), diagnostics__histogram_bins=7)
    runner.run_sweep(base, sweep.product({"seed": [0, 1]}), tmp_path, tensorboard=False)
    hist = deadjax.load_histograms(tmp_path)
    assert set(hist.name) == {f"{k}/layer_{l}" for k in ("preact", "activation", "delta")
                              for l in (0, 1)}
    assert len(hist) == 2 * 2 * 6  # points x full evaluations x histograms
    assert sorted(hist.step.unique()) == [0, 20]  # first and last (full_every = 20)
    probe = deadjax.probe_batch(base).shape[0]
    sizes = hist.counts.map(len).unique().tolist()
    assert sizes == [7]
    totals = hist.assign(total=hist.counts.map(sum)).set_index("name").total
    assert (totals.loc["preact/layer_0"] == probe * 10).all()
    assert (hist.lo <= hist.hi).all()


@pytest.mark.slow
def test_costly_statistics_at_full_evaluations_only(tmp_path):
    """With diagnostics.full_every = 2 and evaluations every 10 of 30 steps,
    steps 0, 20 (a multiple of 20) and 30 (the last) are full: percentiles,
    Jacobian, rank and histograms there, NaN and no histogram at step 10;
    the per-evaluation statistics everywhere. A full evaluation gives the
    numbers a full_every = 1 run gives."""
    base = tiny_config(train__steps=30, diagnostics__full_every=2)
    runner.run_sweep(base, sweep.product({"seed": [0]}), tmp_path / "two", tensorboard=False)
    every = tiny_config(train__steps=30, diagnostics__full_every=1)
    runner.run_sweep(every, sweep.product({"seed": [0]}), tmp_path / "one", tensorboard=False)
    two = deadjax.load_results(tmp_path / "two").set_index("step").sort_index()
    one = deadjax.load_results(tmp_path / "one").set_index("step").sort_index()
    costly = ["preact_p50/layer_0", "jacobian_sv/layer_1", "effective_rank/layer_0"]
    assert two.loc[10, costly].isna().all()
    assert two.loc[[0, 20, 30], costly].notna().all().all()
    np.testing.assert_allclose(two.loc[[0, 20, 30], costly], one.loc[[0, 20, 30], costly],
                               rtol=1e-6)
    cheap = ["dead_fraction/layer_0", "grad_norm/layer_0", "preact_mean/layer_1"]
    np.testing.assert_allclose(two[cheap], one[cheap], rtol=1e-6)
    assert sorted(deadjax.load_histograms(tmp_path / "two").step.unique()) == [0, 20, 30]
    assert sorted(deadjax.load_histograms(tmp_path / "one").step.unique()) == [0, 10, 20, 30]


@pytest.mark.slow
def test_workdir_from_before_a_field_existed_resumes(tmp_path):
    """A config.json written before the fields of config.ADDED_FIELDS existed
    (diagnostics.full_every, the task and intervention fields) reads as holding
    their defaults, and the group keeps its id: the rerun with more steps
    resumes instead of refusing the workdir or training a second group."""
    import json
    from deadjax.config import ADDED_FIELDS
    points = sweep.product({"seed": [0, 1]})
    runner.run_sweep(tiny_config(), points, tmp_path, tensorboard=False)
    path = tmp_path / "config.json"
    record = json.loads(path.read_text())
    for field in ADDED_FIELDS:
        section, leaf = field.split(".")
        del record["config"][section][leaf]
    record["config"].pop("interventions")  # a whole section added later
    path.write_text(json.dumps(record))
    runner.run_sweep(tiny_config(train__steps=30), points, tmp_path, tensorboard=False)
    frame = deadjax.load_results(tmp_path)
    assert frame.group.nunique() == 1
    assert not frame.duplicated(["point", "step"]).any()
    assert sorted(frame.step.unique()) == [0, 10, 20, 30]


KILLER = """
import os, signal, sys
from deadjax import checkpoints, results, runner, sweep
from tests.conftest import tiny_config

where, n = sys.argv[2], int(sys.argv[3])
calls = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "part":  # killed half-way through writing a results part
    original = results.atomic_write_bytes
    def write(path, payload):
        if "results.parquet" in str(path):
            calls.append(path)
        if len(calls) == n:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = results._temporary(path)
            tmp.write_bytes(payload[: len(payload) // 2])
            die()
        return original(path, payload)
    results.atomic_write_bytes = write
elif where == "beside":  # killed while a full evaluation's costly diagnostics run beside
    from deadjax import population
    original = population.Compiled._measure
    def measure(self, measured, *args):
        if int(measured.step[0]) == n:   # the costly diagnostics of step n
            die()
        return original(self, measured, *args)
    population.Compiled._measure = measure
else:  # killed while Orbax writes a checkpoint in the background
    original = checkpoints.ChunkCheckpointer.save
    def save(self, step, state, metadata):
        out = original(self, step, state, metadata)
        calls.append(step)
        if len(calls) == n:
            die()
        return out
    checkpoints.ChunkCheckpointer.save = save
base = tiny_config(train__steps=60, train__eval_every=10, train__checkpoint_every=20,
                   diagnostics__families=("dead", "gradients"))
runner.run_sweep(base, sweep.product({"seed": [0, 1]}), sys.argv[1])
"""


@pytest.mark.parametrize("where, n", [pytest.param("part", 4, marks=pytest.mark.slow),
                                      pytest.param("checkpoint", 2, marks=pytest.mark.slow),
                                      pytest.param("beside", 60, marks=pytest.mark.slow)])
def test_kill_while_a_write_is_in_flight_then_rerun_equals_uninterrupted(tmp_path, where, n):
    """The host writes the previous evaluation while the device runs the next
    interval: a SIGKILL half-way through a results part, while Orbax writes a
    checkpoint in the background, or (one CPU device) while the last full
    evaluation's costly diagnostics run in a worker thread, loses nothing the
    rerun does not redo."""
    killed = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", KILLER, str(killed), where, str(n)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    base = tiny_config(train__steps=60, train__eval_every=10, train__checkpoint_every=20,
                       diagnostics__families=("dead", "gradients"))
    points = sweep.product({"seed": [0, 1]})
    partial = deadjax.load_results(killed)
    assert partial.step.max() < 60
    runner.run_sweep(base, points, killed)
    runner.run_sweep(base, points, tmp_path / "straight")
    resumed, straight = deadjax.load_results(killed), deadjax.load_results(tmp_path / "straight")
    assert len(resumed) == 2 * 7 and not resumed.duplicated(["point", "step"]).any()
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)
    assert not list((killed / "results.parquet").rglob(".*tmp*"))


@pytest.mark.slow
def test_workdir_from_before_a_changed_default_is_refused_then_resumes(tmp_path):
    """interventions.cbp_bias_correction was added with the default True, but
    continual-backprop runs from before had no correction: a workdir written
    before the field existed reads as False, so the new default is refused in
    one sentence (rather than switching the ranking half-way) and the old
    value resumes, with the old checkpoints (they lack the hyperparameter)."""
    import json
    from deadjax.config import ConfigError
    base = tiny_config(interventions__method="continual_backprop",
                       interventions__cbp_bias_correction=False, diagnostics__enabled=False)
    points = sweep.product({"seed": [0, 1]})
    runner.run_sweep(base, points, tmp_path, tensorboard=False)
    path = tmp_path / "config.json"
    record = json.loads(path.read_text())
    del record["config"]["interventions"]["cbp_bias_correction"]
    path.write_text(json.dumps(record))
    longer = dict(train__steps=30, interventions__method="continual_backprop",
                  diagnostics__enabled=False)
    with pytest.raises(ConfigError, match="interventions.cbp_bias_correction is False there"):
        runner.run_sweep(tiny_config(**longer), points, tmp_path, tensorboard=False)
    runner.run_sweep(tiny_config(**longer, interventions__cbp_bias_correction=False), points,
                     tmp_path, tensorboard=False)
    frame = deadjax.load_results(tmp_path)
    assert sorted(frame.step.unique()) == [0, 10, 20, 30] and frame.group.nunique() == 1


def _dead_from_events(units, point, layer, step):
    """The units the lifelines say are dead at an evaluation step."""
    e = units[(units.point == point) & (units.layer == layer) & (units.step <= step)
              & (units.event != "reset")]
    last = e.groupby("unit").event.last()
    return set(last[last == "died"].index)


def test_lifeline_events_of_hand_made_masks():
    """Died, revived and reset events, row for row, from masks made by hand."""
    from types import SimpleNamespace
    from deadjax import results
    life = results.Lifelines([SimpleNamespace(id="a"), SimpleNamespace(id="b")])
    first = life.events(0, {"dead": [np.array([[1, 0, 0], [0, 0, 1]], bool)]})
    assert first.values.tolist() == [["a", 0, 0, 0, "died"], ["b", 0, 2, 0, "died"]]
    assert list(first.dtypes[1:4]) == [np.int32, np.int32, np.int64]
    later = life.events(10, {"dead": [np.array([[0, 0, 0], [0, 1, 1]], bool)],
                             "last_reset": [np.array([[5, -1, -1], [-1, -1, 0]], np.int32)]})
    assert later.values.tolist() == [["b", 0, 1, 10, "died"], ["a", 0, 0, 10, "revived"],
                                     ["a", 0, 0, 5, "reset"]]
    assert life.events(20, {"dead": [np.array([[0, 0, 0], [0, 1, 1]], bool)]}).empty


@pytest.mark.slow
def test_unit_lifelines_agree_with_the_results_and_survive_a_resume(tmp_path):
    """At every evaluation the units the lifelines say are dead number
    dead_fraction/layer_L x width, for every point and layer; ReDo's resets
    are events at their steps; 20 steps then a rerun to 40 give the events of
    40 steps at once, without duplicates."""
    fields = dict(optim__learning_rate=0.2, train__steps=40, train__eval_every=5,
                  train__checkpoint_every=10, diagnostics__families=("dead",),
                  interventions__every=10, interventions__redo_tau=0.3)
    points = sweep.product({"interventions.method": ["none", "redo"], "seed": [0, 1]})
    runner.run_sweep(tiny_config(**fields), points, tmp_path / "once", tensorboard=False)
    frame = deadjax.load_results(tmp_path / "once")
    units = deadjax.load_units(tmp_path / "once")
    assert {"died", "reset"} <= set(units.event)
    for point, rows in frame.groupby("point"):
        for step, dead_fraction in zip(rows.step, rows["dead_fraction/layer_1"]):
            assert len(_dead_from_events(units, point, 1, step)) == round(dead_fraction * 8)
        for step, dead_fraction in zip(rows.step, rows["dead_fraction/layer_0"]):
            assert len(_dead_from_events(units, point, 0, step)) == round(dead_fraction * 10)
    redo = frame[frame["interventions.method"] == "redo"].point.unique()
    resets = units[units.event == "reset"]
    assert set(resets.point) <= set(redo) and (resets.step % 10 == 0).all()
    final = frame.sort_values("step").groupby("point").tail(1).set_index("point")
    ends = units.drop_duplicates(["point", "layer", "unit"]).groupby("point").dead_at_end.sum()
    for point in final.index:
        expected = round(final.loc[point, "dead_fraction/layer_0"] * 10
                         + final.loc[point, "dead_fraction/layer_1"] * 8)
        assert ends.get(point, 0) == expected
    runner.run_sweep(tiny_config(**dict(fields, train__steps=20)), points, tmp_path / "twice",
                     tensorboard=False)
    runner.run_sweep(tiny_config(**fields), points, tmp_path / "twice", tensorboard=False)
    twice = deadjax.load_units(tmp_path / "twice")
    assert not twice.duplicated(["point", "layer", "unit", "step", "event"]).any()
    pd.testing.assert_frame_equal(twice, units)
