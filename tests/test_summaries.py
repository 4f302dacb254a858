"""TensorBoard summaries: read back with tensorboard's own reader (and server)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata

from deadjax import results, summaries, sweep
from tests.conftest import tiny_config

BINS = 8
LAYERS = 2


def _points(activations=("relu", "tanh"), seeds=(0, 1, 2)):
    pts = sweep.resolve_points(tiny_config(), sweep.product(
        {"model.activation": list(activations)}, {"seed": list(seeds)}))
    sweep.group_points(pts)
    return pts


def _evaluation(rng, rows, step):
    scalars = {"test/accuracy": rng.uniform(size=rows), "train/loss": rng.uniform(size=rows),
               "test/loss": rng.uniform(size=rows), "dead_fraction/all": rng.uniform(size=rows),
               "grad_norm_ratio": rng.lognormal(size=rows),
               "step_echo": np.full(rows, float(step))}
    for layer in range(LAYERS):
        scalars[f"dead_fraction/layer_{layer}"] = rng.uniform(size=rows)
    hists = {}
    for kind in ("preact", "activation", "delta"):
        for layer in range(LAYERS):
            lo = rng.normal(size=rows) - 2.0
            hi = lo + rng.uniform(0.5, 3.0, size=rows)
            counts = rng.integers(0, 50, size=(rows, BINS)).astype(np.int32)
            hists[f"{kind}/layer_{layer}"] = (lo, hi, counts)
    return scalars, hists


def _acc(path, **kw):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0,
                                                     "tensors": 0}, **kw)
    return acc.Reload()


def _runs(root):
    return sorted(p.name for p in Path(root).iterdir()
                  if p.is_dir() and p.name != summaries.AGGREGATE)


# --------------------------------------------------------------------------

def test_run_names_readable_unique_and_safe():
    pts = _points()
    swept = sweep.swept_fields(pts)
    names = summaries.run_names(pts, swept)
    assert names[pts[0].id] == "activation=relu,seed=0"
    assert len(set(names.values())) == len(pts)

    P = lambda pid, **values: types.SimpleNamespace(id=pid, values=values)
    # ambiguous last components keep the dotted name; seed goes last
    pt = P("p1", **{"seed": 3, "data.seed": 1, "optim.learning_rate": 0.001,
                    "model.widths": [64, 32]})
    assert summaries.run_name(pt, list(pt.values)) == \
        "data.seed=1,learning_rate=0.001,widths=64-32,seed=3"
    # sanitising collides "a/b" with "a_b": both get their id appended
    a, b = P("pa", **{"model.activation": "a/b"}), P("pb", **{"model.activation": "a_b"})
    names = summaries.run_names([a, b], ["model.activation"])
    assert names == {"pa": "activation=a_b,pa", "pb": "activation=a_b,pb"}
    # too long: cut and ended by the id
    long = P("plong", **{f"f.x{i}": "v" * 20 for i in range(10)})
    name = summaries.run_name(long, list(long.values))
    assert len(name) <= 120 and name.endswith(",plong") and "/" not in name
    # no swept value: the id
    assert summaries.run_name(P("p0"), []) == "p0"


def test_scalars_histograms_hparams_and_padding(tmp_path):
    pts = _points()
    swept = sweep.swept_fields(pts)
    members = pts[:3]                      # one chunk of 3 real members + 1 padding row
    rng = np.random.default_rng(0)
    tb = summaries.SweepSummaries(tmp_path, pts, swept, histogram_members=2)
    written = {}
    for step in (0, 10):
        scalars, hists = _evaluation(rng, 4, step)
        tb.write_evaluation(members, step, scalars, hists)
        written[step] = (scalars, hists)
    tb.close_chunk()

    root = tmp_path / "tensorboard"
    assert _runs(root) == sorted(tb.names[p.id] for p in members)   # no padding run
    for i, p in enumerate(members):
        acc = _acc(root / tb.names[p.id])
        tags = acc.Tags()
        assert set(tags["scalars"]) == set(written[0][0])
        for step, (scalars, hists) in written.items():
            for tag, arr in scalars.items():
                got = {e.step: e.value for e in acc.Scalars(tag)}
                assert got[step] == pytest.approx(arr[i], rel=1e-6)
        if i < 2:
            assert set(tags["histograms"]) == set(written[0][1])
            for tag in tags["histograms"]:
                events = acc.Histograms(tag)
                assert [e.step for e in events] == [0, 10]
                for e in events:
                    lo, hi, counts = written[e.step][1][tag]
                    h = e.histogram_value
                    assert h.bucket == counts[i].tolist()
                    assert h.min == pytest.approx(lo[i]) and h.max == pytest.approx(hi[i])
                    assert h.bucket_limit == pytest.approx(
                        np.linspace(lo[i], hi[i], BINS + 1)[1:].tolist())
        else:
            assert tags["histograms"] == []           # histogram_members=2
        # the point's hparams
        content = acc.SummaryMetadata(hp_metadata.SESSION_START_INFO_TAG).plugin_data.content
        info = hp_metadata.parse_session_start_info_plugin_data(content)
        assert info.hparams["model.activation"].string_value == p.values["model.activation"]
        assert info.hparams["seed"].number_value == p.values["seed"]
        assert info.group_name == tb.names[p.id]

    # the sweep root declares the experiment: swept fields, domains, metrics
    acc = _acc(root)
    exp = hp_metadata.parse_experiment_plugin_data(
        acc.SummaryMetadata(hp_metadata.EXPERIMENT_TAG).plugin_data.content)
    infos = {h.name: h for h in exp.hparam_infos}
    assert set(infos) == {"model.activation", "seed"}
    assert [v.string_value for v in infos["model.activation"].domain_discrete.values] == \
        ["relu", "tanh"]
    assert [v.number_value for v in infos["seed"].domain_discrete.values] == [0, 1, 2]
    metrics = {m.name.tag for m in exp.metric_infos}
    assert {"test/accuracy", "test/loss", "train/loss", "dead_fraction/all",
            "grad_norm_ratio", "diverged"} <= metrics
    # a second SweepSummaries replaces the root declaration, it does not add one
    summaries.SweepSummaries(tmp_path, pts, swept)
    assert len(list(root.glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("hidden", [("tensorflow",), ("tensorflow", "google_crc32c")])
def test_writes_without_tensorflow(tmp_path, hidden):
    # TensorFlow made unimportable: the tensorboard package alone must do
    # (and without google-crc32c, with tensorboard's own checksums)
    code = f"""
