"""Paper-style figures drawn from the results table (never from TensorBoard files).

Every function takes the tidy DataFrame of :func:`deadjax.load_results` and
returns a :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state), so
the same calls work in scripts, tests and notebooks.

Aggregation, stated on every figure that uses it:

* a **configuration** is one combination of the swept fields other than
  ``seed`` (DESIGN.md: the swept fields are the columns between
  ``point, group, step`` and the metrics);
* its **line** is the mean over its seeds at each step;
* its **band** is the min–max range over those seeds (with few seeds this is
  the honest spread: every seed lies inside it); ``n`` in the legend is the
  number of seeds (points) of the configuration.

Non-finite values (a diverged member's ``inf``/``NaN`` loss, the ``NaN`` of
``update_ratio`` at step 0) are left out of means and bands at that step.

Legends sit beside the axes, never over data (:func:`_legend`). Writing is
separate from drawing: :func:`save` writes a figure as PNG, PDF (fonts
embedded) and/or SVG, each atomically; :func:`default_figures` writes the
default set and ``index.html`` (:func:`write_index`), which shows every
figure with its caption and :func:`summary_table`.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import textwrap
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import transforms as mtransforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deadjax import results

DPI = 100
BAND_TEXT = "line: mean over seeds; band: min–max over seeds; n = seeds per configuration"
DEAD_DEFINITION = ("dead unit: φ'(z_j(x)) = 0 on every probe input x "
                   "(|φ'| ≤ θ·max|φ'| for diagnostics.dead_threshold θ > 0)")
FINAL_TEXT = "final = value at each point's last evaluated step"
_MAX_LEGEND = 12
_LEGEND_WIDTH = 28  # characters per legend line
_GAP_PT = 6.0  # between the axes and a legend beside them
_PAD_PX = 4.0  # kept free at the figure's edge


# ---------------------------------------------------------------------------
# Columns of the results table
# ---------------------------------------------------------------------------

def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns: ``family/where`` names and the few flat ones (DESIGN.md)."""
    return [c for c in frame.columns if results.is_metric(c)]


def swept_fields(frame: pd.DataFrame) -> list[str]:
    """The swept config fields (dotted names), in table order."""
    metrics = set(metric_columns(frame))
    return [c for c in frame.columns if c not in results.ID_COLUMNS and c not in metrics]


def check_metric(frame: pd.DataFrame, metric: str) -> None:
    """Raises ``KeyError`` with one sentence naming the available metrics."""
    if metric not in frame.columns or metric not in metric_columns(frame):
        raise KeyError(f"metric {metric!r} is not in the results table; available: "
                       f"{', '.join(metric_columns(frame)) or '(none)'}.")


def configuration_fields(frame: pd.DataFrame) -> list[str]:
    """Swept fields that tell configurations apart: all but ``seed``, and only
    those with more than one value (a constant field adds nothing to a label)."""
    return [f for f in swept_fields(frame)
            if f != "seed" and frame[f].nunique(dropna=False) > 1]


# ---------------------------------------------------------------------------
# Aggregation (kept separate from drawing so tests can recompute it)
# ---------------------------------------------------------------------------

def _keys(frame: pd.DataFrame, fields: Sequence[str]) -> list[tuple]:
    if not fields:
        return [()] * len(frame)
    cells = frame[list(fields)].astype(object)
    cells = cells.where(cells.notna(), None)  # NaN != NaN would split one group
    return list(cells.itertuples(index=False, name=None))


def _sort_key(key: tuple) -> tuple:
    """Numbers in numeric order, then everything else by its text."""
    return tuple((0, float(v), "") if isinstance(v, (int, float, np.number))
                 and not isinstance(v, bool) else (1, 0.0, str(v)) for v in key)


