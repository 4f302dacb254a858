"""TensorBoard summaries of a sweep, written with the ``tensorboard`` package alone.

No TensorFlow: events are written with tensorboard's own record framing
(``tensorboard.summary.writer.record_writer.RecordWriter``, the TFRecord
format ``EventFileWriter`` writes) from its protos
(``tensorboard.compat.proto``: ``Event``, ``Summary``, ``HistogramProto``,
``SessionLog``) and the hparams plugin's pure-proto
helpers (``tensorboard.plugins.hparams.summary_v2.hparams_pb`` /
``hparams_config_pb``, which build protos and never touch TF). Records are
checksummed in C (:func:`masked_crc32c`), not by tensorboard's Python loop.

What is written where (``docs/tensorboard.md`` has the long form)::

    DIR/tensorboard/                       the sweep root: the HParams experiment
                                           (swept fields, their domains, metrics)
    DIR/tensorboard/<run name>/            one run per sweep point: every scalar of
                                           the results table under its metric name,
                                           per-layer histograms, the point's hparams
    DIR/tensorboard/aggregate/<name>/      per set of points that differ only in
                                           seed: <metric>/mean, /min, /max, seeds

Run names are readable (``activation=relu,kernel_init=he_normal,seed=3``); see
:func:`run_name` and :func:`run_names`.

API::

    names = run_names(points, swept_fields)          # point id -> run name
    tb = SweepSummaries(workdir, points, swept_fields, histogram_members=None)
    tb.write_evaluation(members, step, scalars, histograms, resumed_from=None)
    tb.close_chunk()                                  # flush and close, at chunk end
    write_aggregates(workdir)                         # after each chunk

Writing happens at evaluations only, from host NumPy arrays; a run's events of
one evaluation are one ``Event`` (all its scalars and histograms in one
``Summary``), so the only Python loop is the inherent one over the runs.
Each run's events are appended to its event file synchronously, in the
thread that calls :meth:`SweepSummaries.write_evaluation` (deadjax's host
writer, off the device's path), the file opened and closed at each
evaluation (:class:`EventFile`): no thread per run, which ``EventFileWriter``
would start (1,024 threads for a 1,024-member chunk, beside training).

Resume: a sweep killed and resumed re-runs the evaluations after its last
checkpoint. Every event file a process writes into a run begins with a
``SessionLog(status=START)`` at ``min(first step written, resumed_from + 1)``;
TensorBoard (its ``purge_orphaned_data``, on by default, in both its Rust and
Python loaders) then drops every event of earlier files of that run at that
step or later, so no step shows twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
    masked_crc32c as _python_masked_crc32c)
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.summary.writer import record_writer

try:
    import google_crc32c
except ImportError:     # an environment without it (a device machine) writes the same files
    google_crc32c = None

from deadjax import config as config_lib
from deadjax import locks, results

TENSORBOARD = "tensorboard"
AGGREGATE = "aggregate"
MAX_RUN_NAME = 120
DEFAULT_HISTOGRAM_MEMBERS = 16

#: Metrics declared to the HParams dashboard (its columns: last value per run).
HPARAM_METRICS = ("test/accuracy", "test/loss", "train/accuracy", "train/loss",
                  "val/accuracy", "val/loss", "dead_fraction/all", "grad_norm_ratio",
                  "diverged", "born_dead")
#: Metrics summarised over seeds by :func:`write_aggregates`.
AGGREGATE_METRICS = ("test/accuracy", "train/loss", "test/loss", "dead_fraction/all",
                     "grad_norm_ratio")
AGGREGATE_STATS = ("mean", "min", "max")

_EVENTS_GLOB = "events.out.tfevents.*"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]+")


def masked_crc32c(data: bytes) -> int:
    """The checksum of a record of an event file (TFRecord framing: the
    length and the data each followed by this): the CRC-32C (Castagnoli
    polynomial) of ``data``, rotated right by 15 bits and offset by
    ``0xA282EAD8`` modulo 2^32, as TensorFlow's ``crc32c::Mask``. Computed by
    ``google-crc32c``'s C implementation; tensorboard's own
    (``tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c``,
    used when TensorFlow is not installed) is a Python loop over the bytes,
    ~0.15 us a byte on the 2-core CPU: 1.8 s of CPU for the 12 MB of events
    a 1,024-member sweep with the default diagnostics writes in 6
    evaluations (docs/benchmarks.md). The same number either way
    (``tests/test_summaries.py``); without ``google-crc32c``, tensorboard's."""
    if google_crc32c is None:
        return _python_masked_crc32c(data)
    x = google_crc32c.value(data)
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _use_fast_checksums() -> None:
    """Lets tensorboard's ``RecordWriter`` (which :class:`EventFile` writes
    through) checksum records with :func:`masked_crc32c`: it reads the
    module-level name at every record. Only when the C implementation is
    there (``google_crc32c.implementation == "c"``); otherwise tensorboard's
    own function stays. Reading is left to tensorboard's own checks."""
    if google_crc32c is not None and google_crc32c.implementation == "c":
        record_writer.masked_crc32c = masked_crc32c


