"""Tests of deadjax.figures and scripts/figures.py on a synthetic results table.

The table is written with ``results.write_part`` exactly as the trainer would:
2 configurations (``optim.learning_rate`` 0.01 and 1.0) x 3 seeds x 5
evaluation steps, with values chosen so that means, minima and maxima can be
recomputed by hand in the tests.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.legend import Legend
from matplotlib.path import Path as MplPath

from deadjax import figures, results

ROOT = Path(__file__).resolve().parents[1]
LRS = (0.01, 1.0)
SEEDS = (0, 1, 2)
STEPS = (0, 10, 20, 30, 40)


def accuracy(lr, seed, step):
    return 0.1 + 0.01 * step * (1 + lr) + 0.05 * seed ** 2


def loss(lr, seed, step):
    return 2.0 / (1 + step) + lr * seed


def dead(layer, lr, seed, step):
    return min(1.0, 0.1 * layer + 0.01 * step * lr + 0.02 * seed)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wd")
    for g, lr in enumerate(LRS):
        for step in STEPS:
            rows = {
                "point": [f"p{g}{s}" for s in SEEDS],
                "group": [f"g{g}"] * len(SEEDS),
                "step": np.full(len(SEEDS), step, np.int64),
                "seed": list(SEEDS),
                "model.activation": ["relu"] * len(SEEDS),
                "optim.learning_rate": [lr] * len(SEEDS),
                "dead_fraction/all": [np.mean([dead(l, lr, s, step) for l in (0, 1)])
                                      for s in SEEDS],
                "dead_fraction/layer_0": [dead(0, lr, s, step) for s in SEEDS],
                "dead_fraction/layer_1": [dead(1, lr, s, step) for s in SEEDS],
                "test/accuracy": [accuracy(lr, s, step) for s in SEEDS],
                "train/loss": [loss(lr, s, step) for s in SEEDS],
            }
            results.write_part(root, f"g{g}", 0, step, pd.DataFrame(rows))
    return root


@pytest.fixture(scope="module")
def frame(workdir):
    return results.load_results(workdir)


def lines_and_bands(ax):
    lines = [l for l in ax.get_lines() if l.get_gid() == "mean"]
    bands = [c for c in ax.collections if c.get_gid() == "band"]
    return lines, bands


def band_edges(band):
    """(x, lower, upper) of a fill_between polygon: per x, the min and max vertex."""
    v = np.concatenate([p.vertices for p in band.get_paths()])
    xs = np.unique(v[:, 0])
    return (xs, np.array([v[v[:, 0] == x, 1].min() for x in xs]),
            np.array([v[v[:, 0] == x, 1].max() for x in xs]))


def caption(fig):
    return " ".join(" ".join(t.get_text() for t in fig.texts).split())


def test_columns(frame):
    assert figures.swept_fields(frame) == ["seed", "model.activation", "optim.learning_rate"]
    assert figures.configuration_fields(frame) == ["optim.learning_rate"]
    assert figures.numeric_swept_fields(frame) == ["optim.learning_rate"]


def test_metric_curves_mean_line_and_minmax_band(frame):
    fig = figures.metric_curves(frame, "test/accuracy")
    ax = fig.axes[0]
    lines, bands = lines_and_bands(ax)
    assert len(lines) == len(LRS) and len(bands) == len(LRS)
    for lr, line, band in zip(LRS, lines, bands):
        per_seed = np.array([[accuracy(lr, s, t) for t in STEPS] for s in SEEDS])
        np.testing.assert_allclose(line.get_xdata(), STEPS)
        np.testing.assert_allclose(line.get_ydata(), per_seed.mean(axis=0), rtol=1e-12)
        xs, lo, hi = band_edges(band)
        np.testing.assert_allclose(xs, STEPS)
        np.testing.assert_allclose(lo, per_seed.min(axis=0), rtol=1e-12)
        np.testing.assert_allclose(hi, per_seed.max(axis=0), rtol=1e-12)
        assert f"learning_rate={lr:g}" in line.get_label() and "n=3" in line.get_label()
    assert "line: mean over seeds; band: min–max over seeds" in caption(fig)


def test_metric_curves_per_point(frame):
    fig = figures.metric_curves(frame, "train/loss", aggregate_seeds=False)
    lines = [l for l in fig.axes[0].get_lines() if l.get_gid() == "point"]
    assert len(lines) == len(LRS) * len(SEEDS)
    assert not fig.axes[0].collections
    np.testing.assert_allclose(lines[0].get_ydata(), [loss(LRS[0], 0, t) for t in STEPS])


def test_metric_curves_by_pools_other_fields(frame):
    fig = figures.metric_curves(frame, "test/accuracy", by=[])
    (line,), (band,) = lines_and_bands(fig.axes[0])
    all_runs = np.array([[accuracy(lr, s, t) for t in STEPS] for lr in LRS for s in SEEDS])
    np.testing.assert_allclose(line.get_ydata(), all_runs.mean(axis=0))
    np.testing.assert_allclose(band_edges(band)[2], all_runs.max(axis=0))
    assert "n=6" in line.get_label()
    assert "mean over seeds, optim.learning_rate (pooled)" in caption(fig)


def test_dead_fraction_by_layer(frame):
    fig = figures.dead_fraction_by_layer(frame)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [
        "dead_fraction/layer_0", "dead_fraction/layer_1", "dead_fraction/all"]
    lines, _ = lines_and_bands(visible[1])
    expected = np.array([[dead(1, LRS[1], s, t) for t in STEPS] for s in SEEDS]).mean(axis=0)
    np.testing.assert_allclose(lines[1].get_ydata(), expected)
    assert "φ'(z_j(x)) = 0 on every probe input" in fig._suptitle.get_text()


def test_final_vs_hyperparameter(frame):
    fig = figures.final_vs_hyperparameter(frame, "test/accuracy", "optim.learning_rate")
    ax = fig.axes[0]
    (line,), (band,) = lines_and_bands(ax)
    final = np.array([[accuracy(lr, s, STEPS[-1]) for s in SEEDS] for lr in LRS])
    np.testing.assert_allclose(line.get_xdata(), LRS)
    np.testing.assert_allclose(line.get_ydata(), final.mean(axis=1))
    xs, lo, hi = band_edges(band)
    np.testing.assert_allclose(lo, final.min(axis=1))
    np.testing.assert_allclose(hi, final.max(axis=1))
    assert ax.get_xscale() == "log"


def test_nonfinite_values_are_left_out(frame):
    broken = frame.copy()
    broken.loc[(broken["point"] == "p00") & (broken["step"] == 40), "train/loss"] = np.inf
    fig = figures.metric_curves(broken, "train/loss")
    lines, _ = lines_and_bands(fig.axes[0])
    assert lines[0].get_ydata()[-1] == pytest.approx(
        np.mean([loss(LRS[0], s, 40) for s in (1, 2)]))


def test_unknown_metric_names_available(frame):
    with pytest.raises(KeyError, match="available: .*test/accuracy"):
        figures.metric_curves(frame, "test/acuracy")


def test_default_figures_write_pngs(workdir, tmp_path):
    paths = figures.default_figures(workdir, tmp_path / "figs")
    names = [p.name for p in paths]
    assert sorted(names[:-1]) == sorted(["test_accuracy.png", "train_loss.png",
                                         "dead_fraction.png",
                                         "final_test_accuracy_vs_optim.learning_rate.png"])
    assert names[-1] == "index.html"
    for p in paths[:-1]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name.startswith(".")]
    assert figures.default_figures(workdir, tmp_path / "bare", index=False)[-1].suffix == ".png"


class IndexParser(HTMLParser):
    """What a reader of index.html sees: images, links, headings, captions,
    the summary table (cell texts and data-value attributes) and every tag."""

    def __init__(self):
        super().__init__()  # convert_charrefs: texts and attributes come unescaped
        self.tags, self.imgs, self.links, self.h2, self.captions = set(), [], [], [], []
        self.header, self.rows = [], []
        self._open, self._text, self._attrs, self._row = None, [], {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(urllib.parse.unquote(attrs["src"]))
        elif tag == "a":
            self.links.append(urllib.parse.unquote(attrs["href"]))
        elif tag == "tr":
            self._row = []
        elif tag in ("h2", "figcaption", "th", "td"):
            self._open, self._text, self._attrs = tag, [], attrs

    def handle_data(self, data):
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == self._open:
            text = "".join(self._text)
            if tag == "h2":
                self.h2.append(text)
            elif tag == "figcaption":
                self.captions.append(text)
            elif tag == "th":
                self.header.append(text)
            else:
                self._row.append((text, self._attrs.get("data-value")))
            self._open = None
        elif tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None


def parse_index(path):
    parser = IndexParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    parser.close()
    return parser


def assert_self_contained(text):
    for needle in ("<script", "<link", "http://", "https://", "src=\"//", "@import", "url("):
        assert needle not in text, needle


def test_index_lists_every_file_and_the_last_rows(workdir, frame, tmp_path):
    out = tmp_path / "figs"
    paths = figures.default_figures(workdir, out, formats=("png", "pdf", "svg"))
    index = paths[-1]
    assert index == out / "index.html"
    files = paths[:-1]
    assert len(files) == 4 * 3
    page = parse_index(index)
    assert_self_contained(index.read_text(encoding="utf-8"))
    # every written file is linked, only those, and each link resolves
    assert sorted(set(page.links)) == sorted(p.name for p in files)
    assert all((out / link).is_file() for link in page.links)
    assert page.imgs == [p.name for p in files if p.suffix == ".png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    # each figure with its title and caption
    assert page.h2[:4] == ["test/accuracy", "train/loss",
                           "dead_fraction/layer_0 · dead_fraction/layer_1 · dead_fraction/all",
                           "final test/accuracy vs optim.learning_rate"]
    assert all("line: mean over seeds; band: min–max over seeds" in c for c in page.captions)
    assert "φ'(z_j(x)) = 0 on every probe input" in page.captions[2]
    # the summary: one row per point at its last step, numbers as in the table
    metrics = ["test/accuracy", "train/loss", "dead_fraction/all"]
    assert page.header == ["point", "seed", "model.activation", "optim.learning_rate",
                           "step", *metrics]
    last = frame[frame["step"] == frame.groupby("point")["step"].transform("max")]
    last = last.sort_values("point")
    assert len(page.rows) == len(last) == len(LRS) * len(SEEDS)
    for row, (_, want) in zip(page.rows, last.iterrows()):
        cells = dict(zip(page.header, row))
        assert cells["point"][0] == want["point"] and cells["model.activation"][0] == "relu"
        assert int(cells["step"][1]) == STEPS[-1]
        lr, seed = float(cells["optim.learning_rate"][1]), int(cells["seed"][1])
        assert (lr, seed) == (want["optim.learning_rate"], want["seed"])
        assert float(cells["test/accuracy"][1]) == accuracy(lr, seed, STEPS[-1])
        assert float(cells["train/loss"][1]) == loss(lr, seed, STEPS[-1])
        for m in metrics:
            text, exact = cells[m]
            assert float(exact) == want[m]                       # exact value
            assert float(text) == float(f"{want[m]:.6g}")        # shown to 6 digits


def test_index_escapes_text_and_takes_each_points_own_last_step(frame, tmp_path):
    odd = frame.copy()
    odd["model.activation"] = '<b>"relu" & co</b>'
    odd = odd[~((odd["point"] == "p01") & (odd["step"] == STEPS[-1]))]  # p01 stopped early
    odd.loc[odd["point"] == "p10", "train/loss"] = np.inf
    fig_path = tmp_path / "a&b c.png"
    fig_path.write_bytes(b"png")
    entry = figures.FigureFiles("<script>alert(1)</script>", "x < y & z", (fig_path,))
    text = figures.index_html([entry], odd, base=tmp_path, title="<i>t</i>")
    assert_self_contained(text)
    parser = IndexParser()
    parser.feed(text)
    assert "script" not in parser.tags and "b" not in parser.tags and "i" not in parser.tags
    assert parser.h2[0] == "<script>alert(1)</script>" and parser.captions == ["x < y & z"]
    assert parser.imgs == ["a&b c.png"] and parser.links == ["a&b c.png", "a&b c.png"]
    cells = {row[0][0]: dict(zip(parser.header, row)) for row in parser.rows}
    assert cells["p00"]["model.activation"][0] == '<b>"relu" & co</b>'
    assert cells["p01"]["step"][0] == str(STEPS[-2])
    assert float(cells["p01"]["test/accuracy"][1]) == accuracy(LRS[0], 1, STEPS[-2])
    assert cells["p10"]["train/loss"] == ("inf", "inf")


def grid_frame(activations, lrs, seeds=SEEDS, steps=STEPS):
    """A results table of len(activations) x len(lrs) configurations: long
    legend labels ("activation=leaky_relu, learning_rate=0.001, n=3")."""
    rows = []
    for i, (act, lr) in enumerate(itertools.product(activations, lrs)):
        for s in seeds:
            for t in steps:
                rows.append({"point": f"p{i:02d}{s}", "group": f"g{i}", "step": t, "seed": s,
                             "model.activation": act, "optim.learning_rate": lr,
                             "dead_fraction/all": dead(0, lr, s, t),
                             "dead_fraction/layer_0": dead(0, lr, s, t),
                             "test/accuracy": accuracy(lr, s, t) / (1 + i),
                             "train/loss": loss(lr, s, t) + 0.1 * i})
    return pd.DataFrame(rows)


def data_points(ax):
    """Display coordinates of every finite data point of the lines (Line2D
    xydata through ax.transData) and bands (PolyCollection path vertices
    through their transform) of ``ax``."""
    pts = [np.empty((0, 2))]
    for line in ax.get_lines():
        xy = np.asarray(line.get_xydata(), float)
        pts.append(ax.transData.transform(xy[np.isfinite(xy).all(axis=1)]))
    for coll in ax.collections:
        for path in coll.get_paths():
            v = path.vertices
            keep = np.isfinite(v).all(axis=1)
            if path.codes is not None:
                keep &= path.codes != MplPath.CLOSEPOLY  # its vertex is a placeholder
            pts.append(coll.get_transform().transform(v[keep]))
    return np.concatenate(pts)


def legend_boxes(fig):
    """Window extents of every legend of ``fig`` and of the "legend omitted" notes."""
    renderer = fig.canvas.get_renderer()
    artists = list(fig.findobj(Legend)) + [t for ax in fig.axes for t in ax.texts
                                           if t.get_gid() == "legend"]
    return [a.get_window_extent(renderer) for a in artists]


def assert_legends_clear(fig):
    """No legend covers a data point or any part of a data area, and every
    legend lies inside the figure (nothing cut off when saved)."""
    fig.draw_without_rendering()  # run the layout, as a save does
    boxes = legend_boxes(fig)
    assert boxes, "figure has no legend to check"
    for box in boxes:
        assert (fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1
                and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1), (box, fig.bbox)
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            pts = data_points(ax)
            assert len(pts) > 0
            covered = ((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1)
                       & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1))
            assert not covered.any(), f"{covered.sum()} data points under the legend"
            # stronger: the whole data area, so no segment between points either
            assert not box.overlaps(ax.bbox), (box, ax.bbox)
    return boxes


@pytest.mark.parametrize("case", ["two", "twelve_long", "sixteen"])
def test_legends_never_cover_data(frame, case):
    table = {"two": frame,
             "twelve_long": grid_frame(["relu", "tanh", "leaky_relu"], [0.001, 0.01, 0.1, 1.0]),
             "sixteen": grid_frame(["relu", "tanh", "leaky_relu", "gelu"],
                                   [0.001, 0.01, 0.1, 1.0])}[case]
    drawn = figures.default_set(table)
    assert {stem for stem, _ in drawn} == {"test_accuracy", "train_loss", "dead_fraction",
                                          "final_test_accuracy_vs_optim.learning_rate"}
    drawn.append(("per_point", figures.metric_curves(table, "train/loss",
                                                     aggregate_seeds=False)))
    for stem, fig in drawn:
        assert_legends_clear(fig)
    if case == "twelve_long":  # 12 two-line entries: taller than the default 4.2 in
        fig = dict(drawn)["test_accuracy"]
        assert fig.get_figheight() > 4.2 and fig.axes[0].get_legend() is not None
        assert len(fig.axes[0].get_legend().get_texts()) == 12
    if case == "sixteen":
        notes = [t.get_text() for t in dict(drawn)["test_accuracy"].axes[0].texts]
        assert notes == ["16 lines\n(legend omitted)"]


def test_legend_check_catches_a_legend_inside_the_axes(frame):
    fig = figures.metric_curves(frame, "test/accuracy")
    fig.axes[0].get_legend().remove()
    fig.axes[0].legend(loc="center")  # where the old loc="best" could land
    with pytest.raises(AssertionError):
        assert_legends_clear(fig)


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "figures.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_missing_metric_and_missing_results(workdir, tmp_path):
    done = run_cli("--workdir", str(workdir), "--out", str(tmp_path / "o"),
                   "--metric", "test/nope")
    assert done.returncode != 0
    assert "metric 'test/nope' is not in the results table" in done.stderr
    assert "test/accuracy" in done.stderr
    assert not (tmp_path / "o").exists()
    empty = run_cli("--workdir", str(tmp_path / "empty"))
    assert empty.returncode != 0 and "holds no results yet" in empty.stderr


def test_cli_writes_default_and_extra_figures(workdir, tmp_path):
    done = run_cli("--workdir", str(workdir), "--out", str(tmp_path / "o"),
                   "--metric", "dead_fraction/layer_0")
    assert done.returncode == 0, done.stderr
    names = {Path(line).name for line in done.stdout.split()}
    assert {"test_accuracy.png", "dead_fraction_layer_0.png"} <= names
    assert all((tmp_path / "o" / n).stat().st_size > 1000 for n in names)


def test_save_writes_each_format_atomically_with_embedded_fonts(frame, tmp_path):
    import matplotlib
    fig = figures.metric_curves(frame, "test/accuracy")
    before = matplotlib.rcParams["pdf.fonttype"]
    paths = figures.save(fig, tmp_path / "final_x_vs_optim.learning_rate.png",
                         formats=("png", "PDF", "svg"))
    assert [p.name for p in paths] == ["final_x_vs_optim.learning_rate.png",
                                       "final_x_vs_optim.learning_rate.pdf",
                                       "final_x_vs_optim.learning_rate.svg"]
    png, pdf, svg = (p.read_bytes() for p in paths)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf[:5] == b"%PDF-"
    # pdf.fonttype 42: TrueType font programs embedded, no Type 3 fonts
    assert b"/FontFile2" in pdf and b"/Subtype /Type3" not in pdf
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    assert matplotlib.rcParams["pdf.fonttype"] == before  # no global state changed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    # same figure, same bytes: vector files carry no date
    assert figures.render(fig, "pdf") == pdf and figures.render(fig, "svg") == svg
    # save_png keeps writing exactly the path it is given
    assert figures.save_png(fig, tmp_path / "plain").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="'gif' are not supported; choose from png, pdf, svg"):
        figures.save(fig, tmp_path / "x", formats=("png", "gif"))


def test_cli_formats_and_index(workdir, tmp_path):
    bad = run_cli("--workdir", str(workdir), "--out", str(tmp_path / "bad"), "--format", "png,gif")
    assert bad.returncode == 2 and "'gif' are not supported; choose from png, pdf, svg" in bad.stderr
    assert not (tmp_path / "bad").exists()
    done = run_cli("--workdir", str(workdir), "--out", str(tmp_path / "o"),
                   "--format", "pdf, svg", "--metric", "dead_fraction/layer_0")
    assert done.returncode == 0, done.stderr
    printed = [Path(line) for line in done.stdout.split()]
    assert printed[-1].name == "index.html"
    assert {p.suffix for p in printed[:-1]} == {".pdf", ".svg"}
    assert {"dead_fraction_layer_0.pdf", "dead_fraction_layer_0.svg"} <= {p.name for p in printed}
    page = parse_index(tmp_path / "o" / "index.html")
    assert sorted(set(page.links)) == sorted(p.name for p in printed[:-1])
    assert page.imgs == [p.name for p in printed if p.suffix == ".svg"]  # SVG shown without PNG
    assert "dead_fraction/layer_0" in page.h2


def test_unit_lifelines_raster_and_death_times_follow_the_events():
    """The raster's matrix is each unit's dead state replayed from its events
    at every evaluation step; the death-time boxes count the units whose first
    death falls in each swept value's points."""
    import pandas as pd
    from deadjax import figures
    steps = [0, 10, 20, 30]
    frame = pd.DataFrame({"point": ["a"] * 4 + ["b"] * 4, "group": "g", "step": steps * 2,
                          "optim.learning_rate": [0.1] * 4 + [1.0] * 4,
                          "dead_fraction/layer_0": 0.0})
    units = pd.DataFrame([("a", "g", 0, 1, 10, "died", False), ("a", "g", 0, 1, 20, "revived", False),
                          ("a", "g", 1, 0, 0, "died", True), ("a", "g", 1, 0, 20, "reset", True),
                          ("b", "g", 0, 2, 30, "died", True)],
                         columns=["point", "group", "layer", "unit", "step", "event", "dead_at_end"])
    matrix = figures.dead_matrix(units, "a", 0, 3, steps)
    np.testing.assert_array_equal(matrix, [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(figures.dead_matrix(units, "a", 1, 2, steps),
                                  [[1, 1, 1, 1], [0, 0, 0, 0]])
    fig = figures.unit_lifelines(units, frame, "a", widths=(3, 2))
    (mesh,) = fig.axes[0].collections[:1]
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(5, 4),
                                  np.concatenate([matrix, [[1, 1, 1, 1], [0, 0, 0, 0]]]))
    fig = figures.death_times(units, frame, "optim.learning_rate")
    assert "0.1: 2, 1: 1" in figures.figure_text(fig, "x")[1]