import sys
for name in {hidden!r}: sys.modules[name] = None
import types, numpy as np
from deadjax import summaries
assert (summaries.google_crc32c is None) == ("google_crc32c" in {hidden!r})
P = types.SimpleNamespace(id="p1", values={{"seed": 1}})
tb = summaries.SweepSummaries({str(tmp_path)!r}, [P], ["seed"])
tb.write_evaluation([P], 0, {{"test/accuracy": np.ones(1)}},
                    {{"preact/layer_0": (np.zeros(1), np.ones(1), np.ones((1, 4), int))}})
tb.close_chunk()
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parent.parent)
    acc = _acc(tmp_path / "tensorboard" / "seed=1")
    assert acc.Scalars("test/accuracy")[0].value == 1.0
    assert acc.Histograms("preact/layer_0")[0].histogram_value.bucket == [1, 1, 1, 1]


def test_record_checksums_equal_tensorboards_own(tmp_path):
    # The C checksum writes what tensorboard's Python loop would: compared on
    # byte strings of every length 0..64 and a few long ones, against the
    # reference and against CRC-32C's published check value ("123456789" ->
    # 0xE3069283, RFC 3720 B.4), and the reader (which checks every record
    # with its own function) accepts the files.
    # Without google-crc32c the function is tensorboard's own: nothing to compare.
    pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c, masked_crc32c
    from tensorboard.summary.writer import record_writer
    assert crc32c(b"123456789") == 0xE3069283
    rng = np.random.default_rng(0)
    data = [rng.bytes(n) for n in (*range(65), 1000, 4096, 65_537)]
    assert [summaries.masked_crc32c(d) for d in data] == [masked_crc32c(d) for d in data]
    assert record_writer.masked_crc32c is summaries.masked_crc32c
    pts = _points(seeds=(0,))
    tb = summaries.SweepSummaries(tmp_path, pts, ["model.activation"])
    scalars, hists = _evaluation(rng, len(pts), 5)
    tb.write_evaluation(pts, 5, scalars, hists)
    tb.close_chunk()
    for p in pts:
        assert _acc(tb.run_dir(p)).Scalars("test/accuracy")[0].step == 5