_use_fast_checksums()

_file_numbers = itertools.count()


class EventFile:
    """One event file, appended to in whole evaluations.

    The file is named as tensorboard's ``EventFileWriter`` names it,
    ``events.out.tfevents.<time>.<host>.<pid>.<n>`` (``n`` counts this
    process's files, so two files of one run never share a name), and begins
    with the same ``file_version="brain.Event:2"`` event. :meth:`flush`
    opens it, writes each event as one TFRecord through tensorboard's
    ``RecordWriter`` and closes it again, so events are on disk (in the
    operating system's buffers) when it returns; a kill in the middle can
    leave only the last record cut short, which TensorBoard's readers treat
    as the end of the file, as for a file ``EventFileWriter`` was writing."""

    def __init__(self, logdir):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / (f"events.out.tfevents.{int(time.time()):010d}."
                              f"{socket.gethostname()}.{os.getpid()}.{next(_file_numbers)}")
        self._events = [event_pb2.Event(
            wall_time=time.time(), file_version="brain.Event:2",
            source_metadata=event_pb2.SourceMetadata(writer="deadjax.summaries"))]

    def add_event(self, event: event_pb2.Event) -> None:
        """Queues ``event`` for the next :meth:`flush`."""
        self._events.append(event)

    def flush(self) -> None:
        """Appends the queued events to the file."""
        events, self._events = self._events, []
        if events:
            with open(self.path, "ab") as f:
                writer = record_writer.RecordWriter(f)
                for event in events:
                    writer.write(event.SerializeToString())

    close = flush


# --------------------------------------------------------------------------
# Run names
# --------------------------------------------------------------------------

def _labels(swept_fields: Sequence[str]) -> dict[str, str]:
    """Field -> label: the last component of its dotted name, unless two swept
    fields share it (then the whole dotted name)."""
    last = [f.rsplit(".", 1)[-1] for f in swept_fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(swept_fields, last)}


def _ordered(fields: Iterable[str]) -> list[str]:
    """Sweep order, with ``seed`` last (so runs of one setting sort together)."""
    fields = list(fields)
    return [f for f in fields if f != "seed"] + [f for f in fields if f == "seed"]


def _format_value(value) -> str:
    if isinstance(value, str) and value.startswith("["):
        try:                       # list cells of the results table are JSON
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value) or "none"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(value)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sanitise(text: str) -> str:
    return _UNSAFE.sub("_", text).strip(".") or "_"


