"""Reproductions (deadjax/reproductions): each --quick run, called as a function
into tmp_path, writes a summary.json of the DESIGN.md schema whose checks all
pass. The quick runs take from 45 s to minutes each: marked slow (CI runs them)."""

import json

import numpy as np
import pandas as pd
import pytest

from deadjax import reproductions, theory
from deadjax.reproductions import common, edge_of_stability, lu2019

KEYS = {"name", "published", "source", "ours", "tolerance", "pass"}


def _run_quick(name, tmp_path):
    summary = reproductions.reproduce(name, quick=True, workdir=tmp_path / "runs",
                                      figdir=tmp_path / "figures", verbose=False)
    on_disk = json.loads((tmp_path / "figures" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["name"] == name and summary["quick"] is True
    assert summary["checks"], "a reproduction without checks"
    for check in summary["checks"]:
        assert set(check) == KEYS, check
        assert isinstance(check["pass"], bool)
        assert check["source"]
    failed = [c for c in summary["checks"] if not c["pass"]]
    assert not failed, failed
    pngs = list((tmp_path / "figures").glob("*.png"))
    assert pngs and all(p.stat().st_size < 150_000 for p in pngs)
    return summary


@pytest.mark.slow
def test_mnist1d_quick(tmp_path):
    _run_quick("mnist1d", tmp_path)


@pytest.mark.slow
def test_lu2019_quick(tmp_path):
    _run_quick("lu2019", tmp_path)


@pytest.mark.slow
def test_schoenholz2017_quick(tmp_path):
    _run_quick("schoenholz2017", tmp_path)


@pytest.mark.slow
def test_glorot2010_quick(tmp_path):
    _run_quick("glorot2010", tmp_path)


@pytest.mark.slow
def test_he2015_quick(tmp_path):
    _run_quick("he2015", tmp_path)


@pytest.mark.slow
def test_ioffe2015_quick(tmp_path):
    _run_quick("ioffe2015", tmp_path)


@pytest.mark.slow
def test_seed_remedies_quick(tmp_path):
    _run_quick("seed_remedies", tmp_path)


@pytest.mark.slow
def test_plasticity_quick(tmp_path):
    _run_quick("plasticity", tmp_path)


@pytest.mark.slow
def test_edge_of_stability_quick(tmp_path):
    summary = _run_quick("edge_of_stability", tmp_path)
    assert len(summary["checks"]) == 6        # 3 claims x (tanh, relu)


def _eos_table(settings, hover=1.0, monotone=False):
    """A synthetic results table of the edge_of_stability sweep: every member's
    sharpness rises linearly from 0.2 x 2/eta to hover x 2/eta by step 0.3 T and
    then wiggles by 3% around it; the loss decays exponentially, with 1%
    upticks every other evaluation unless ``monotone``."""
    rows = []
    steps = np.arange(0, settings["steps"] + 1, settings["eval_every"])
    for act in edge_of_stability.ACTIVATIONS:
        for lr in settings["lrs"]:
            top = hover * 2.0 / lr
            ramp = np.clip(steps / (0.3 * settings["steps"]), 0.0, 1.0)
            sharp = (0.2 + (1.0 - 0.2) * ramp) * top
            sharp = np.where(ramp >= 1.0, top * (1 + 0.03 * np.sin(steps)), sharp)
            loss = 2.3 * np.exp(-steps / settings["steps"])
            if not monotone:
                loss = loss * (1 + 0.01 * (np.arange(len(steps)) % 2))
            for st, sh, lo in zip(steps, sharp, loss):
                rows.append({"model.activation": act, "optim.learning_rate": lr,
                             "step": int(st), "train/loss": lo, "sharpness": sh,
                             "sharpness_x_lr": sh * lr, "sharpness_iterations": 12.0,
                             "diverged": 0.0})
    return pd.DataFrame(rows)


def test_edge_of_stability_rules_on_a_synthetic_table():
    s = edge_of_stability.settings(quick=False)
    verdicts = [c.passed for c in edge_of_stability.checks(_eos_table(s), s)]
    assert verdicts == [True] * 6
    # sharpness stuck at 60% of 2/eta: neither sharpening to 2/eta nor at the edge
    verdicts = [c.passed for c in edge_of_stability.checks(_eos_table(s, hover=0.6), s)]
    assert verdicts == [False, False, True] * 2
    # "right at, or just above": 20% above 2/eta is inside the full run's band
    # (-10%, +30%), 40% above and 15% below are not
    verdicts = [c.passed for c in edge_of_stability.checks(_eos_table(s, hover=1.2), s)]
    assert verdicts == [True] * 6
    verdicts = [c.passed for c in edge_of_stability.checks(_eos_table(s, hover=1.4), s)]
    assert verdicts == [True, False, True] * 2
    low = _eos_table(s)
    low.loc[low["step"] >= 0.5 * s["steps"], ["sharpness", "sharpness_x_lr"]] *= 0.85
    verdicts = [c.passed for c in edge_of_stability.checks(low, s)]
    assert verdicts == [True, False, True] * 2
    # a loss that falls monotonically fails the third check only
    verdicts = [c.passed for c in edge_of_stability.checks(_eos_table(s, monotone=True), s)]
    assert verdicts == [True, True, False] * 2
    # a diverged member fails its activation's first check
    frame = _eos_table(s)
    frame.loc[(frame["model.activation"] == "relu") & (frame["step"] == s["steps"]),
              "diverged"] = 1.0
    verdicts = [c.passed for c in edge_of_stability.checks(frame, s)]
    assert verdicts == [True, True, True, False, True, True]


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        reproductions.module("nope")


def test_cli_exit_status_on_bad_name(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("_reproduce_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["nope"]) == 2
    assert "reproduction 'nope' is unknown" in capsys.readouterr().err


def test_time_budget_is_refused_where_a_reproduction_takes_none(capsys, tmp_path):
    from deadjax import cli
    assert cli.main(["reproduce", "mnist1d", "--time-budget", "5", "--workdir",
                     str(tmp_path / "w"), "--figures", str(tmp_path / "f")]) == 2
    assert "takes no time budget; only plasticity_gpu do" in capsys.readouterr().err
    assert cli.main(["reproduce", "plasticity_gpu", "--time-budget", "-1"]) == 2
    assert "--time-budget = -1 must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_summary_schema_and_table(tmp_path):
    checks = [common.within("a", 0.5, "src", 0.52, 0.03),
              common.claim("b", "x", "src", "y", "rule", False)]
    common.write_summary(tmp_path, "demo", False, checks)
    d = json.loads((tmp_path / "summary.json").read_text())
    assert d["name"] == "demo" and d["quick"] is False
    assert [c["pass"] for c in d["checks"]] == [True, False]
    assert all(set(c) == KEYS for c in d["checks"])
    assert "FAIL" in common.table(checks)


def test_lu2019_rates_use_some_layer_before_d():
    """Three networks of depth 3: dead layer pattern -> event at each depth d,
    counted by hand (a layer l < d entirely dead)."""
    dead = np.array([[0, 1, 0],     # dies at layer 1 -> event from d = 2
                     [0, 0, 0],     # never
                     [1, 1, 1]])    # dies at layer 0 -> event from d = 1
    frame = pd.DataFrame({
        "point": ["a", "b", "c"], "step": 0, "model.kernel_init": "he_normal",
        "model.widths": ["[2, 2, 2]"] * 3, "diagnostics.probe_size": 1,
        "born_dead": [1.0, 0.0, 1.0],
        **{f"dead_fraction/layer_{l}": dead[:, l].astype(float) for l in range(3)},
    })
    r = lu2019.rates(frame).set_index("depth")
    assert list(r["k"]) == [1, 2, 2]
    assert r.loc[3, "theory"] == pytest.approx(theory.born_dead_probability(2, 3))
    assert r.loc[3, "born_dead_flag"] == pytest.approx(2 / 3)
