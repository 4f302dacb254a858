"""Keeps working when things go wrong (docs/faults.md): every fault one
sentence and a documented exit status, workdirs that heal on rerun, several
processes on one workdir, preemption at an evaluation, intervals that
combine. Subprocesses run with timeouts, so a hang fails instead of stalling."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

import deadjax
from deadjax import errors, results, runner, sweep, train
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

EXPERIMENT = """
from tests.conftest import tiny_config
from deadjax.sweep import product

def get_config():
    c = tiny_config(train__steps={steps}, train__eval_every={every},
                    train__checkpoint_every={ckpt}, train__max_population={pop})
    c.data.num_features = {features}
    c.data.num_train = 512
    c.data.batch_size = 128
    c.model.widths = ({width}, {width})
    c.diagnostics.families = ("dead", "gradients")
    return c

def get_sweep():
    return product({{"seed": list(range({seeds}))}})
"""


def _experiment(tmp_path, name="exp", steps=60, every=10, ckpt=20, pop=4, seeds=2,
                width=16, features=12):
    path = tmp_path / f"{name}.py"
    path.write_text(EXPERIMENT.format(steps=steps, every=every, ckpt=ckpt, pop=pop,
                                      seeds=seeds, width=width, features=features))
    return path


def _sweep(exp, workdir, *extra, timeout=300, **kw):
    return subprocess.run([sys.executable, "scripts/sweep.py", "--config", str(exp),
                           "--workdir", str(workdir), *extra], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _straight(exp, workdir):
    base, points = sweep.load_experiment(exp)
    runner.run_sweep(base, points, workdir, tensorboard=False)
    return deadjax.load_results(workdir)


def _one_sentence(stderr: str, status_line: str = "error:") -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [l for l in stderr.splitlines() if l.startswith(status_line)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------
# Intervals that combine
# --------------------------------------------------------------------------

def test_checkpoints_at_the_first_evaluation_after_each_multiple():
    cfg = tiny_config(train__steps=200, train__eval_every=30, train__checkpoint_every=50)
    # evaluations 30, 60, ..., 180, 200; multiples of 50 at 50, 100, 150, 200
    assert train.checkpoint_steps(0, 200, cfg) == [60, 120, 150, 200]
    cfg = tiny_config(train__steps=1200, train__eval_every=400, train__checkpoint_every=50)
    assert train.checkpoint_steps(0, 1200, cfg) == [400, 800, 1200]
    # a resumed run checkpoints where the uninterrupted one does
    assert train.checkpoint_steps(400, 1200, cfg) == [800, 1200]
    deadjax.config.validate(cfg)  # no longer refused


@pytest.mark.slow
def test_eval_every_above_checkpoint_every_runs_and_checkpoints(tmp_path):
    exp = _experiment(tmp_path, steps=40, every=20, ckpt=5)
    out = _sweep(exp, tmp_path / "w")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "checkpoints at the first evaluation at or after each multiple of 5" in out.stderr
    (chunk,) = (tmp_path / "w" / "checkpoints").glob("*/chunk_0000")
    assert sorted(int(p.name) for p in chunk.iterdir() if p.name.isdigit()) == [20, 40]


# --------------------------------------------------------------------------
# Preemption
# --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_the_next_evaluation_with_a_checkpoint(tmp_path, sig):
    exp = _experiment(tmp_path, steps=4000, every=20, ckpt=1000, width=256, features=128)
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "scripts/sweep.py", "--config", str(exp),
                             "--workdir", str(work)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((work / "results.parquet").rglob("step_*")):
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == errors.EXIT_STOPPED, stderr[-3000:]
    line = _one_sentence(stderr, "deadjax: stopped")
    step = int(line.split("stopped at step ")[1].split()[0])
    assert 0 < step < 4000 and "rerun the same command to resume" in line
    (chunk,) = (work / "checkpoints").glob("*/chunk_0000")
    assert str(step) in {p.name for p in chunk.iterdir()}
    partial = deadjax.load_results(work)
    assert partial.step.max() == step
    # The rerun resumes from that checkpoint; shorten both runs to check equality.
    short = _experiment(tmp_path, name="short", steps=step + 40, every=20, ckpt=1000,
                        width=256, features=128)
    out = _sweep(short, work)
    assert out.returncode == 0, out.stderr[-2000:]
    pd.testing.assert_frame_equal(deadjax.load_results(work), _straight(short, tmp_path / "s"),
                                  check_exact=True)


# --------------------------------------------------------------------------
# Workdirs that heal
# --------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_a_truncated_results_part_is_named_then_rewritten_by_the_rerun(tmp_path):
    exp = _experiment(tmp_path)
    work = tmp_path / "w"
    straight = _straight(exp, work)
    (part,) = (work / "results.parquet").glob("*/chunk_0000/step_000000030.parquet")
    _truncate(part)
    with pytest.raises(errors.DamagedFile, match=str(part).replace(".", r"\.")):
        deadjax.load_results(work)
    with pytest.warns(results.DamagedPartWarning, match="step_000000030"):
        skipped = deadjax.load_results(work, on_damaged="skip")
    assert 30 not in skipped.step.values and len(skipped) == len(straight) - 2
    out = _sweep(exp, work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "is damaged: moved to" in out.stderr
    pd.testing.assert_frame_equal(deadjax.load_results(work), straight, check_exact=True)
    assert list((work / "results.parquet.damaged").rglob("step_000000030.parquet.*"))


@pytest.mark.slow
def test_a_missing_results_part_is_recomputed(tmp_path):
    exp = _experiment(tmp_path)
    work = tmp_path / "w"
    straight = _straight(exp, work)
    (part,) = (work / "results.parquet").glob("*/chunk_0000/step_000000000.parquet")
    part.unlink()
    out = _sweep(exp, work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rows of step 0 are missing" in out.stderr
    pd.testing.assert_frame_equal(deadjax.load_results(work), straight, check_exact=True)


@pytest.mark.slow
def test_a_truncated_points_file_is_repaired_from_the_results(tmp_path):
    exp = _experiment(tmp_path, seeds=3, pop=1)   # three chunks of one member
    work = tmp_path / "w"
    straight = _straight(exp, work)
    points = work / "points.jsonl"
    text = points.read_text()
    points.write_text(text[: len(text) - 40])      # the last line cut in the middle
    out = _sweep(exp, work)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = deadjax.load_results(work)
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)
    records = [json.loads(l) for l in points.read_text().splitlines()]
    assert len(records) == 3 and sorted(r["chunk"] for r in records) == [0, 1, 2]
    # nothing trained again in a new chunk
    assert not list((work / "checkpoints").glob("*/chunk_0003"))


@pytest.mark.slow
def test_a_damaged_config_json_is_refused_in_one_sentence(tmp_path):
    exp = _experiment(tmp_path)
    work = tmp_path / "w"
    _straight(exp, work)
    (work / "config.json").write_text('{"config": {"seed": 0, "da')
    out = _sweep(exp, work)
    assert out.returncode == errors.EXIT_BAD_CONFIG
    line = _one_sentence(out.stderr)
    assert "config.json is damaged" in line and "delete it" in line


# --------------------------------------------------------------------------
# One workdir, several processes
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_on_one_workdir_train_each_chunk_once(tmp_path):
    exp = _experiment(tmp_path, steps=300, every=50, ckpt=100, pop=1, seeds=4, width=256,
                      features=128)
    work = tmp_path / "w"
    cmd = [sys.executable, "scripts/sweep.py", "--config", str(exp), "--workdir", str(work)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    trained = [sorted(int(l.split(" chunk ")[1].split()[0]) for l in err.splitlines()
                      if " done (" in l) for _, err in outs]
    assert sorted(trained[0] + trained[1]) == [0, 1, 2, 3]
    assert trained[0] and trained[1], trained  # they shared the work
    pd.testing.assert_frame_equal(deadjax.load_results(work), _straight(exp, tmp_path / "one"),
                                  check_exact=True)
    for run in (work / "tensorboard").glob("seed=*"):
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, run
    assert not list((work / "locks").rglob("*.lock"))


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    from deadjax import locks
    path = locks.chunk_lock_path(tmp_path, "g1", 0)
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path.write_text(json.dumps({"host": locks.HOST, "pid": int(dead), "started": 0,
                                "heartbeat": time.time()}))
    with locks.chunk(tmp_path, "g1", 0) as lock:
        assert lock.held
        with locks.chunk(tmp_path, "g1", 0) as second:   # a live holder: not taken
            assert not second.held and second.holder["pid"] == os.getpid()
    assert not path.exists()
    # another host's lock is stale once its heartbeat is older than STALE_S
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0,
                                "heartbeat": time.time() - locks.STALE_S - 1}))
    with locks.chunk(tmp_path, "g1", 0) as lock:
        assert lock.held


# --------------------------------------------------------------------------
# The file system gets in the way
# --------------------------------------------------------------------------

FAULTY = """
import errno, os, runpy, sys
from deadjax import results
code, after = int(sys.argv[1]), int(sys.argv[2])
calls = []
original = results.atomic_write_bytes
def write(path, payload):
    if "results.parquet" in str(path):
        calls.append(path)
        if len(calls) > after:
            raise OSError(code, os.strerror(code), str(path))
    return original(path, payload)