def _name_from(values: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    parts = [f"{labels.get(f, f)}={_format_value(values[f])}"
             for f in _ordered(labels) if f in values and not _is_missing(values[f])]
    return _sanitise(",".join(parts))


def run_name(point, swept_fields: Sequence[str]) -> str:
    """A readable, file-safe run name for ``point`` (a ``sweep.PointSpec``):
    ``label=value`` pairs of its swept fields joined by commas, ``seed`` last;
    the label is the field's last dotted component unless that is ambiguous
    among ``swept_fields``. Characters outside ``[A-Za-z0-9._=,+-]`` become
    ``_``. A name longer than 120 characters is cut and ends with the point id;
    a point without swept values is named by its id. Names are unique within a
    sweep only through :func:`run_names`, which resolves collisions."""
    name = _name_from(point.values, _labels(swept_fields))
    if not name or name == "_":
        return point.id
    if len(name) > MAX_RUN_NAME:
        name = name[:MAX_RUN_NAME - len(point.id) - 1].rstrip(",") + "," + point.id
    return name


def run_names(points: Sequence, swept_fields: Sequence[str]) -> dict[str, str]:
    """Point id -> run name for a whole sweep: :func:`run_name`, with the
    point id appended to every name two points would share, and never
    ``aggregate`` (reserved for :func:`write_aggregates`)."""
    names = {p.id: run_name(p, swept_fields) for p in points}
    count: dict[str, int] = {}
    for n in names.values():
        count[n] = count.get(n, 0) + 1
    for p in points:
        n = names[p.id]
        if (count[n] > 1 or n == AGGREGATE) and n != p.id:
            names[p.id] = (n[:MAX_RUN_NAME - len(p.id) - 1] + "," + p.id)
    return names


# --------------------------------------------------------------------------
# Protos
# --------------------------------------------------------------------------

def _event(step: int, values=None, *, session_log=None, wall_time=None) -> event_pb2.Event:
    ev = event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time,
                         step=int(step))
    if session_log is not None:
        ev.session_log.CopyFrom(session_log)
    elif values is not None:
        ev.summary.CopyFrom(values if isinstance(values, summary_pb2.Summary)
                            else summary_pb2.Summary(value=values))
    return ev


def _start(step: int) -> event_pb2.Event:
    return _event(step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))


def _histogram_values(tags, los, his, counts) -> list:
    """``Summary.Value``s with ``HistogramProto``s of one member: per tag,
    ``lo``, ``hi`` and ``counts`` over ``linspace(lo, hi, bins + 1)``
    (``bucket_limit`` are the right edges; ``min``/``max`` the outer edges).
    Histograms without finite range (no finite entry) are skipped."""
    out = []
    for tag, lo, hi, c in zip(tags, los, his, counts):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        edges = np.linspace(lo, hi, len(c) + 1)
        mid = 0.5 * (edges[:-1] + edges[1:])
        out.append(summary_pb2.Summary.Value(tag=tag, histo=summary_pb2.HistogramProto(
            min=lo, max=hi, num=float(c.sum()), sum=float(c @ mid),
            sum_squares=float(c @ (mid * mid)), bucket_limit=edges[1:].tolist(),
            bucket=c.tolist())))
    return out


def _replace_events(tmp_root: Path, run_dir: Path, events: Sequence[event_pb2.Event]) -> Path:
    """Writes ``events`` as a new event file of ``run_dir``, then removes the
    event files that were there before: the file is written in a temporary
    folder beside the logdir and renamed into place whole."""
    before = set(run_dir.glob(_EVENTS_GLOB)) if run_dir.exists() else set()
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tb-", dir=tmp_root))
    try:
        writer = EventFile(tmp)
        for ev in events:
            writer.add_event(ev)
        writer.close()
        (src,) = tmp.glob(_EVENTS_GLOB)
        run_dir.mkdir(parents=True, exist_ok=True)
        dst = run_dir / src.name
        os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp_root.rmdir()           # only when empty (another process may use it)
        except OSError:
            pass
    for old in before - {dst}:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return dst


# --------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------

def _kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    return "str"


def _as_string(value) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def _hparam_tables(points, swept_fields):
    """(point id -> {field: value}, [HParam]) with one type per field: bool,
    number (float) or string (lists as JSON, mixed types as strings)."""
    kinds = {}
    for f in swept_fields:
        seen = {_kind(p.values[f]) for p in points if f in p.values}
        kinds[f] = seen.pop() if len(seen) == 1 else "str"
    convert = {"bool": bool, "number": float, "str": _as_string}
    values = {p.id: {f: convert[kinds[f]](p.values[f]) for f in swept_fields if f in p.values}
              for p in points}
    labels = _labels(swept_fields)
    infos = []
    for f in swept_fields:
        domain_values = sorted({v[f] for v in values.values() if f in v})
        if kinds[f] == "number" and len(domain_values) > 64:
            domain = hp.RealInterval(min(domain_values), max(domain_values))
        else:
            domain = hp.Discrete(domain_values) if domain_values else None
        infos.append(hp.HParam(f, domain, display_name=labels[f]))
    return values, infos


# --------------------------------------------------------------------------
# Per-point runs
# --------------------------------------------------------------------------

