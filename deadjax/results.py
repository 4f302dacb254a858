"""The results table: one row per (point, evaluation step), written so nothing is lost.

``DIR/results.parquet`` is a folder of parquet parts, one per group, chunk and
evaluation step (``results.parquet/<group>/<chunk>/step_<step>.parquet``).
Each part is written to a temporary name and renamed into place, so a kill at
any moment leaves only whole parts; a part written again after a resume has
the same name and replaces the old one, so no row is ever duplicated.
:func:`load_results` joins the parts into one tidy DataFrame.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import ml_collections
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from deadjax import config as config_lib
from deadjax.errors import DamagedFile
from deadjax.locks import HOST, process_alive

RESULTS = "results.parquet"
ID_COLUMNS = ("point", "group", "step")
# When the evaluation's rows were written (seconds since the epoch): in every
# part; load_results(..., fields="all") shows it.
TIME_COLUMN = "wall_time"
# Metric columns whose names have no "family/where" slash (DESIGN.md).
FLAT_METRICS = ("diverged", "diverged_step", "output_constant", "born_dead",
                "grad_norm_ratio", "grad_norm_ratio_undefined", "task")


def is_metric(column: str) -> bool:
    """Whether a results-table column is a metric (else an id or a swept field)."""
    return column not in ID_COLUMNS and ("/" in column or column in FLAT_METRICS)




def _temporary(path: Path) -> Path:
    """The temporary name a write to ``path`` goes through: hidden, and naming
    the host and process that write it (so a later run can tell a dead
    writer's leftovers from a live one's)."""
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale_temporaries(root) -> list[Path]:
    """Removes, under ``root``, the temporary files of writes cut short by a
    kill: those of this host whose process is gone (another host's are left
    to it). Returns what was removed."""
    removed = []
    for tmp in Path(root).rglob(".*.tmp-*"):
        host, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")
        if host in (HOST, "") and pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def part_path(workdir, group: str, chunk: int, step: int) -> Path:
    return Path(workdir) / RESULTS / group / f"chunk_{chunk:04d}" / f"step_{step:09d}.parquet"


def rows_for_evaluation(points: Sequence, step: int, scalars: Mapping[str, np.ndarray],
                        swept_fields: Sequence[str]) -> pd.DataFrame:
    """The rows of one evaluation: ``points`` are the chunk's real members in
    order; ``scalars`` map metric names to arrays whose first axis covers at
    least those members (padding members come after and are dropped)."""
    n = len(points)
    columns: dict = {
        "point": [p.id for p in points],
        "group": [p.group for p in points],
        "step": np.full(n, step, np.int64),
        TIME_COLUMN: np.full(n, time.time(), np.float64),
    }
    for field in swept_fields:
        columns[field] = [_cell(p.values.get(field)) for p in points]
    for name in sorted(scalars):
        columns[name] = np.asarray(scalars[name])[:n].astype(np.float64)
    return pd.DataFrame(columns)


def _cell(value):
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return value


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_part(workdir, group: str, chunk: int, step: int, frame: pd.DataFrame) -> Path:
    return atomic_write_parquet(part_path(workdir, group, chunk, step), frame)


HISTOGRAMS = "histograms.parquet"


def write_histograms(workdir, group: str, chunk: int, step: int, points: Sequence,
                     hists: Mapping[str, tuple]) -> Path:
    """One part of ``DIR/histograms.parquet``: per point and histogram name
    (``preact/layer_0``, ``activation/layer_0``, ``delta/layer_0``), the
    compact fixed-bin form ``lo, hi, counts`` (counts over ``num_bins`` equal
    bins of [lo, hi]; docs/metrics.md)."""
    rows = {"point": [], "step": [], "name": [], "lo": [], "hi": [], "counts": []}
    for name in sorted(hists):
        lo, hi, counts = (np.asarray(a) for a in hists[name])
        for i, p in enumerate(points):
            rows["point"].append(p.id)
            rows["step"].append(step)
            rows["name"].append(name)
            rows["lo"].append(float(lo[i]))
            rows["hi"].append(float(hi[i]))
            rows["counts"].append(counts[i].astype(np.int64))
    path = Path(workdir) / HISTOGRAMS / group / f"chunk_{chunk:04d}" / f"step_{step:09d}.parquet"
    return atomic_write_parquet(path, pd.DataFrame(rows))


def load_histograms(workdir) -> pd.DataFrame:
    """Every stored histogram: columns point, step, name, lo, hi, counts."""
    parts = sorted((Path(workdir) / HISTOGRAMS).glob("*/chunk_*/step_*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{Path(workdir) / HISTOGRAMS} holds no histograms.")
    frame = pd.concat([read_part(p) for p in parts], ignore_index=True)
    return frame.sort_values(["point", "step", "name"], kind="stable").reset_index(drop=True)


class DamagedPartWarning(UserWarning):
    """A results part could not be read and was left out."""


def _damaged(path: Path, e: BaseException) -> DamagedFile:
    cause = " ".join(f"{type(e).__name__}: {e}".split())[:200]
    return DamagedFile(f"The results part {path} is damaged ({cause}); rerun the sweep's "
                       "command to rewrite it, or load with on_damaged='skip' to leave it "
                       "out.")


def read_part(path: Path) -> pd.DataFrame:
    """One parquet part; :class:`DamagedFile` naming it when it cannot be read."""
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise _damaged(path, e) from None


def part_is_readable(path: Path) -> bool:
    """Whether a part's parquet footer and schema read back (cheap: no rows)."""
    try:
        pq.read_metadata(path)
        pq.read_schema(path)
        return True
    except Exception:  # noqa: BLE001
        return False


