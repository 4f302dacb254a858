"""Bad input gets one sentence naming the field, the value and what is allowed,
and a non-zero exit, before anything compiles or is written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deadjax import runner, sweep
from deadjax.config import ConfigError
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("field, value, words", [
    ("model.activation", "relux", ["model.activation", "relux", "relu"]),
    ("model.kernel_init", "heee", ["model.kernel_init", "heee", "he_normal"]),
    ("model.bias_init", "ones", ["model.bias_init", "ones", "zeros"]),
    ("optim.name", "adamax", ["optim.name", "adamax", "adam"]),
    ("data.name", "cifar", ["data.name", "cifar", "mnist1d"]),
    ("model.widths", (64, 0), ["model.widths", "positive"]),
    ("train.steps", -1, ["train.steps", "-1", ">= 0"]),
    ("model.dropout", 1.0, ["model.dropout", "1.0", "[0.0, 1.0)"]),
    ("model.norm", "group", ["model.norm", "group", "batch"]),
    ("data.order", "random", ["data.order", "random", "shuffle"]),
    ("train.precision", "fp8", ["train.precision", "fp8", "bf16"]),
    ("data.batch_size", 10_000, ["data.batch_size", "10000"]),
])
def test_bad_value_is_refused_with_one_sentence(tmp_path, field, value, words):
    with pytest.raises(ConfigError) as err:
        runner.plan(tiny_config(), [{field: value}], tmp_path / "w")
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert message.count(". ") == 0 and message.endswith(".")
    assert not (tmp_path / "w").exists()


def test_sweep_over_unknown_field_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.activaton is not a config field"):
        runner.plan(tiny_config(), sweep.product({"model.activaton": ["relu"]}), tmp_path)


def _sweep_cli(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "scripts/sweep.py", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_exit_code_and_message(tmp_path):
    out = _sweep_cli("--config", "experiments/seed_example.py", "--workdir",
                     str(tmp_path / "w"), "--config.model.widths=(128,-2)")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: model.widths = (128, -2)")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_workdir_of_another_experiment(tmp_path):
    work = tmp_path / "w"
    experiment = tmp_path / "exp.py"
    experiment.write_text(
        "from tests.conftest import tiny_config\n"
        "def get_config():\n"
        "    c = tiny_config(); c.train.steps = 10; c.diagnostics.enabled = False\n"
        "    return c\n")
    env_root = str(ROOT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=env_root)
    first = subprocess.run([sys.executable, "scripts/sweep.py", "--config", str(experiment),
                            "--workdir", str(work)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([sys.executable, "scripts/sweep.py", "--config", str(experiment),
                            "--workdir", str(work), "--config.optim.learning_rate=0.5"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert "optim.learning_rate" in again.stderr and "another experiment" in again.stderr


@pytest.mark.parametrize("name", ["mnist1d_mlp", "seed_example"])
def test_shipped_experiments_validate(tmp_path, name):
    base, points = sweep.load_experiment(ROOT / "experiments" / f"{name}.py")
    planned, groups, _ = runner.plan(base, points, tmp_path / name)
    if name == "seed_example":
        assert len(planned) == 5 * 2 * 2 * 2 * 8
        assert len(groups) == 5 * 2 * 2  # dropout and seed are per member
    else:
        assert len(planned) == 4 and len(groups) == 1
