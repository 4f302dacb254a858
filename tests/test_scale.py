"""Sharding the member axis over devices and splitting sweeps over job arrays
change nothing but speed."""

import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import pytest

import deadjax
from deadjax import runner, sharding, sweep
from deadjax.checkpoints import CheckpointWarning
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _four_devices(script: str, timeout=300, devices=4):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                         env=_env(devices), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


SWEEP = """
    import jax
    from deadjax import runner, sweep
    from tests.conftest import tiny_config
    assert jax.device_count() == 4
    base = tiny_config(train__max_population=4, train__steps={steps},
                       diagnostics__families=("dead", "gradients"))
    runner.run_sweep(base, sweep.product({{"seed": range(6)}}), {workdir!r}, tensorboard=False)
"""


def _base(steps):
    return tiny_config(train__max_population=4, train__steps=steps,
                       diagnostics__families=("dead", "gradients"))


@pytest.mark.slow
def test_four_devices_match_one_device_and_resume_on_one(tmp_path):
    _four_devices(SWEEP.format(steps=20, workdir=str(tmp_path / "four")))
    points = sweep.product({"seed": range(6)})
    runner.run_sweep(_base(20), points, tmp_path / "one", tensorboard=False)
    four = deadjax.load_results(tmp_path / "four")
    one = deadjax.load_results(tmp_path / "one")
    assert sorted(four.seed.unique()) == list(range(6))  # padding never in results
    assert len(four) == len(one) == 6 * 3
    pd.testing.assert_frame_equal(four, one, rtol=1e-5)

    # the checkpoint saved on 4 devices resumes on this 1-device process
    runner.run_sweep(_base(40), points, tmp_path / "four", tensorboard=False)
    runner.run_sweep(_base(40), points, tmp_path / "one40", tensorboard=False)
    resumed = deadjax.load_results(tmp_path / "four")
    straight = deadjax.load_results(tmp_path / "one40")
    assert not resumed.duplicated(["point", "step"]).any()
    pd.testing.assert_frame_equal(resumed, straight, rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_from_four_devices_resumes_on_two(tmp_path):
    _four_devices(SWEEP.format(steps=20, workdir=str(tmp_path / "four")))
    _four_devices(SWEEP.replace("== 4", "== 2").format(steps=40, workdir=str(tmp_path / "four")),
                  devices=2)
    runner.run_sweep(_base(40), sweep.product({"seed": range(6)}), tmp_path / "one",
                     tensorboard=False)
    assert not list((tmp_path / "four").glob("checkpoints/*/*.corrupt"))  # really resumed
    resumed = deadjax.load_results(tmp_path / "four")
    assert not resumed.duplicated(["point", "step"]).any()
    pd.testing.assert_frame_equal(resumed, deadjax.load_results(tmp_path / "one"), rtol=1e-5)


EXPERIMENT = """
from deadjax import sweep
from tests.conftest import tiny_config


def get_config():
    return tiny_config(train__max_population=4, train__steps={steps},
                       diagnostics__families=("dead", "gradients"))


def get_sweep():
    return sweep.product({{"seed": range(6)}})
"""


def _two_processes(steps: int, workdir: Path, timeout=240):
    """``scripts/sweep.py --distributed`` in two processes of 2 CPU devices
    each, joined on 127.0.0.1 (a free port, gloo CPU collectives): one
    4-device mesh."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    experiment = workdir.parent / f"experiment_{steps}.py"
    experiment.write_text(EXPERIMENT.format(steps=steps))
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--distributed",
               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--config={experiment}", f"--workdir={workdir}"]
    procs = [subprocess.Popen(command + [f"--process_id={i}"], cwd=ROOT, env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_on_one(tmp_path):
    """2 processes x 2 devices write the results one process writes (only
    process 0 writes rows; Orbax saves checkpoints collectively), and their
    checkpoints resume in a single process."""
    _two_processes(20, tmp_path / "two")
    points = sweep.product({"seed": range(6)})
    runner.run_sweep(_base(20), points, tmp_path / "one", tensorboard=False)
    two = deadjax.load_results(tmp_path / "two")
    assert len(two) == 6 * 3
    pd.testing.assert_frame_equal(two, deadjax.load_results(tmp_path / "one"), rtol=1e-5)
    with warnings.catch_warnings():  # a checkpoint that fails to restore would warn
        warnings.simplefilter("error", CheckpointWarning)
        runner.run_sweep(_base(40), points, tmp_path / "two", tensorboard=False)
        member = deadjax.load_member(tmp_path / "two", two.point.iloc[0])
    assert member["step"] == 40 and member["params"]["Dense_0"]["kernel"].shape == (12, 10)
    assert not list((tmp_path / "two").glob("checkpoints/*/*.corrupt"))
    runner.run_sweep(_base(40), points, tmp_path / "one40", tensorboard=False)
    resumed = deadjax.load_results(tmp_path / "two")
    assert not resumed.duplicated(["point", "step"]).any()
    pd.testing.assert_frame_equal(resumed, deadjax.load_results(tmp_path / "one40"), rtol=1e-5)


@pytest.mark.slow
def test_two_array_tasks_equal_one_task(tmp_path):
    base = tiny_config(train__max_population=2, diagnostics__families=("dead",))
    points = sweep.product({"model.activation": ["relu", "tanh"]}, {"seed": range(3)})
    for task in (0, 1):
        runner.run_sweep(base, points, tmp_path / "array", tensorboard=False,
                         num_tasks=2, task_index=task)
    runner.run_sweep(base, points, tmp_path / "single", tensorboard=False)
    pd.testing.assert_frame_equal(deadjax.load_results(tmp_path / "array"),
                                  deadjax.load_results(tmp_path / "single"), check_exact=True)


def test_task_share_is_a_deterministic_partition():
    base = tiny_config(train__max_population=2)
    points = sweep.resolve_points(base, sweep.product({"model.activation": ["relu", "tanh"]},
                                                      {"seed": range(5)}))
    groups = sweep.group_points(points)
    runner.assign_chunks(groups, {}, 2)
    shares = [runner.task_share(groups, 3, i) for i in range(3)]
    units = [(g.id, c) for share in shares for g, c in share]
    assert len(units) == len(set(units)) == 2 * 3  # 2 groups x 3 chunks, each once
    assert [len(s) for s in shares] == [2, 2, 2]


def test_population_size_is_a_multiple_of_the_device_count():
    assert sharding.population_size(10, 4) == 4
    assert sharding.population_size(3, 256) == 3