def chunk_parts(workdir, group: str, chunk: int, table: str = RESULTS) -> dict[int, Path]:
    """``{step: path}`` of one chunk's parts of ``table``."""
    folder = Path(workdir) / table / group / f"chunk_{chunk:04d}"
    out = {}
    for path in folder.glob("step_*.parquet") if folder.is_dir() else ():
        out[int(path.stem.split("_")[1])] = path
    return out


def move_aside(path: Path) -> Path:
    """Moves a damaged part to ``<table>.damaged/`` (kept for inspection, never
    loaded); returns where."""
    path = Path(path)
    table_root = path.parents[2]
    dest = (table_root.with_name(table_root.name + ".damaged") / path.parent.parent.name
            / path.parent.name / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    return dest


def chunks_of_points(workdir) -> dict[str, tuple[str, int]]:
    """``{point: (group, chunk)}`` as the results table records them (one part
    per chunk is read, its ``point`` column only): what ``points.jsonl``
    holds, for repairing it."""
    out: dict[str, tuple[str, int]] = {}
    root = Path(workdir) / RESULTS
    for folder in sorted(root.glob("*/chunk_*")) if root.is_dir() else ():
        for path in sorted(folder.glob("step_*.parquet")):
            try:
                points = pq.read_table(path, columns=["point"]).column("point").to_pylist()
            except Exception:  # noqa: BLE001 - a damaged part: try the next one
                continue
            for p in points:
                out[p] = (folder.parent.name, int(folder.name.split("_")[1]))
            break
    return out


def resolved_fields(workdir) -> pd.DataFrame:
    """One row per point of a workdir: ``point`` and every config field as the
    point ran it (the workdir's ``config.json`` with the point's overrides from
    ``points.jsonl``), tuples as JSON lists like swept cells."""
    workdir = Path(workdir)
    record = json.loads((workdir / "config.json").read_text())
    rows = []
    for line in (workdir / "points.jsonl").read_text().splitlines():
        try:
            point = json.loads(line)
        except ValueError:
            continue
        cfg = config_lib.default_config()
        for name, value in config_lib.flatten(ml_collections.ConfigDict(record["config"])).items():
            _set_quietly(cfg, name, value)
        for name, value in point.get("overrides", {}).items():
            _set_quietly(cfg, name, value)
        rows.append({"point": point["point"],
                     **{k: _cell(v) for k, v in config_lib.flatten(cfg).items()}})
    return pd.DataFrame(rows)


def _set_quietly(cfg, name, value) -> None:
    try:
        config_lib.set_field(cfg, name, value)
    except Exception:  # noqa: BLE001 - a field this version no longer has
        pass


def _read_parts(root: Path, on_damaged: str) -> list:
    """Every ``<group>/chunk_*/step_*.parquet`` part under ``root``, read; a
    damaged one raises :class:`DamagedFile` (``on_damaged="raise"``) or is
    left out with a :class:`DamagedPartWarning` (``"skip"``)."""
    frames = []
    for path in sorted(root.glob("*/chunk_*/step_*.parquet")) if root.exists() else []:
        try:
            frames.append(read_part(path))
        except DamagedFile as e:
            if on_damaged == "raise":
                raise
            warnings.warn(str(e), DamagedPartWarning, stacklevel=3)
    return frames


def load_results(workdir, on_damaged: str = "raise", fields: str = "swept") -> pd.DataFrame:
    """The results table of a workdir as one tidy DataFrame, sorted by point and step.

    Columns: ``point``, ``group``, ``step``, every swept field under its dotted
    name, then the metrics (DESIGN.md names). ``fields="all"`` adds
    ``wall_time`` (when each evaluation's rows were written, seconds since the
    epoch) and every config field as each point ran it (static ones included:
    ``model.widths``, ``model.activation``, ...), so the frames of two
    workdirs concatenate and compare. Parts of several job-array tasks or
    resumed runs are merged; a row appears once. A part that cannot be read
    raises :class:`deadjax.errors.DamagedFile` naming it
    (``on_damaged="raise"``), or is left out with a
    :class:`DamagedPartWarning` (``"skip"``); rerunning the sweep's command
    rewrites it.
    """
    if on_damaged not in ("raise", "skip"):
        raise ValueError(f"on_damaged = {on_damaged!r} is not allowed; choose 'raise' or 'skip'.")
    if fields not in ("swept", "all"):
        raise ValueError(f"fields = {fields!r} is not allowed; choose 'swept' or 'all'.")
    root = Path(workdir) / RESULTS
    if root.is_file():
        return read_part(root)
    if not (root.exists() and any(root.glob("*/chunk_*/step_*.parquet"))):
        raise FileNotFoundError(f"{root} holds no results yet: run scripts/sweep.py "
                                f"--workdir {workdir} first.")
    frames = _read_parts(root, on_damaged)
    if not frames:
        raise FileNotFoundError(f"{root} holds no readable results.")
    frame = pd.concat(frames, ignore_index=True, sort=False)
    frame = frame.drop_duplicates(subset=["point", "step"], keep="last")
    head = [c for c in ID_COLUMNS if c in frame.columns]
    metric_cols = [c for c in frame.columns if is_metric(c)]
    swept = [c for c in frame.columns
             if c not in head and c not in metric_cols and c != TIME_COLUMN]
    if fields == "all":
        resolved = resolved_fields(workdir)
        extra = [c for c in resolved.columns if c != "point" and c not in swept]
        frame = frame.merge(resolved[["point"] + extra], on="point", how="left")
        times = [TIME_COLUMN] if TIME_COLUMN in frame.columns else []
        frame = frame[head + times + sorted(swept + extra) + sorted(metric_cols)]
    else:
        frame = frame[head + swept + sorted(metric_cols)]
    return frame.sort_values(["point", "step"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------
# Unit lifelines
# --------------------------------------------------------------------------

UNITS = "units.parquet"
EVENTS = ("died", "revived", "reset")


class Lifelines:
    """The host's record of one chunk's units between evaluations, turning
    each evaluation's dead masks into events (docs/metrics.md, "Unit
    lifelines"): a unit **died** at the first evaluation that sees it dead
    (step 0 for one dead at initialisation) and again at each later one after
    a revival; it **revived** at the first evaluation that sees it alive after
    being dead; it was **reset** at the step of its last reset by a remedy
    since the previous evaluation (``interventions.*``; several resets in one
    interval are one event)."""

    def __init__(self, members: Sequence):
        self.members = list(members)
        self.dead: list | None = None       # per layer, bool (members, width)
        self.step = -1                      # the previous evaluation's step

    def resume(self, step: int, state) -> None:
        """Continues from a restored state (its dead masks of ``step``)."""
        if bool(np.asarray(state.has_prev).all()):
            self.dead = [np.asarray(d, bool) for d in state.prev_dead]
        self.step = int(step)

    def events(self, step: int, units: Mapping) -> pd.DataFrame:
        """The events between the previous evaluation and this one (``units``:
        the program's ``tables["units"]``, arrays with a member axis)."""
        n = len(self.members)
        dead = [np.asarray(d, bool)[:n] for d in units["dead"]]
        ids = np.asarray([p.id for p in self.members], dtype=object)
        parts: dict = {"point": [], "layer": [], "unit": [], "step": [], "event": []}

        def add(mask, event, steps=None):
            m, u = np.nonzero(mask)
            parts["point"].append(ids[m])
            parts["layer"].append(np.full(len(m), layer, np.int32))
            parts["unit"].append(u.astype(np.int32))
            parts["step"].append(steps[m, u].astype(np.int64) if steps is not None
                                 else np.full(len(m), step, np.int64))
            parts["event"].append(np.full(len(m), event, dtype=object))

        for layer, now in enumerate(dead):
            before = self.dead[layer] if self.dead is not None else np.zeros_like(now)
            add(now & ~before, "died")
            add(before & ~now, "revived")
            if "last_reset" in units:
                last = np.asarray(units["last_reset"][layer])[:n]
                add((last > self.step) & (last <= step), "reset", last)
        self.dead, self.step = dead, int(step)
        frame = pd.DataFrame({k: np.concatenate(v) if v else [] for k, v in parts.items()})
        return frame.astype({"point": str, "layer": np.int32, "unit": np.int32,
                             "step": np.int64, "event": str})


def write_units(workdir, group: str, chunk: int, step: int, events: pd.DataFrame) -> Path:
    """One part of ``DIR/units.parquet`` (written also when empty, so a
    rewritten step replaces it whole)."""
    path = Path(workdir) / UNITS / group / f"chunk_{chunk:04d}" / f"step_{step:09d}.parquet"
    return atomic_write_parquet(path, events.assign(group=group))


def load_units(workdir, on_damaged: str = "raise") -> pd.DataFrame:
    """The unit lifelines of a workdir: one row per (point, layer, unit,
    event), columns ``point, group, layer, unit, step, event`` (``died``,
    ``revived``, ``reset``) and ``dead_at_end`` (whether the unit is dead at
    the point's last evaluation), sorted by point, layer, unit and step (a
    unit's death at a step comes before a reset at the same step: the
    evaluation measures the state before a remedy acts)."""
    root = Path(workdir) / UNITS
    if not (root.exists() and any(root.glob("*/chunk_*/step_*.parquet"))):
        raise FileNotFoundError(f"{root} holds no unit lifelines: they are written at "
                                "evaluations with diagnostics on.")
    frames = _read_parts(root, on_damaged)
    frame = pd.concat(frames, ignore_index=True).drop_duplicates()
    order = {e: i for i, e in enumerate(EVENTS)}
    frame = frame.assign(_o=frame.event.map(order)).sort_values(
        ["point", "layer", "unit", "step", "_o"], kind="stable").drop(columns="_o")
    last = frame[frame.event != "reset"].groupby(["point", "layer", "unit"]).event.last()
    dead_at_end = (last == "died").rename("dead_at_end").reset_index()
    frame = frame.merge(dead_at_end, on=["point", "layer", "unit"], how="left")
    frame["dead_at_end"] = frame["dead_at_end"].fillna(False).astype(bool)
    cols = ["point", "group", "layer", "unit", "step", "event", "dead_at_end"]
    return frame[cols].reset_index(drop=True)