def aggregate(frame: pd.DataFrame, metric: str, x: str, fields: Sequence[str]):
    """``[(key, (n_min, n_max), x, mean, lo, hi)]``, one per combination of ``fields``.

    Over the points of each combination (seeds, and any swept field not in
    ``fields``), at each value of column ``x``: mean, min and max of the finite
    values of ``metric``. ``n_min``..``n_max`` is the range over ``x`` of the
    number of points with a row at that ``x`` (equal unless some points stopped
    early).
    """
    values = frame[metric].astype(float).where(np.isfinite(frame[metric].astype(float)))
    work = pd.DataFrame({"_x": frame[x].to_numpy(), "_v": values.to_numpy(),
                         "_point": frame["point"].to_numpy()})
    out = []
    buckets: dict = {}
    for i, key in enumerate(_keys(frame, fields)):
        buckets.setdefault(key, []).append(i)
    for key in sorted(buckets, key=_sort_key):
        sub = work.iloc[buckets[key]]
        by_x = sub.groupby("_x", sort=True)
        stats = by_x["_v"].agg(["mean", "min", "max"])
        counts = by_x["_point"].nunique()
        n = (int(counts.min()), int(counts.max()))
        out.append((key, n, stats.index.to_numpy(),
                    stats["mean"].to_numpy(), stats["min"].to_numpy(),
                    stats["max"].to_numpy()))
    return out


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each point's row at its last evaluated step."""
    return frame.sort_values(["point", "step"], kind="stable").groupby("point").tail(1)


# ---------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------

def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _short_names(fields: Sequence[str]) -> list[str]:
    """Last dotted component, or the full name where that would be ambiguous."""
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return [s if last.count(s) == 1 else f for f, s in zip(fields, last)]


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _label(fields: Sequence[str], key: tuple, n: tuple[int, int]) -> str:
    parts = [f"{name}={_fmt(v)}" for name, v in zip(_short_names(fields), key)]
    count = f"n={n[0]}" if n[0] == n[1] else f"n={n[0]}–{n[1]}"
    return ", ".join(parts + [count])