class SweepSummaries:
    """TensorBoard writers of one sweep.

    ``points`` are all the sweep's points (``sweep.PointSpec``) and
    ``swept_fields`` the dotted names any of them sets (``sweep.swept_fields``);
    they fix run names and the HParams experiment, written at once to the
    sweep root (replacing an earlier one). ``histogram_members``: how many
    members of each chunk (the first ones) get histograms; ``None`` means all
    when a chunk has at most 16 members, else the first 16; a negative number
    means all. ``metrics``: the metrics declared to the HParams dashboard
    (default :data:`HPARAM_METRICS`).
    """

    def __init__(self, workdir, points: Sequence, swept_fields: Sequence[str], *,
                 histogram_members: int | None = None,
                 metrics: Sequence[str] = HPARAM_METRICS):
        self.workdir = Path(workdir)
        self.root = self.workdir / TENSORBOARD
        self.swept_fields = list(swept_fields)
        self.names = run_names(points, self.swept_fields)
        self.histogram_members = histogram_members
        self._hparams, infos = _hparam_tables(points, self.swept_fields)
        self._writers: dict[str, EventFile] = {}
        config = hp.hparams_config_pb(infos, [hp.Metric(m, display_name=m) for m in metrics],
                                      time_created_secs=time.time())
        with locks.exclusive(self.workdir, "tensorboard-root"):
            _replace_events(self.workdir / ".tensorboard-tmp", self.root, [_event(0, config)])

    def name(self, point) -> str:
        """The run name of ``point`` (a point unknown at construction gets
        :func:`run_name`)."""
        return self.names.get(point.id) or run_name(point, self.swept_fields)

    def run_dir(self, point) -> Path:
        return self.root / self.name(point)

    def _histogram_count(self, n: int) -> int:
        k = self.histogram_members
        if k is None:
            return min(n, DEFAULT_HISTOGRAM_MEMBERS)
        return n if k < 0 else min(n, k)

    def _open(self, point, step: int, resumed_from: int | None) -> EventFile:
        writer = EventFile(self.run_dir(point))
        # Every file starts with a START: TensorBoard's Python loader takes a
        # run's first START as its beginning and purges only at later ones.
        start = step if resumed_from is None else min(step, int(resumed_from) + 1)
        writer.add_event(_start(start))
        session = hp.hparams_pb(self._hparams.get(point.id, {}), trial_id=self.name(point))
        writer.add_event(_event(0, session))
        self._writers[point.id] = writer
        return writer

    def write_evaluation(self, members: Sequence, step: int,
                         scalars: Mapping[str, Any], histograms: Mapping[str, Any], *,
                         resumed_from: int | None = None) -> None:
        """Writes one evaluation of a chunk.

        ``members``: the chunk's real points, in order; every array has a
        leading member axis with at least ``len(members)`` rows (the rest is
        padding and is never written). ``scalars``: metric name -> (P,) array,
        written under the metric name. ``histograms``: name (``preact/layer_0``,
        ``activation/layer_0``, ``delta/layer_0``, ...) -> ``(lo, hi, counts)``
        with shapes (P,), (P,), (P, bins), counts over ``linspace(lo, hi,
        bins + 1)``. ``resumed_from``: the step of the checkpoint training
        resumed from, when this process continues a run killed earlier: events
        of earlier processes after that step (and at or after ``step``, the
        first written now) are dropped by TensorBoard. Without it, events of
        earlier processes at or after ``step`` are dropped.
        """
        n = len(members)
        if n == 0:
            return
        tags = [k for k in sorted(scalars) if np.ndim(scalars[k]) == 1]
        table = (np.stack([np.asarray(scalars[k], np.float64)[:n] for k in tags], axis=1)
                 if tags else np.zeros((n, 0)))
        k = self._histogram_count(n)
        htags = sorted(histograms) if k else []
        if htags:
            los = np.stack([np.asarray(histograms[t][0], np.float64)[:k] for t in htags], 1)
            his = np.stack([np.asarray(histograms[t][1], np.float64)[:k] for t in htags], 1)
            counts = [np.asarray(histograms[t][2])[:k].astype(np.int64) for t in htags]
        now = time.time()
        for i, point in enumerate(members):
            writer = self._writers.get(point.id) or self._open(point, step, resumed_from)
            event = event_pb2.Event(wall_time=now, step=int(step))
            add = event.summary.value.add
            for t, v in zip(tags, table[i].tolist()):
                add(tag=t, simple_value=v)
            if i < k and htags:
                event.summary.value.extend(_histogram_values(
                    htags, los[i].tolist(), his[i].tolist(), [c[i] for c in counts]))
            writer.add_event(event)
            writer.flush()

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close_chunk(self) -> None:
        """Flushes and closes the writers of the chunk written since the last call."""
        writers, self._writers = self._writers, {}
        for w in writers.values():
            w.close()

    def close(self) -> None:
        self.close_chunk()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# Population aggregates
