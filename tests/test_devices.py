"""Every diagnostic family on 4 and 8 forced CPU devices: the sweep finishes
(a subprocess with a timeout, so a deadlock fails the test instead of
stalling it) and its results equal those of one device.

With jaxlib 0.10's batched LAPACK kernels this sweep hung: the device
programs' eigensolver calls each blocked a thread of XLA:CPU's pool waiting
for chunks queued on that pool (deadjax.linalg). The layers are 32 wide so
that those kernels would split their batch; the rest is tiny."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import deadjax
from deadjax import diagnostics, runner, sweep
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent

FIELDS = dict(model__widths=(32, 32), diagnostics__probe_size=64,
              diagnostics__jacobian_probe_size=4, diagnostics__families=diagnostics.FAMILY_NAMES,
              train__steps=20, train__eval_every=10, train__max_population=8)

SWEEP = """
    import jax
    from deadjax import runner, sweep
    from tests.conftest import tiny_config
    assert jax.device_count() == {devices}
    runner.run_sweep(tiny_config(**{fields!r}), sweep.product({{"seed": range(6)}}),
                     {workdir!r}, tensorboard=False)
"""


def _run_on(devices: int, workdir: Path, timeout: int = 300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    script = textwrap.dedent(SWEEP.format(devices=devices, fields=FIELDS, workdir=str(workdir)))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    runner.run_sweep(tiny_config(**FIELDS), sweep.product({"seed": range(6)}), workdir,
                     tensorboard=False)
    return deadjax.load_results(workdir)


def _check(many: pd.DataFrame, one: pd.DataFrame):
    assert sorted(many.seed.unique()) == list(range(6))        # padding never in results
    for column in ("jacobian_sv/layer_1", "effective_rank/layer_0", "preact_p50/layer_1"):
        assert many[column].notna().sum() == 12                 # full at steps 0 and 20
    pd.testing.assert_frame_equal(many, one, rtol=1e-4)          # NaN where one has NaN


@pytest.mark.slow
def test_four_devices_every_family(tmp_path, one_device):
    _run_on(4, tmp_path / "four")
    _check(deadjax.load_results(tmp_path / "four"), one_device)


@pytest.mark.slow
def test_eight_devices_every_family(tmp_path, one_device):
    _run_on(8, tmp_path / "eight")
    _check(deadjax.load_results(tmp_path / "eight"), one_device)