def _caption(fig: Figure, text: str) -> None:
    """Small text under the axes, wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 20)  # x-small characters per inch, roughly
    lines = textwrap.wrap(text, width)
    fig.text(0.01, 0.005, "\n".join(lines), fontsize="x-small", va="bottom", gid="caption")
    _reserve_layout(fig)


def _reserve_layout(fig: Figure) -> None:
    """Sets the layout's rectangle: above the caption and left of the strip
    that the outside legends (:func:`_legend`) need; again after a resize."""
    lines = sum(t.get_text().count("\n") + 1 for t in fig.texts if t.get_gid() == "caption")
    bottom = (0.13 * lines + 0.05) / fig.get_figheight() if lines else 0.0  # inches -> fraction
    outside = _outside_artists(fig)
    widths = [a.get_window_extent(fig.canvas.get_renderer()).width for a in outside]
    strip = (max(widths) + _GAP_PT * fig.dpi / 72 + _PAD_PX) / fig.bbox.width if widths else 0.0
    fig.get_layout_engine().set(rect=(0, bottom, 1 - strip, 1 - bottom))


def _outside_artists(fig: Figure) -> list:
    """The legends and legend notes that :func:`_legend` put beside the axes."""
    found = []
    for ax in fig.axes:
        for artist in [ax.get_legend(), *ax.texts]:
            if artist is not None and artist.get_gid() == "legend":
                found.append(artist)
    return found


def _legend(ax, count: int) -> None:
    """The legend of ``ax`` outside its data area, so that no line, band or
    marker can lie under it: beside the axes on the right, top-aligned, in a
    strip of the figure that the layout keeps free for it (the axes get
    narrower, the figure keeps its width unless the legend would take more
    than half of it). A legend taller than the panels makes the figure taller
    until it fits above the caption, so nothing is cut off either. Long
    labels wrap at ``_LEGEND_WIDTH`` characters. Beyond ``_MAX_LEGEND`` lines
    a note in the same place says how many there are. Call it last: the fit
    measures the finished figure."""
    fig = ax.figure
    if count <= _MAX_LEGEND:
        handles, labels = ax.get_legend_handles_labels()
        if not handles:
            return
        wrapped = [textwrap.fill(l, _LEGEND_WIDTH, break_long_words=False,
                                 break_on_hyphens=False) for l in labels]
        # Offset in points from the axes' corner, not a fraction of the axes
        # width: a gap that scaled with the axes would move on every draw.
        corner = mtransforms.offset_copy(ax.transAxes, fig=fig, x=_GAP_PT, y=0.0,
                                         units="points")
        artist = ax.legend(handles, wrapped, fontsize="small", loc="upper left",
                           bbox_to_anchor=(1.0, 1.0), bbox_transform=corner,
                           borderaxespad=0.0)
    else:
        artist = ax.annotate(f"{count} lines\n(legend omitted)", (1.0, 1.0),
                             xycoords="axes fraction", xytext=(_GAP_PT, 0.0),
                             textcoords="offset points", ha="left", va="top",
                             fontsize="small")
    artist.set_gid("legend")
    artist.set_in_layout(False)  # its room is the strip _reserve_layout keeps free
    renderer = fig.canvas.get_renderer()
    need = artist.get_window_extent(renderer).width + _GAP_PT * fig.dpi / 72 + _PAD_PX
    if need > 0.5 * fig.bbox.width:
        fig.set_figwidth(2 * need / fig.dpi)
    for _ in range(4):
        _reserve_layout(fig)
        fig.draw_without_rendering()
        floor = fig.get_layout_engine().get()["rect"][1] * fig.bbox.height
        short = floor + _PAD_PX - artist.get_window_extent(renderer).y0
        if short <= 0:
            return
        # the panels grow with the figure, the legend (sized by its fonts) does not
        fig.set_figheight(fig.get_figheight() + short / fig.dpi)


def _aggregation_caption(frame: pd.DataFrame, fields: Sequence[str]) -> str:
    pooled = [f for f in configuration_fields(frame) if f not in fields]
    if not pooled:
        return BAND_TEXT
    over = ", ".join(["seeds"] + pooled)
    return f"line: mean over {over} (pooled); band: min–max over them; n = points per line"


def _draw_bands(ax, groups, fields, markers: bool = False) -> None:
    """One mean line (gid "mean") and one min–max band (gid "band") per group."""
    for key, n, x, mean, lo, hi in groups:
        marker = "o" if markers or len(x) < 12 else None
        (line,) = ax.plot(x, mean, marker=marker, markersize=3,
                          label=_label(fields, key, n), gid="mean")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0,
                        label="_band", gid="band")


def _use_log_x(field: str, xs: np.ndarray) -> bool:
    xs = np.asarray(xs, float)
    xs = xs[np.isfinite(xs)]
    if xs.size == 0 or np.any(xs <= 0):
        return False
    return "learning_rate" in field or xs.max() / xs.min() > 100.0


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def metric_curves(frame: pd.DataFrame, metric: str, *, by: Sequence[str] | None = None,
                  aggregate_seeds: bool = True) -> Figure:
    """``metric`` against training steps.

    With ``aggregate_seeds`` (used when the table has a ``seed`` column): one
    line per configuration (``by``, default every swept field but ``seed``) at
    the mean over its points, with a min–max band; the caption says so and the
    legend gives ``n``. Otherwise one line per point, coloured per point.
    """
    check_metric(frame, metric)
    fig = _figure()
    ax = fig.add_subplot()
    if aggregate_seeds and "seed" in frame.columns:
        fields = list(by) if by is not None else configuration_fields(frame)
        unknown = [f for f in fields if f not in swept_fields(frame)]
        if unknown:
            raise KeyError(f"by names {', '.join(map(repr, unknown))}, not swept fields; "
                           f"swept: {', '.join(swept_fields(frame)) or '(none)'}.")
        groups = aggregate(frame, metric, "step", fields)
        _draw_bands(ax, groups, fields)
        count = len(groups)
        _caption(fig, _aggregation_caption(frame, fields))
    else:
        fields = configuration_fields(frame) + (["seed"] if "seed" in frame.columns else [])
        points = frame.sort_values(["point", "step"], kind="stable").groupby("point", sort=True)
        for point, sub in points:
            key = tuple(sub[fields].iloc[0]) if fields else ()
            label = ", ".join([str(point)] + [f"{n}={_fmt(v)}" for n, v in
                                              zip(_short_names(fields), key)])
            ax.plot(sub["step"], sub[metric].astype(float), label=label, gid="point")
        count = points.ngroups
        _caption(fig, "one line per point (no aggregation)")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    _legend(ax, count)
    return fig


def _layer_columns(frame: pd.DataFrame, family: str = "dead_fraction") -> list[str]:
    def order(col):
        where = col.split("/", 1)[1]
        m = re.fullmatch(r"layer_(\d+)", where)
        return (0, int(m.group(1)), "") if m else (1, math.inf, where)
    return sorted([c for c in frame.columns if c.startswith(family + "/")], key=order)


def dead_fraction_by_layer(frame: pd.DataFrame) -> Figure:
    """Share of dead units per hidden layer over training: one panel per layer
    (``dead_fraction/layer_L``, then ``dead_fraction/all``, pooled over layers),
    one line per configuration at the mean over seeds, min–max band.

    Dead (DESIGN.md, docs/metrics.md): φ'(z_j(x)) = 0 for every probe input x,
    i.e. no gradient reaches the unit's incoming weights (ReLU: z_j(x) ≤ 0).
    """
    columns = _layer_columns(frame)
    if not columns:
        raise KeyError("the results table has no dead_fraction/* columns; available: "
                       f"{', '.join(metric_columns(frame)) or '(none)'}.")
    fields = configuration_fields(frame)
    ncols = min(len(columns), 3)
    nrows = math.ceil(len(columns) / ncols)
    fig = _figure(3.6 * ncols, 3.0 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    groups_count = 0
    for ax, column in zip(axes, columns):
        groups = aggregate(frame, column, "step", fields)
        groups_count = len(groups)
        _draw_bands(ax, groups, fields)
        ax.set_title(column, fontsize="medium")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("dead fraction")
    for ax in axes[-ncols:]:
        ax.set_xlabel("step")
    fig.suptitle(DEAD_DEFINITION, fontsize="small")
    _caption(fig, _aggregation_caption(frame, fields))
    _legend(axes[ncols - 1], groups_count)  # the top-right panel: the legend goes on its right
    return fig


def dead_matrix(units: pd.DataFrame, point: str, layer: int, width: int,
                steps: Sequence[int]) -> np.ndarray:
    """bool ``(width, len(steps))``: unit ``j`` of ``layer`` dead at evaluation
    ``steps[k]``, from the point's lifelines (died/revived events)."""
    out = np.zeros((width, len(steps)), bool)
    steps = list(steps)
    e = units[(units.point == point) & (units.layer == layer) & (units.event != "reset")]
    for unit, rows in e.groupby("unit"):
        state, idx = False, 0
        changes = list(zip(rows.step, rows.event))
        for k, step in enumerate(steps):
            while idx < len(changes) and changes[idx][0] <= step:
                state = changes[idx][1] == "died"
                idx += 1
            out[int(unit), k] = state
    return out