def _records(path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    return list(EventFileLoader(str(path)).Load())


def test_event_files_as_tensorboards_writer_and_no_thread_or_open_file(tmp_path):
    # deadjax's EventFile writes the events tensorboard's EventFileWriter
    # would (the same records after the file_version event, read back by
    # tensorboard's loader), and a 40-member chunk's writing keeps neither a
    # thread nor an open file per run.
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    rng = np.random.default_rng(4)
    scalars, hists = _evaluation(rng, 1, 7)
    events = [summaries._start(7), summaries._event(7, [
        summaries.summary_pb2.Summary.Value(tag=t, simple_value=v[0]) for t, v in scalars.items()]
        + summaries._histogram_values(list(hists), [h[0][0] for h in hists.values()],
                                      [h[1][0] for h in hists.values()],
                                      [h[2][0] for h in hists.values()]), wall_time=12.5)]
    for writer in (EventFileWriter(str(tmp_path / "theirs")),
                   summaries.EventFile(tmp_path / "ours")):
        for ev in events:
            writer.add_event(ev)
        writer.close()
    (theirs,), (ours,) = (list((tmp_path / d).glob("events.out.tfevents.*"))
                          for d in ("theirs", "ours"))
    for path in (theirs, ours):       # events.out.tfevents.<time>.<host>.<pid>.<n>
        assert re.fullmatch(rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}"
                            rf"\.{os.getpid()}\.\d+", path.name), path.name
    a, b = _records(theirs), _records(ours)
    assert a[0].file_version == b[0].file_version == "brain.Event:2"
    assert [e.SerializeToString() for e in a[1:]] == [e.SerializeToString() for e in b[1:]]
    assert len(b) == 3

    n = 40
    pts = sweep.resolve_points(tiny_config(), sweep.product({"seed": list(range(n))}))
    sweep.group_points(pts)
    fds = lambda: len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    threads, files = threading.active_count(), fds()
    tb = summaries.SweepSummaries(tmp_path / "w", pts, ["seed"])
    for step in (0, 10):
        tb.write_evaluation(pts, step, *_evaluation(rng, n, step))
        assert threading.active_count() == threads and fds() == files
    tb.close_chunk()
    for p in pts:      # each evaluation is on disk when write_evaluation returns
        assert [e.step for e in _acc(tb.run_dir(p)).Scalars("test/accuracy")] == [0, 10]


def test_a_record_cut_short_ends_the_file(tmp_path):
    # A kill while a record is being appended leaves it cut short at the
    # end of the file; tensorboard's reader keeps every whole record before it.
    pts = _points(activations=("relu",), seeds=(0,))
    tb = summaries.SweepSummaries(tmp_path, pts, ["seed"])
    rng = np.random.default_rng(5)
    for step in (0, 10):
        tb.write_evaluation(pts, step, *_evaluation(rng, 1, step))
    tb.close_chunk()
    (path,) = tb.run_dir(pts[0]).glob("events.out.tfevents.*")
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 9)
    assert [e.step for e in _acc(tb.run_dir(pts[0])).Scalars("test/accuracy")] == [0]


def test_default_histogram_members(tmp_path):
    tb = summaries.SweepSummaries(tmp_path, [], [])
    assert [tb._histogram_count(n) for n in (3, 16, 40)] == [3, 16, 16]
    tb = summaries.SweepSummaries(tmp_path, [], [], histogram_members=-1)
    assert tb._histogram_count(40) == 40


def _next_second():
    # event file names start with the creation second: a resumed file must sort later
    time.sleep(1.05 - (time.time() % 1.0))


def test_resume_purges_orphaned_steps(tmp_path):
    pts = _points(activations=("relu",), seeds=(0, 1))
    swept = sweep.swept_fields(pts)
    rng = np.random.default_rng(1)
    first, second = {}, {}
    tb = summaries.SweepSummaries(tmp_path, pts, swept)
    for step in (0, 10, 20, 30):
        first[step], hists = _evaluation(rng, 2, step)
        tb.write_evaluation(pts, step, first[step], hists)
    tb.close_chunk()                        # killed after step 30; checkpoint at 10
    _next_second()
    tb = summaries.SweepSummaries(tmp_path, pts, swept)
    for step in (20, 30, 40):
        second[step], hists = _evaluation(rng, 2, step)
        # member 0: the runner says where it resumed; member 1: detected (old files)
        tb.write_evaluation(pts[:1], step, second[step], hists, resumed_from=10)
        tb.write_evaluation(pts[1:], step, {k: v[1:] for k, v in second[step].items()},
                            {k: tuple(a[1:] for a in v) for k, v in hists.items()})
    tb.close_chunk()

    for i, p in enumerate(pts):
        run = tmp_path / "tensorboard" / tb.names[p.id]
        assert len(list(run.glob("events.out.tfevents.*"))) == 2
        acc = _acc(run, purge_orphaned_data=True)
        events = acc.Scalars("test/accuracy")
        expect = {0: first[0], 10: first[10], 20: second[20], 30: second[30], 40: second[40]}
        assert [e.step for e in events] == sorted(expect)
        for e in events:
            assert e.value == pytest.approx(expect[e.step]["test/accuracy"][i], rel=1e-6)
        assert [e.step for e in acc.Histograms("preact/layer_0")] == sorted(expect)
        assert hp_metadata.SESSION_START_INFO_TAG in acc.Tags()["tensors"]
        # without purging, the duplicated steps would show
        raw = _acc(run, purge_orphaned_data=False).Scalars("test/accuracy")
        assert len(raw) == 7


