"""The GPU-scale plasticity reproduction's pieces (the run itself is for a
GPU; its --quick pipeline is a slow test)."""

import json
import random
import time

import numpy as np
import pytest

from deadjax import data as data_lib, reproductions
from deadjax.reproductions import plasticity_gpu as pg


def test_the_data_are_an_mnist1d_draw_of_the_asked_size(tmp_path):
    np.random.seed(7)
    random.seed(7)
    before = (np.random.random(), random.random())
    np.random.seed(7)
    random.seed(7)
    path = pg.make_data(tmp_path, 500)
    assert (np.random.random(), random.random()) == before  # global generators restored
    with np.load(path) as z:
        assert z["x_train"].shape == (400, 40) and z["x_test"].shape == (100, 40)
        assert z["y_train"].min() >= 0 and z["y_train"].max() <= 9
    assert pg.make_data(tmp_path, 500) == path  # written once

    c = pg.get_config(tmp_path, quick=True)
    c.data.path = str(path)
    d = data_lib.load(c)
    assert d.x_train.shape == (400, 40) and d.num_classes == 10


def test_scale_and_sweep():
    full, quick = pg.settings(False), pg.settings(True)
    assert full["widths"] == (256, 256, 256) and full["tasks"] == 200
    assert full["task_every"] * 32 == 60_000  # one pass of the 60,000 training series
    assert len(pg.get_sweep()) == 5 * 4 + 2 * 4
    assert len(pg.get_sweep(quick=True)) == 5 + 2
    c = pg.get_config("/tmp/x")
    assert c.train.steps == 200 * c.data.task_every and c.train.eval_every == c.data.task_every
    assert c.data.name == "arrays" and c.data.path.endswith("mnist1d_75000.npz")


def test_the_experiment_is_one_population(tmp_path):
    from deadjax import runner
    path = pg.make_data(tmp_path, 500)
    c = pg.get_config(tmp_path)
    c.data.path = str(path)
    points, groups, _ = runner.plan(c, pg.get_sweep(), tmp_path / "work")
    assert len(points) == 28 and len(groups) == 1  # methods and learning rates per member


def test_deadline():
    assert not pg.Deadline(None) and not pg.Deadline(0)
    d = pg.Deadline(0.05)
    assert not d
    time.sleep(0.06)
    assert d


def test_only_some_reproductions_take_a_time_budget(tmp_path):
    with pytest.raises(ValueError, match="time budget.*plasticity_gpu"):
        reproductions.reproduce("mnist1d", quick=True, workdir=tmp_path, figdir=tmp_path,
                                time_budget=5, verbose=False)


@pytest.mark.slow
def test_quick_pipeline_writes_its_summary_and_figure(tmp_path):
    summary = reproductions.reproduce("plasticity_gpu", quick=True, workdir=tmp_path / "runs",
                                      figdir=tmp_path / "figures", verbose=False)
    on_disk = json.loads((tmp_path / "figures" / "summary.json").read_text())
    assert on_disk == summary and len(summary["checks"]) == 4
    assert summary["tasks_done"] == pg.settings(True)["tasks"] and summary["stopped"] is None
    assert set(summary["plain_by_learning_rate"]) == {"0.001", "0.003", "0.01"}
    png = tmp_path / "figures" / "permuted.png"
    assert png.is_file() and png.stat().st_size < 150_000