def unit_lifelines(units: pd.DataFrame, frame: pd.DataFrame, point: str,
                   widths: Sequence[int]) -> Figure:
    """One member's units against the evaluation steps: a row per hidden unit
    (grouped by layer, layer 0 at the top), a column per evaluation, dark
    where the unit is dead; remedies' resets as marks at their steps. Drawn
    from ``deadjax.load_units``, the results table (the evaluation steps) and
    the member's ``model.widths``."""
    rows = frame[frame.point == point].sort_values("step")
    if rows.empty:
        raise KeyError(f"point {point!r} is not in the results table.")
    steps = rows.step.tolist()
    widths = [int(w) for w in widths]
    layers = list(range(len(widths)))
    mine = units[units.point == point]
    matrix = np.concatenate([dead_matrix(units, point, l, w, steps)
                             for l, w in zip(layers, widths)])
    fig = _figure(6.4, 1.2 + 0.02 * max(matrix.shape[0], 50))
    ax = fig.subplots()
    edges = np.concatenate([[steps[0] - 0.5], (np.asarray(steps[:-1]) + np.asarray(steps[1:]))
                            / 2, [steps[-1] + 0.5]]) if len(steps) > 1 else \
        np.asarray([steps[0] - 0.5, steps[0] + 0.5])
    ax.pcolormesh(edges, np.arange(matrix.shape[0] + 1), matrix, cmap="Greys", vmin=0, vmax=1,
                  shading="flat")
    offsets = np.concatenate([[0], np.cumsum(widths)])
    for b in offsets[1:-1]:
        ax.axhline(b, color="tab:blue", linewidth=0.8)
    resets = mine[mine.event == "reset"]
    if len(resets):
        y = offsets[resets.layer.to_numpy()] + resets.unit.to_numpy() + 0.5
        ax.scatter(resets.step, y, s=6, color="tab:orange", marker="|", label="reset")
    ax.set_yticks((offsets[:-1] + offsets[1:]) / 2, [f"layer {l}" for l in layers])
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.set_title(f"unit lifelines of {point}", fontsize="medium")
    _caption(fig, "dark: dead at that evaluation (" + DEAD_DEFINITION + ")"
             + ("; orange marks: resets by the remedy" if len(resets) else ""))
    return fig