def _write_results(workdir, pts, steps, rng, chunk_of):
    """Results parts as the runner writes them; returns the rows written."""
    swept = sweep.swept_fields(pts)
    rows = []
    by_chunk = {}
    for p in pts:
        by_chunk.setdefault(chunk_of(p), []).append(p)
    for chunk, members in by_chunk.items():
        for step in steps:
            scalars, _ = _evaluation(rng, len(members) + 1, step)   # + padding row
            scalars["test/loss"][0] = np.nan if step == steps[-1] else scalars["test/loss"][0]
            frame = results.rows_for_evaluation(members, step, scalars, swept)
            results.write_part(workdir, members[0].group, chunk, step, frame)
            rows.append(frame)
    import pandas as pd
    return pd.concat(rows, ignore_index=True)


def test_aggregates_over_seeds_and_rewrite(tmp_path):
    pts = _points(activations=("relu", "tanh"), seeds=(0, 1, 2))
    rng = np.random.default_rng(2)
    # chunk 0: seeds 0, 1 of every activation; chunk 1 (later): seed 2
    rows = _write_results(tmp_path, [p for p in pts if p.values["seed"] < 2], (0, 10),
                          rng, lambda p: 0)
    summaries.write_aggregates(tmp_path)
    agg = tmp_path / "tensorboard" / "aggregate"
    assert sorted(p.name for p in agg.iterdir()) == ["activation=relu", "activation=tanh"]
    rows2 = _write_results(tmp_path, [p for p in pts if p.values["seed"] == 2], (0, 10),
                           rng, lambda p: 1)
    # with DIR/points.jsonl (as the runner writes it), swept fields come from there
    (tmp_path / "points.jsonl").write_text("".join(
        json.dumps({"point": p.id, "overrides": p.values, "group": p.group}) + "\n"
        for p in pts))
    assert summaries.swept_columns(results.load_results(tmp_path), tmp_path) == \
        ["model.activation", "seed"]
    summaries.write_aggregates(tmp_path)
    import pandas as pd
    rows = pd.concat([rows, rows2], ignore_index=True)
    for act in ("relu", "tanh"):
        run = agg / f"activation={act}"
        assert len(list(run.glob("events.out.tfevents.*"))) == 1     # replaced, not added
        acc = _acc(run)
        for metric in summaries.AGGREGATE_METRICS:
            for step in (0, 10):
                vals = rows[(rows["model.activation"] == act) & (rows["step"] == step)][metric]
                vals = vals.to_numpy(np.float64)
                assert len(vals) == 3
                vals = vals[~np.isnan(vals)]
                for stat, ref in (("mean", vals.mean()), ("min", vals.min()),
                                  ("max", vals.max())):
                    got = {e.step: e.value for e in acc.Scalars(f"{metric}/{stat}")}
                    assert got[step] == pytest.approx(ref, rel=1e-6), (metric, stat, step)
        assert [e.value for e in acc.Scalars("seeds")] == [3, 3]
    assert not (tmp_path / ".tensorboard-tmp").exists() or \
        not any((tmp_path / ".tensorboard-tmp").iterdir())