results.atomic_write_bytes = write
sys.argv = ["scripts/sweep.py"] + sys.argv[3:]
runpy.run_path("scripts/sweep.py", run_name="__main__")
"""


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
def test_a_full_disk_is_one_sentence_and_the_rerun_resumes(tmp_path):
    """On a 3 MB tmpfs (where the test can mount one) the first checkpoint does
    not fit; elsewhere a writer raises ENOSPC after two results parts."""
    exp = _experiment(tmp_path, steps=100, every=20, ckpt=40, width=256, features=784)
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "3m")
    work = disk / "w"
    try:
        if mounted:
            out = _sweep(exp, work)
        else:
            out = subprocess.run([sys.executable, "-c", FAULTY, str(errno.ENOSPC), "2",
                                  "--config", str(exp), "--workdir", str(work)],
                                 cwd=ROOT, env=ENV, capture_output=True, text=True,
                                 timeout=300)
        assert out.returncode == errors.EXIT_FAULT, out.stderr[-3000:]
        line = _one_sentence(out.stderr)
        assert "is full" in line and "free space and rerun the same command" in line
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        rerun = _sweep(exp, work)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        pd.testing.assert_frame_equal(deadjax.load_results(work),
                                      _straight(exp, tmp_path / "s"), check_exact=True)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("code, words", [
    pytest.param(errno.EROFS, "read-only file system", marks=pytest.mark.slow),
    pytest.param(errno.EACCES, "not writable", marks=pytest.mark.slow),
    (errno.ENOENT, "vanished")])
def test_a_read_only_or_vanished_workdir_is_one_sentence(tmp_path, code, words):
    exp = _experiment(tmp_path, steps=40, every=20, ckpt=40)
    out = subprocess.run([sys.executable, "-c", FAULTY, str(code), "1", "--config", str(exp),
                          "--workdir", str(tmp_path / "w")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == errors.EXIT_FAULT, out.stderr[-3000:]
    line = _one_sentence(out.stderr)
    assert words in line and "results.parquet" in line


VANISHING_DATA = """
import os, runpy, sys
from deadjax import train
victim = sys.argv[1]
original = train.run_chunk
def run_chunk(*a, **k):
    out = original(*a, **k)
    if os.path.exists(victim):
        os.remove(victim)            # the second group's dataset vanishes half-way
    return out