def death_times(units: pd.DataFrame, frame: pd.DataFrame, field: str) -> Figure:
    """The distribution of the step of each unit's first death (units that
    die at initialisation included, at step 0), per value of a swept
    ``field``: a box per value over every unit of every point with it."""
    first = units[units.event == "died"].groupby(["point", "layer", "unit"]).step.min()
    values = frame.drop_duplicates("point").set_index("point")[field]
    data = first.reset_index().assign(value=lambda d: d.point.map(values))
    keys = sorted(data.value.dropna().unique(), key=lambda v: _sort_key((v,)))
    fig = _figure()
    ax = fig.subplots()
    boxes = [data[data.value == k].step.to_numpy() for k in keys]
    if boxes:
        ax.boxplot(boxes, showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), [_fmt(k) for k in keys])
    ax.set_xlabel(field)
    ax.set_ylabel("step of first death")
    counts = ", ".join(f"{_fmt(k)}: {len(b)}" for k, b in zip(keys, boxes))
    ax.set_title(f"time of death by {field}", fontsize="medium")
    _caption(fig, f"units that died, per value ({counts}); " + DEAD_DEFINITION)
    return fig


def final_vs_hyperparameter(frame: pd.DataFrame, metric: str, field: str) -> Figure:
    """``metric`` at each point's last step against the swept ``field``.

    One line per combination of the other swept fields (``seed`` excluded):
    mean over seeds with a min–max band. Log x-axis for
    learning rates and whenever the positive values span more than two decades.
    """
    check_metric(frame, metric)
    if field not in swept_fields(frame):
        raise KeyError(f"field {field!r} is not a swept field of the results table; "
                       f"swept: {', '.join(swept_fields(frame)) or '(none)'}.")
    last = final_rows(frame)
    fields = [f for f in configuration_fields(frame) if f != field]
    groups = aggregate(last, metric, field, fields)
    fig = _figure()
    ax = fig.add_subplot()
    _draw_bands(ax, groups, fields, markers=True)
    if _use_log_x(field, last[field]):
        ax.set_xscale("log")
    ax.set_xlabel(field)
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"final {metric} vs {field}")
    ax.grid(alpha=0.3)
    _caption(fig, f"{FINAL_TEXT}; {_aggregation_caption(frame, fields + [field])}")
    _legend(ax, len(groups))
    return fig


# ---------------------------------------------------------------------------
# The default set
# ---------------------------------------------------------------------------

FORMATS = ("png", "pdf", "svg")
# Vector output a paper can use: TrueType (Type 42) fonts embedded in PDFs, so
# journals' checks pass and text stays selectable; SVG text as paths, so it
# looks the same without the fonts installed. No dates and a fixed hash salt:
# the same figure gives the same bytes on every run (diffs stay quiet).
_VECTOR_RC = {"pdf.fonttype": 42, "svg.fonttype": "path", "svg.hashsalt": "deadjax"}
_VECTOR_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """``formats`` lower-cased, duplicates dropped; ``ValueError`` with one
    sentence for an empty list or a format other than png, pdf, svg."""
    out = tuple(dict.fromkeys(str(f).strip().lower() for f in formats))
    unknown = [f for f in out if f not in FORMATS]
    if unknown or not out:
        raise ValueError(f"figure formats {', '.join(map(repr, unknown)) or '(none)'} "
                         f"are not supported; choose from {', '.join(FORMATS)}.")
    return out