# --------------------------------------------------------------------------

def swept_columns(frame, workdir=None) -> list[str]:
    """The swept-field columns of a results table: the fields the points of
    ``DIR/points.jsonl`` override, else the columns that are config fields."""
    path = Path(workdir) / "points.jsonl" if workdir is not None else None
    if path is not None and path.exists():
        fields: list[str] = []
        for line in path.read_text().splitlines():
            for f in (json.loads(line).get("overrides") or {}) if line.strip() else ():
                if f not in fields:
                    fields.append(f)
        return [f for f in fields if f in frame.columns]
    base = config_lib.default_config()

    def is_field(name):
        try:
            config_lib.get_field(base, name)
            return True
        except KeyError:
            return False
    return [c for c in frame.columns if c not in results.ID_COLUMNS and "/" not in c
            and is_field(c)]


def aggregate_frame(frame, swept: Sequence[str], metrics: Sequence[str] = AGGREGATE_METRICS):
    """(keys, table) of the seed aggregates of a results table: ``keys`` the
    swept fields other than ``seed``; ``table`` one row per (setting, step) with
    columns ``(metric, stat)`` for stat in mean/min/max (NaN values are
    skipped; all-NaN gives NaN) and ``("seeds", "count")`` (points with a row)."""
    keys = [c for c in swept if c != "seed"]
    present = [m for m in metrics if m in frame.columns]
    grouped = frame.groupby(keys + ["step"], dropna=False, sort=True)
    count = grouped["point"].nunique().rename(("seeds", "count"))
    if not present:
        return keys, count.to_frame()
    return keys, pd.concat([grouped[present].agg(list(AGGREGATE_STATS)), count], axis=1)


def write_aggregates(workdir, metrics: Sequence[str] = AGGREGATE_METRICS) -> list[Path]:
    """Writes one run per set of points that differ only in ``seed`` under
    ``DIR/tensorboard/aggregate/<setting>``, with tags ``<metric>/mean``,
    ``/min``, ``/max`` and ``seeds`` (how many seeds reached that step), from the
    results table, so points of a setting split over several chunks all count.
    Call it after each chunk: each run is rewritten whole (new file in place,
    then the old removed). Nothing is written when ``seed`` is not swept or
    there are no results yet. Returns the event files written."""
    workdir = Path(workdir)
    with locks.exclusive(workdir, "tensorboard-aggregates"):
        return _write_aggregates(workdir, metrics)


def _write_aggregates(workdir: Path, metrics: Sequence[str]) -> list[Path]:
    try:
        frame = results.load_results(workdir)
    except FileNotFoundError:
        return []
    if "seed" not in frame.columns:
        return []
    keys, table = aggregate_frame(frame, swept_columns(frame, workdir), metrics)
    labels = _labels(keys + ["seed"])
    root = workdir / TENSORBOARD / AGGREGATE
    tags = [f"{m}/{s}" if m != "seeds" else "seeds" for m, s in table.columns]
    written, now = [], time.time()
    level = list(range(len(keys)))
    groups = table.groupby(level=level, dropna=False, sort=True) if keys else [((), table)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        name = _name_from(dict(zip(keys, key)), labels) if keys else "all"
        if len(name) > MAX_RUN_NAME:
            digest = hashlib.sha1(name.encode()).hexdigest()[:10]
            name = name[:MAX_RUN_NAME - 11] + "," + digest
        steps = sub.index.get_level_values("step").to_numpy()
        data = sub.to_numpy(np.float64)
        events = [_start(int(steps.min()))]
        for step, row in zip(steps.tolist(), data.tolist()):
            events.append(_event(step, [summary_pb2.Summary.Value(tag=t, simple_value=v)
                                        for t, v in zip(tags, row)], wall_time=now))
        written.append(_replace_events(workdir / ".tensorboard-tmp", root / (name or "all"),
                                       events))
    return written