train.run_chunk = run_chunk
sys.argv = ["scripts/sweep.py"] + sys.argv[2:]
runpy.run_path("scripts/sweep.py", run_name="__main__")
"""


@pytest.mark.slow
def test_a_dataset_file_missing_half_way_is_one_sentence(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.npz"
        np.savez(path, x_train=rng.random((64, 6), dtype=np.float32),
                 y_train=rng.integers(0, 3, 64), x_test=rng.random((16, 6), dtype=np.float32),
                 y_test=rng.integers(0, 3, 16))
        files.append(path)
    exp = tmp_path / "exp.py"
    exp.write_text(f"""
from tests.conftest import tiny_config
def get_config():
    c = tiny_config(train__steps=20, train__eval_every=10, diagnostics__families=("dead",))
    c.data.name = "arrays"
    c.data.path = {str(files[0])!r}
    c.data.batch_size = 8
    return c
def get_sweep():
    return [{{"data.path": {str(files[0])!r}}}, {{"data.path": {str(files[1])!r}}}]
""")
    out = subprocess.run([sys.executable, "-c", VANISHING_DATA, str(files[1]), "--config",
                          str(exp), "--workdir", str(tmp_path / "w")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == errors.EXIT_BAD_CONFIG, out.stderr[-3000:]
    line = _one_sentence(out.stderr)
    assert str(files[1]) in line