def render(fig: Figure, fmt: str, colors: int | None = None) -> bytes:
    """The bytes of ``fig`` as ``fmt`` (png at :data:`DPI`; pdf with embedded
    TrueType fonts, ``pdf.fonttype`` 42; svg with text as paths). The rc
    settings hold only for this save (``rc_context``), so no global state
    changes. ``colors`` reduces a PNG to that many palette colours."""
    (fmt,) = check_formats([fmt])
    buf = io.BytesIO()
    if fmt == "png":
        fig.savefig(buf, format="png", dpi=DPI)
        if colors:
            from PIL import Image  # matplotlib's own dependency
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
            buf = io.BytesIO()
            image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(
                buf, format="PNG", optimize=True)
    else:
        with matplotlib.rc_context(_VECTOR_RC):
            fig.savefig(buf, format=fmt, dpi=DPI, metadata=_VECTOR_METADATA[fmt])
    return buf.getvalue()


def save_png(fig: Figure, path, colors: int | None = None) -> Path:
    """Writes ``fig`` as PNG to ``path`` through a temporary file and a rename;
    ``colors``: reduced to that many palette colours (a busy figure with
    hundreds of anti-aliased lines shrinks ~3x, for figures kept in git)."""
    path = Path(path)
    results.atomic_write_bytes(path, render(fig, "png", colors))
    return path


def format_path(path, fmt: str) -> Path:
    """``path`` with the suffix of ``fmt``: a known figure suffix (.png, .pdf,
    .svg) is replaced, anything else kept (``final_x_vs_optim.learning_rate``
    -> ``final_x_vs_optim.learning_rate.pdf``)."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") in FORMATS:
        path = path.with_suffix("")
    return path.with_name(f"{path.name}.{fmt}")


def save(fig: Figure, path, formats: Sequence[str] = ("png",),
         colors: int | None = None) -> list[Path]:
    """Writes ``fig`` once per format beside ``path`` (``out/test_accuracy.png``
    or ``out/test_accuracy`` -> ``out/test_accuracy.png``, ``.pdf``, ``.svg``),
    each through a temporary file and a rename, and returns the paths in the
    order of ``formats``. See :func:`render` for what each format holds;
    ``colors`` applies to the PNG only."""
    written = []
    for fmt in check_formats(formats):
        target = format_path(path, fmt)
        results.atomic_write_bytes(target, render(fig, fmt, colors))
        written.append(target)
    return written


def file_stem(name: str) -> str:
    """``test/accuracy`` -> ``test_accuracy`` (file-name safe, dots kept)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def headline_metric(frame: pd.DataFrame) -> str | None:
    """The first of test/accuracy, val/accuracy, train/accuracy, test/loss,
    train/loss present in the table."""
    for name in ("test/accuracy", "val/accuracy", "train/accuracy", "test/loss",
                 "train/loss"):
        if name in frame.columns:
            return name
    return None


def numeric_swept_fields(frame: pd.DataFrame) -> list[str]:
    """Swept fields other than ``seed`` with numeric (not boolean) values and
    more than one distinct value."""
    out = []
    for f in swept_fields(frame):
        col = frame[f]
        if (f != "seed" and pd.api.types.is_numeric_dtype(col)
                and not pd.api.types.is_bool_dtype(col) and col.nunique() > 1):
            out.append(f)
    return out


