"""Bad input gets one sentence naming the field, the value and what is allowed,
and a non-zero exit, before anything compiles or is written."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------
# The deadjax command (issue: a researcher's daily loop)
# --------------------------------------------------------------------------

EXPERIMENT = """
from tests.conftest import tiny_config
from deadjax.sweep import product

def get_config():
    c = tiny_config(train__steps=40, train__eval_every=20, train__checkpoint_every=40,
                    diagnostics__families=("dead",))
    return c

def get_sweep():
    return product({"seed": [0, 1]})
"""


def _deadjax(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "deadjax.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _exp(tmp_path, text=EXPERIMENT):
    path = tmp_path / "exp.py"
    path.write_text(text)
    return path


def test_the_console_command_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\ndeadjax = "deadjax.cli:main"' in text


@pytest.mark.slow
def test_help_lists_every_field_and_exits_0():
    out = _deadjax("--help")
    assert out.returncode == 0 and "deadjax sweep" in out.stdout and "deadjax status" in out.stdout
    out = _deadjax("sweep", "--help")
    assert out.returncode == 0
    from deadjax import config as config_lib
    for f in config_lib.all_fields():
        assert f"  {f.name} = {f.default!r}" in out.stdout, f.name
    assert "the member's seed" in out.stdout and "[per member]" in out.stdout


def test_dry_run_prints_config_groups_points_and_memory_and_writes_nothing(tmp_path):
    work = tmp_path / "w"
    out = _deadjax("sweep", "--config", str(_exp(tmp_path)), "--workdir", str(work),
                   "--dry-run", "--config.optim.learning_rate=0.01")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "optim.learning_rate = 0.01  (overridden)" in out.stdout
    assert "2 points in 1 groups" in out.stdout and "MiB of device memory per member" in out.stdout
    assert out.stdout.count("seed=") == 2 and "chunk 0: 2 members, to train" in out.stdout
    assert not work.exists()


@pytest.mark.parametrize("args, words", [
    (["--config.model.activaton=tanh"], ["model.activaton is not a config field",
                                         "did you mean model.activation"]),
    (["--config.model.widths=128"], ["model.widths", "'128'", "(128,)"]),
    (["--config.optim.learning_rate=fast"], ["optim.learning_rate", "'fast'", "a number"]),
    (["--config.train.steps=1.5"], ["train.steps", "'1.5'", "an integer"]),
    (["--config.model=1"], ["--config.model is a section"]),
    (["--workers=3"], ["'--workers=3' is not an option"]),
])
def test_command_line_mistakes_are_one_sentence_and_exit_2(tmp_path, args, words):
    out = _deadjax("sweep", "--config", str(_exp(tmp_path)), "--workdir",
                   str(tmp_path / "w"), *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    for word in words:
        assert word in line, line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("value, words", [('"1e-3"', ["optim.learning_rate = '1e-3'", "a number"]),
                                          ("1.0", ["seed = 1.0", "an integer"])])
def test_a_sweep_value_of_the_wrong_type_names_the_point(tmp_path, value, words):
    field = "optim.learning_rate" if "e-3" in value else "seed"
    text = EXPERIMENT.replace('product({"seed": [0, 1]})', f'[{{"{field}": {value}}}]')
    out = _deadjax("sweep", "--config", str(_exp(tmp_path, text)), "--workdir",
                   str(tmp_path / "w"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert "the sweep's point {" in line
    for word in words:
        assert word in line, line


@pytest.mark.slow
def test_progress_is_one_line_per_evaluation_and_honest_after_a_resume(tmp_path):
    exp, work = _exp(tmp_path), tmp_path / "w"
    first = _deadjax("sweep", "--config", str(exp), "--workdir", str(work))
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [l for l in first.stderr.splitlines() if " step " in l and "member-steps/s" in l]
    assert [l.split(" step ")[1].split(":")[0] for l in lines] == ["0/40", "20/40", "40/40"]
    assert all("test accuracy" in l and "dead fraction" in l and "left" in l for l in lines)
    assert "80/80 member-steps of this run" in first.stderr
    again = _deadjax("sweep", "--config", str(exp), "--workdir", str(work))
    assert "nothing to do: all 2 points are finished" in again.stderr
    longer = _deadjax("sweep", "--config", str(exp), "--workdir", str(work),
                      "--config.train.steps=60")
    assert longer.returncode == 0, longer.stderr[-2000:]
    # the resumed run's work is 2 members x 20 steps, not the whole run
    assert "40/40 member-steps of this run" in longer.stderr
    assert [l.split(" step ")[1].split(":")[0] for l in longer.stderr.splitlines()
            if " step " in l and "member-steps/s" in l] == ["60/60"]


@pytest.mark.slow
def test_resume_with_eval_every_halved_keeps_old_rows_and_adds_new_ones(tmp_path):
    """train.eval_every may change on rerun: the old evaluations' rows stay as
    they were, new evaluations follow the new interval from the resume point,
    and config.json's history records the change."""
    exp, work = _exp(tmp_path), tmp_path / "w"
    out = _deadjax("sweep", "--config", str(exp), "--workdir", str(work))
    assert out.returncode == 0, out.stderr[-2000:]
    import deadjax
    before = deadjax.load_results(work)
    out = _deadjax("sweep", "--config", str(exp), "--workdir", str(work),
                   "--config.train.steps=80", "--config.train.eval_every=10",
                   "--config.train.max_population=1", "--config.diagnostics.full_every=3")
    assert out.returncode == 0, out.stderr[-2000:]
    after = deadjax.load_results(work)
    assert sorted(after.step.unique()) == [0, 20, 40, 50, 60, 70, 80]
    assert after.group.nunique() == 1 and not after.duplicated(["point", "step"]).any()
    old = after[after.step <= 40].reset_index(drop=True)
    import pandas as pd
    pd.testing.assert_frame_equal(old, before, check_exact=True)
    history = __import__("json").loads((work / "config.json").read_text())["history"]
    assert history[-1]["changed_after"]["train.eval_every"] == [20, 10]
    # an uninterrupted run with the new schedule from step 40 agrees on the training
    straight = tmp_path / "s"
    out = _deadjax("sweep", "--config", str(exp), "--workdir", str(straight),
                   "--config.train.steps=80")
    ref = deadjax.load_results(straight).set_index(["point", "step"])
    got = after.set_index(["point", "step"])
    for step in (40, 60, 80):
        np.testing.assert_allclose(got.xs(step, level="step")["test/loss"],
                                   ref.xs(step, level="step")["test/loss"], rtol=1e-6)