def test_write_time_64_members(tmp_path):
    n = 64
    pts = sweep.resolve_points(tiny_config(), sweep.product({"seed": list(range(n))}))
    sweep.group_points(pts)
    rng = np.random.default_rng(3)
    scalars, hists = _evaluation(rng, n, 0)
    for layer in range(3):            # ~ the diagnostics' scalars of 3 layers
        for fam in ("dead_persistent", "revived", "saturation", "preact_mean", "preact_std",
                    "preact_p15", "preact_p50", "preact_p85", "grad_norm", "bias_grad_norm",
                    "delta_norm", "update_ratio", "weight_norm", "q", "c", "jacobian_sv",
                    "effective_rank", "dormant_ratio_0.025"):
            scalars[f"{fam}/layer_{layer}"] = rng.uniform(size=n)
    hists = {}
    for kind in ("preact", "activation", "delta"):
        for layer in range(3):
            lo = rng.normal(size=n)
            hists[f"{kind}/layer_{layer}"] = (lo, lo + 1, rng.integers(0, 9, (n, 30)))
    tb = summaries.SweepSummaries(tmp_path, pts, ["seed"], histogram_members=-1)
    t0 = time.perf_counter()
    tb.write_evaluation(pts, 0, scalars, hists)          # opens the writers
    first = time.perf_counter() - t0
    times = []
    for step in (10, 20, 30):
        t0 = time.perf_counter()
        tb.write_evaluation(pts, step, scalars, hists)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    tb.close_chunk()
    close = time.perf_counter() - t0
    print(f"\none evaluation, {n} members, {len(scalars)} scalars, {len(hists)} histograms "
          f"each: {1e3 * min(times):.1f} ms (first, opening the writers: {1e3 * first:.1f} ms); "
          f"close_chunk {1e3 * close:.1f} ms")
    assert min(times) < 2.0


# --------------------------------------------------------------------------
# A real TensorBoard server
# --------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("load_fast", ["auto", "false"])   # Rust and Python loaders
def test_tensorboard_server_lists_every_point(tmp_path, load_fast):
    pts = _points(activations=("relu", "tanh"), seeds=(0, 1))
    swept = sweep.swept_fields(pts)
    rng = np.random.default_rng(4)
    tb = summaries.SweepSummaries(tmp_path, pts, swept)
    for step in (0, 10, 20):
        scalars, hists = _evaluation(rng, len(pts), step)
        tb.write_evaluation(pts, step, scalars, hists)
    tb.close_chunk()                       # killed after step 20, checkpoint at 10
    _next_second()
    tb = summaries.SweepSummaries(tmp_path, pts, swept)
    final, hists = _evaluation(rng, len(pts), 20)
    tb.write_evaluation(pts, 20, final, hists, resumed_from=10)
    tb.close_chunk()

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "tensorboard"),
         "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1", "--load_fast", load_fast],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                                                             "CUDA_VISIBLE_DEVICES": ""})
    base = f"http://127.0.0.1:{port}/data/plugin/hparams"
    request = {"experimentName": "", "allowedStatuses": [
        "STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [], "startIndex": 0, "sliceSize": 100}
    try:
        deadline, groups, up = time.time() + 60, [], False
        while time.time() < deadline:
            if proc.poll() is not None:
                break
            try:
                groups = _post(base + "/session_groups", request).get("sessionGroups", [])
                up = True
                if len(groups) == len(pts) and all(g.get("metricValues") for g in groups):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        if not up:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None \
                else ""
            pytest.skip(f"tensorboard did not start within 60 s {err}")
        experiment = _post(base + "/experiment", {"experimentName": ""})
        name = urllib.parse.quote(tb.names[pts[0].id])
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={name}&tag=test%2Faccuracy"
        with urllib.request.urlopen(url, timeout=10) as r:
            series = json.loads(r.read())
    finally:
        proc.kill()
        proc.wait(timeout=10)

    assert {h["name"] for h in experiment["hparamInfos"]} == {"model.activation", "seed"}
    assert {"test/accuracy", "train/loss"} <= {m["name"]["tag"] for m in experiment["metricInfos"]}
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {tb.names[p.id] for p in pts}
    for i, p in enumerate(pts):
        g = by_name[tb.names[p.id]]
        assert g["hparams"]["model.activation"] == p.values["model.activation"]
        assert g["hparams"]["seed"] == p.values["seed"]
        [session] = g["sessions"]
        assert session["name"] == tb.names[p.id]
        metrics = {m["name"]["tag"]: m for m in g["metricValues"]}
        assert metrics["test/accuracy"]["value"] == pytest.approx(final["test/accuracy"][i],
                                                                  rel=1e-6)
        assert metrics["test/accuracy"]["trainingStep"] == 20
    # the resumed step 20 replaced the orphaned one: no step shows twice
    assert [row[1] for row in series] == [0, 10, 20]
    assert series[-1][2] == pytest.approx(final["test/accuracy"][0], rel=1e-6)