def default_set(frame: pd.DataFrame, metrics: Sequence[str] = (),
                units: pd.DataFrame | None = None,
                widths: dict | None = None) -> list[tuple[str, Figure]]:
    """The figures a researcher wants first, as ``(file stem, Figure)`` pairs,
    without writing anything.

    ``<headline>`` (test/accuracy, else the first of val/accuracy,
    train/accuracy, test/loss), ``train_loss``, ``dead_fraction`` when
    ``dead_fraction/*`` columns exist, ``final_<headline>_vs_<field>`` per
    numeric swept field other than seed with more than one value, then one
    curve per extra metric of ``metrics`` not drawn already; with the unit
    lifelines (``units``, and ``widths``: point -> its ``model.widths``),
    ``units_<point>`` for the sweep's first point and
    ``death_times_vs_<field>`` per swept field other than seed.
    """
    for metric in metrics:
        check_metric(frame, metric)
    headline = headline_metric(frame)
    drawn = []
    curves = [m for m in (headline, "train/loss") if m is not None and m in frame.columns]
    for metric in dict.fromkeys(curves):
        drawn.append((file_stem(metric), metric_curves(frame, metric)))
    if _layer_columns(frame):
        drawn.append(("dead_fraction", dead_fraction_by_layer(frame)))
    if headline is not None:
        for field in numeric_swept_fields(frame):
            drawn.append((f"final_{file_stem(headline)}_vs_{file_stem(field)}",
                          final_vs_hyperparameter(frame, headline, field)))
    for metric in dict.fromkeys(metrics):
        if metric not in curves:
            drawn.append((file_stem(metric), metric_curves(frame, metric)))
    if units is not None and len(units) and widths:
        first = sorted(frame.point.unique())[0]
        drawn.append((f"units_{file_stem(first)}",
                      unit_lifelines(units, frame, first, widths[first])))
        for field in [f for f in configuration_fields(frame)]:
            drawn.append((f"death_times_vs_{file_stem(field)}", death_times(units, frame, field)))
    return drawn


def default_figures(workdir, out_dir=None, *, formats: Sequence[str] = ("png",),
                    metrics: Sequence[str] = (), index: bool = True) -> list[Path]:
    """Writes :func:`default_set` (plus one curve per extra metric of
    ``metrics``) into ``out_dir`` (default ``workdir/figures``), one file per
    format of ``formats`` (png, pdf, svg), then, with ``index``, ``index.html``
    (:func:`write_index`), and returns the paths written, the index last.
    Unknown formats or metrics stop before anything is written.
    """
    frame = results.load_results(workdir)
    formats = check_formats(formats)
    try:
        units = results.load_units(workdir)
        resolved = results.resolved_fields(workdir).set_index("point")["model.widths"]
        widths = {p: json.loads(w) for p, w in resolved.items()}
    except FileNotFoundError:
        units, widths = None, None
    drawn = default_set(frame, metrics, units, widths)  # draws (and checks) before writing
    out = Path(out_dir) if out_dir is not None else Path(workdir) / "figures"
    written, entries = [], []
    for stem, fig in drawn:
        paths = save(fig, out / stem, formats)
        written += paths
        entries.append(FigureFiles(*figure_text(fig, stem), tuple(paths)))
    if index:
        source = Path(workdir) / results.RESULTS
        written.append(write_index(out, entries, frame,
                                   title=f"Figures of {Path(workdir).resolve().name}",
                                   source=str(source)))
    return written


# ---------------------------------------------------------------------------
# index.html: every figure written, with its caption, and the summary table
# ---------------------------------------------------------------------------

SUMMARY_METRICS = ("test/accuracy", "test/loss", "train/loss", "dead_fraction/all",
                   "diverged")


@dataclass(frozen=True)
class FigureFiles:
    """One figure as the index shows it: its title, its caption and the files
    written for it (one per format)."""
    title: str
    caption: str
    paths: tuple[Path, ...]