@pytest.mark.slow
def test_a_training_field_still_may_not_change(tmp_path):
    exp, work = _exp(tmp_path), tmp_path / "w"
    assert _deadjax("sweep", "--config", str(exp), "--workdir", str(work)).returncode == 0
    out = _deadjax("sweep", "--config", str(exp), "--workdir", str(work),
                   "--config.data.batch_size=8")
    assert out.returncode == 2 and "data.batch_size is 16 there but 8 now" in out.stderr


@pytest.mark.slow
def test_status_shows_groups_chunks_steps_and_holders(tmp_path):
    exp, work = _exp(tmp_path), tmp_path / "w"
    assert _deadjax("sweep", "--config", str(exp), "--workdir", str(work)).returncode == 0
    out = _deadjax("status", str(work))
    assert out.returncode == 0, out.stderr
    assert "2 points in 1 groups" in out.stdout and "chunk 0: 2 members, finished" in out.stdout
    out = _deadjax("status", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "holds no config.json" in out.stderr


@pytest.mark.slow
def test_frames_of_two_workdirs_with_different_static_fields_concatenate(tmp_path):
    import deadjax
    import pandas as pd
    exp = _exp(tmp_path)
    for name, width in (("a", "(10, 8)"), ("b", "(6,)")):
        out = _deadjax("sweep", "--config", str(exp), "--workdir", str(tmp_path / name),
                       f"--config.model.widths={width}", "--config.model.activation=tanh")
        assert out.returncode == 0, out.stderr[-2000:]
    a = deadjax.load_results(tmp_path / "a", fields="all")
    b = deadjax.load_results(tmp_path / "b", fields="all")
    both = pd.concat([a, b], ignore_index=True)
    assert set(both["model.widths"]) == {"[10, 8]", "[6]"}
    assert set(both["model.activation"]) == {"tanh"} and both["wall_time"].notna().all()
    assert both["data.name"].eq("random").all() and len(both) == len(a) + len(b)