def figure_text(fig: Figure, default: str = "") -> tuple[str, str]:
    """``(title, caption)`` of a figure drawn here: the titles of its visible
    axes joined by " · " (else its suptitle, else ``default``), and its
    caption lines unwrapped, after the suptitle when the title did not use it."""
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    suptitle = fig.get_suptitle()
    title = " · ".join(titles) or suptitle or default
    parts = [suptitle] if titles and suptitle else []
    parts += [" ".join(t.get_text().split()) for t in fig.texts if t.get_gid() == "caption"]
    return title, ". ".join(parts)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per point at its last evaluated step (:func:`final_rows`):
    ``point``, the swept fields, ``step``, then the headline metric and those
    of :data:`SUMMARY_METRICS` that the table has."""
    metrics = [m for m in dict.fromkeys([headline_metric(frame), *SUMMARY_METRICS])
               if m is not None and m in frame.columns]
    columns = ["point", *swept_fields(frame), "step", *metrics]
    return final_rows(frame)[columns].reset_index(drop=True)


def _html_cell(value) -> tuple[str, str | None]:
    """(text shown, exact value for ``data-value``) of one table cell. Floats
    show 6 significant digits; ``data-value`` holds their shortest exact repr."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), None
    if isinstance(value, (int, np.integer)):
        return str(int(value)), str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return (f"{v:.6g}" if math.isfinite(v) else repr(v)), repr(v)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "", None
    return str(value), None


_INDEX_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
figure { margin: 2em 0; border-top: 1px solid #ddd; padding-top: 1em; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #444; }
.files a { margin-right: 0.8em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
"""


def _href(path: Path, base: Path) -> str:
    rel = Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
    return html.escape(urllib.parse.quote(rel), quote=True)


def index_html(entries: Sequence[FigureFiles], frame: pd.DataFrame, *, base: Path,
               title: str = "Figures", source: str = "") -> str:
    """The text of ``index.html``: every figure of ``entries`` (a PNG shown as
    ``<img>``, else an SVG; every file linked by its format), its title and
    caption, then :func:`summary_table`. Self-contained (inline CSS, no script,
    nothing fetched from the network); file links are relative to ``base``;
    every text is escaped with ``html.escape``."""
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    table = summary_table(frame)
    steps = frame["step"]
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title>", f"<style>{_INDEX_CSS}</style>", "</head>", "<body>",
           f"<h1>{e(title)}</h1>",
           f"<p>{frame['point'].nunique()} points, {len(frame)} rows, steps "
           f"{int(steps.min())}–{int(steps.max())}"
           + (f"; drawn from <code>{e(source)}</code>" if source else "") + ".</p>"]
    out.append('<section id="figures">')
    for entry in entries:
        by_format = {p.suffix.lstrip(".").lower(): p for p in entry.paths}
        shown = by_format.get("png") or by_format.get("svg")
        out.append("<figure>")
        out.append(f"<h2>{e(entry.title)}</h2>")
        if shown is not None:
            out.append(f'<a href="{_href(shown, base)}"><img src="{_href(shown, base)}" '
                       f'alt="{e(entry.title)}"></a>')
        out.append(f"<figcaption>{e(entry.caption)}</figcaption>")
        links = " ".join(f'<a href="{_href(p, base)}">{e(fmt.upper())}</a>'
                         for fmt, p in by_format.items())
        out.append(f'<p class="files">files: {links}</p>')
        out.append("</figure>")
    out.append("</section>")
    out.append('<section id="summary">')
    out.append("<h2>Summary: each point at its last evaluated step</h2>")
    out.append('<div class="scroll"><table>')
    out.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns)
               + "</tr></thead>")
    out.append("<tbody>")
    for row in table.itertuples(index=False, name=None):
        cells = []
        for value in row:
            text, exact = _html_cell(value)
            if exact is None:
                cells.append(f"<td>{e(text)}</td>")
            else:
                cells.append(f'<td class="num" data-value="{e(exact)}">{e(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    out.append("<p>Floats show 6 significant digits; each number cell's "
               "<code>data-value</code> attribute holds its exact value.</p>")
    out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def write_index(out_dir, entries: Sequence[FigureFiles], frame: pd.DataFrame, *,
                title: str = "Figures", source: str = "") -> Path:
    """Writes :func:`index_html` to ``out_dir/index.html`` through a temporary
    file and a rename, and returns its path."""
    path = Path(out_dir) / "index.html"
    results.atomic_write_text(path, index_html(entries, frame, base=Path(out_dir),
                                               title=title, source=source))
    return path
