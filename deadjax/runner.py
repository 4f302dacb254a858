"""Runs a sweep into a workdir: the story of ``scripts/sweep.py`` top to bottom.

1. resolve and validate every point (nothing compiles or is written before);
2. write ``config.json`` (refusing a workdir of another experiment) and
   ``points.jsonl`` (point id, overrides, group, chunk);
3. for each group: its compiled programs (:func:`deadjax.population.compiled`),
   then each of its chunks through the host loop :func:`deadjax.train.run_chunk`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import flax
import jax
import ml_collections
import optax
import orbax.checkpoint as ocp

from deadjax import config as config_lib
from deadjax import data as data_lib
from deadjax import population as pop_lib
from deadjax import (checkpoints, errors, interventions, locks, memory, results, sharding,
                     sweep as sweep_lib, train)
from deadjax import summaries as summary_lib
from deadjax.errors import ConfigError

log = logging.getLogger("deadjax")


# --------------------------------------------------------------------------
# Workdir metadata
# --------------------------------------------------------------------------

def provenance() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "deadjax_commit": commit or "unknown",
        "python": sys.version.split()[0],
        "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "orbax_checkpoint": getattr(ocp, "__version__", "unknown"),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _comparable(cfg: Mapping) -> dict:
    """A config's fields that must agree for a workdir to resume: all but the
    run length and the recording fields."""
    flat = config_lib.flatten(ml_collections.ConfigDict(cfg))
    skip = set(config_lib.run_length_fields()) | set(config_lib.recording_fields())
    return {k: sweep_lib._jsonable(v) for k, v in flat.items() if k not in skip}


def check_same_experiment(workdir: Path, base: ml_collections.ConfigDict,
                          points=()) -> None:
    """Refuses a workdir whose config.json differs in anything but run length.

    A field added after the workdir was written reads as the value such
    workdirs had (``Field.value_before``), where it matters: a remedy's field
    only if some point (of ``points``, resolved) uses the remedy."""
    record = read_config_json(workdir)
    if record is None:
        return
    old = record["config"]
    new, before = _comparable(base.to_dict()), _comparable(old)
    methods = {p.config.interventions.method for p in points}
    skip = set(config_lib.run_length_fields()) | set(config_lib.recording_fields())
    for k in config_lib.added_fields():  # written before the field existed
        if k in before or k in skip:
            continue
        owner = interventions.remedy_of_field(k)
        matters = owner is None or owner in methods
        before[k] = (sweep_lib._jsonable(config_lib.field(k).value_before) if matters
                     else new.get(k))
    diff = sorted(k for k in set(new) | set(before) if new.get(k) != before.get(k))
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{workdir} holds another experiment: {k} is {before.get(k)!r} there but "
            f"{new.get(k)!r} now ({len(diff)} field(s) differ); use a new --workdir or "
            "the same config (only train.steps and the fields of what is recorded may "
            "change, docs/checkpoints.md).")


def read_config_json(workdir: Path) -> dict | None:
    """``DIR/config.json``, or None when there is none; a damaged one is
    refused in one sentence (nothing can check the experiment without it)."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        record["config"]
        return record
    except (ValueError, KeyError, TypeError) as e:
        raise errors.DamagedFile(
            f"{path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
            "restore it, or delete it to let this command write it anew (the record of "
            "earlier runs in it is then lost).") from None


def read_points(workdir: Path) -> dict[str, dict]:
    """``DIR/points.jsonl`` by point id. Lines that do not parse (a file
    damaged after it was written) are left out; :func:`repair_points` then
    recovers those points' groups and chunks from the results table."""
    path = workdir / "points.jsonl"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            out[record["point"]] = record
        except (ValueError, KeyError, TypeError):
            continue
    return out


def repair_points(workdir: Path, known: dict, points) -> list[str]:
    """Adds to ``known`` the points of this sweep that ``points.jsonl`` lost but
    the results table holds (their group and chunk as the parts record them);
    returns their ids. Without it they would train again, in new chunks."""
    lost = [p for p in points if p.id not in known]
    if not lost or not (workdir / results.RESULTS).is_dir():
        return []
    recorded = results.chunks_of_points(workdir)
    repaired = []
    for p in lost:
        if p.id in recorded:
            group, chunk = recorded[p.id]
            known[p.id] = {"point": p.id, "overrides": p.values, "group": group, "chunk": chunk}
            repaired.append(p.id)
    return repaired


def assign_chunks(groups, known: Mapping[str, dict], max_population: int | None = None) -> None:
    """Keeps the chunk of every point seen before (resume needs the same
    chunking) and puts new points into new chunks after them, of the group's
    ``chunk_size`` members (or ``max_population``)."""
    for g in groups:
        size = max_population or getattr(g, "chunk_size", None) or g.config.train.max_population
        fresh = []
        for p in g.points:
            if p.id in known:
                p.chunk = int(known[p.id]["chunk"])
            else:
                fresh.append(p)
        start = 1 + max((p.chunk for p in g.points if p.chunk >= 0), default=-1)
        for i, members in enumerate(sweep_lib.chunks(fresh, size)):
            for p in members:
                p.chunk = start + i


def write_metadata(workdir: Path, base, sweep, points) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    record = {"config": sweep_lib._jsonable(base), "sweep": sweep_lib._jsonable(sweep),
              "provenance": provenance()}
    old = read_config_json(workdir)
    if old is not None:
        before = config_lib.flatten(ml_collections.ConfigDict(old["config"]))
        after = config_lib.flatten(ml_collections.ConfigDict(record["config"]))
        changed = {k: [sweep_lib._jsonable(before[k]), sweep_lib._jsonable(after[k])]
                   for k in after if k in before
                   and sweep_lib._jsonable(before[k]) != sweep_lib._jsonable(after[k])}
        entry = dict(old.get("provenance", {}))
        if changed:
            entry["changed_after"] = changed   # what this run changed, [before, after]
        record["history"] = old.get("history", []) + [entry]
    results.atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    known = read_points(workdir)
    for p in points:
        known[p.id] = {"point": p.id, "overrides": p.values, "group": p.group, "chunk": p.chunk}
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in known.values())
    results.atomic_write_text(workdir / "points.jsonl", lines)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def plan(base, sweep, workdir, overrides=None):
    """Resolves and validates everything; touches nothing on disk."""
    points = sweep_lib.resolve_points(base, sweep, overrides)
    workdir = Path(workdir).absolute()
    known = read_points(workdir)
    repair_points(workdir, known, points)
    groups = sweep_lib.keep_recorded_groups(sweep_lib.group_points(points), known)
    for g in groups:
        data_lib.check(g.config)
    check_same_experiment(workdir, _base_with(base, overrides), points)
    for g in groups:
        if g.config.train.memory_budget_gb > 0:
            g.chunk_size, g.chunk_note = memory.chunk_size(group_spec(g, data_lib.load(g.config)))
        else:
            g.chunk_size = g.config.train.max_population
            g.chunk_note = f"chunks of at most {g.chunk_size} members (train.max_population)"
    assign_chunks(groups, known)
    return points, groups, workdir


def _base_with(base, overrides):
    cfg = ml_collections.ConfigDict(base.to_dict())
    for k, v in (overrides or {}).items():
        config_lib.set_field(cfg, k, v)
    return cfg


def chunk_is_finished(workdir, group, chunk_index) -> bool:
    """Whether the chunk's newest checkpoint is at ``train.steps`` (read only)."""
    return checkpoints.latest_step(workdir, group.id, chunk_index) == group.config.train.steps


def heal_chunk(workdir: Path, group, chunk: int, progress=None) -> int | None:
    """Checks a chunk's results and histogram parts: damaged ones are moved
    aside (``<table>.damaged/``), and the first step whose rows are damaged or
    missing (an evaluation the chunk's newest checkpoint records as written,
    without its part) is returned, for :func:`deadjax.train.run_chunk` to
    retrain from the newest checkpoint before it; None when all is well. A
    damaged step that the current evaluation schedule would not rewrite is
    refused in one sentence naming the file."""
    if not sharding.is_writer():
        return None
    cfg = group.config
    latest = checkpoints.latest_step(workdir, group.id, chunk)
    schedule = set(train.evaluation_steps(0, cfg.train.steps, cfg.train.eval_every)) | {0}
    first = None
    for table in (results.RESULTS, results.HISTOGRAMS, results.UNITS):
        for step, path in sorted(results.chunk_parts(workdir, group.id, chunk, table).items()):
            if results.part_is_readable(path):
                continue
            if step not in schedule:
                raise errors.DamagedFile(
                    f"The results part {path} is damaged, and step {step} is not an "
                    f"evaluation of train.eval_every = {cfg.train.eval_every}, so rerunning "
                    "cannot rewrite it; delete it (its rows are lost) or rerun with the "
                    "train.eval_every that wrote it.")
            moved = results.move_aside(path)
            _note(progress, f"{path} is damaged: moved to {moved}; its rows are recomputed")
            first = step if first is None else min(first, step)
    record = (checkpoints.step_metadata(workdir, group.id, chunk, latest)
              if latest is not None else None)
    if record is not None and "evaluations" in record:  # what was written before it
        have = results.chunk_parts(workdir, group.id, chunk)
        missing = [s for s in record["evaluations"] if s not in have]
        if missing:
            _note(progress, f"{group.id} chunk {chunk}: rows of step {missing[0]} are missing; "
                            "recomputed")
            first = missing[0] if first is None else min(first, missing[0])
    return first


def group_spec(group, dataset) -> pop_lib.GroupSpec:
    """The static description of ``group``'s program: dropout masks, the L2
    term and each remedy are compiled in only if some member needs them."""
    return pop_lib.spec_for([p.config for p in group.points], dataset)


def task_share(groups, num_tasks: int, task_index: int) -> list[tuple]:
    """The (group, chunk) units of a job-array task: units in order of group
    and chunk, unit k to task k mod num_tasks. Deterministic, so N tasks
    launched with the same command split the sweep without talking."""
    units = [(g, c) for g in groups for c in sorted({p.chunk for p in g.points})]
    return [u for k, u in enumerate(units) if k % num_tasks == task_index]


def run_sweep(base, sweep, workdir, overrides=None, *, progress=None,
              tensorboard: bool = True, num_tasks: int = 1, task_index: int = 0,
              stop=None) -> list:
    """Runs (or continues) every point of the sweep into ``workdir``.

    Chunks whose checkpoint is at ``train.steps`` are skipped; the others
    continue from their latest checkpoint, so a killed sweep resumes where it
    stopped and new points of a grown sweep train in chunks of their own.
    With ``num_tasks > 1`` this process trains only its share (task_share).
    ``stop`` (a :class:`deadjax.train.StopRequest`): once true, the sweep
    checkpoints at the next evaluation and raises
    :class:`deadjax.errors.Stopped`. File-system failures raise
    :class:`deadjax.errors.WorkdirFault`, one sentence naming the path.
    """
    if not 0 <= task_index < num_tasks:
        raise ConfigError(f"--task_index = {task_index} is not allowed; it must be in "
                          f"[0, {num_tasks}) for --num_tasks = {num_tasks}.")
    points, groups, workdir = plan(base, sweep, workdir, overrides)
    with _faults_as_sentences(workdir):
        _train_groups(base, sweep, overrides, points, groups, workdir, progress=progress,
                      tensorboard=tensorboard, num_tasks=num_tasks, task_index=task_index,
                      stop=stop)
    return points


class _LibraryThreadTracebacks(logging.Filter):
    """Drops the tracebacks Orbax's writer threads log (through absl) while a
    sweep runs: the same failure reaches the sweep, which reports it in one
    sentence (:class:`deadjax.errors.WorkdirFault`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and "/orbax/" in record.pathname.replace("\\", "/"))


def _closed_loop_unraisable(hook):
    """``sys.unraisablehook`` without the "Event loop is closed" errors that
    tensorstore's callbacks raise once a failed Orbax save has closed its
    event loop (they are the same failure the sweep reports)."""
    def quiet(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and "Event loop is closed" in str(value)):
            hook(unraisable)
    quiet.deadjax_quiet = True
    return quiet


@contextlib.contextmanager
def _faults_as_sentences(workdir: Path):
    """File-system errors of a sweep as one sentence naming the path and what
    to do; library threads' tracebacks silenced meanwhile (and, after a fault,
    the late callbacks of the failed save too)."""
    quiet = _LibraryThreadTracebacks()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(quiet)
    hook = sys.unraisablehook
    if not getattr(hook, "deadjax_quiet", False):
        sys.unraisablehook = _closed_loop_unraisable(hook)
    failed = True
    try:
        yield
        failed = False
    except OSError as e:
        raise errors.fault(e, workdir) from None
    finally:
        absl_logger.removeFilter(quiet)
        if not failed:
            sys.unraisablehook = hook


def _note(progress, text: str) -> None:
    """A line about the sweep: to the progress display where there is one."""
    if progress is not None and hasattr(progress, "note"):
        progress.note(text)
    else:
        log.info(text)


def _train_groups(base, sweep, overrides, points, groups, workdir, *, progress, tensorboard,
                  num_tasks, task_index, stop) -> None:
    if sharding.is_writer():
        results.remove_stale_temporaries(workdir)
        write_metadata(workdir, _base_with(base, overrides), sweep, points)
    swept = sweep_lib.swept_fields(points)
    summaries = (summary_lib.SweepSummaries(workdir, points, swept)
                 if tensorboard and sharding.is_writer() else None)
    mine = task_share(groups, num_tasks, task_index)
    try:
        for group in groups:
            by_chunk: dict[int, list] = {}
            for p in group.points:
                by_chunk.setdefault(p.chunk, []).append(p)
            damaged = {c: heal_chunk(workdir, group, c, progress) for g, c in mine if g is group}
            todo = [c for g, c in mine if g is group
                    and (damaged[c] is not None or not chunk_is_finished(workdir, group, c))]
            if not todo:
                continue
            dataset = data_lib.load(group.config)
            compiled = pop_lib.compiled(group_spec(group, dataset))
            data = sharding.replicate(
                data_lib.device_data(dataset, data_lib.probe_indices(group.config)))
            for chunk_index in todo:
                # Several processes of one job train a chunk together: process 0
                # alone takes its lock, for all of them (were the others to try
                # too, one of them could win the race and make all of them skip).
                with locks.chunk(workdir, group.id, chunk_index,
                                 take=sharding.is_writer()) as lock:
                    held = sharding.any_process(lock.held)
                    if not held:
                        _note(progress, f"{group.id} chunk {chunk_index} is being trained by "
                                        f"{locks.describe(lock.holder)}; skipped")
                        if hasattr(progress, "skipped"):
                            progress.skipped(group, chunk_index)
                        continue
                    redo = damaged[chunk_index]
                    if redo is None and chunk_is_finished(workdir, group, chunk_index):
                        continue  # finished by another process meanwhile
                    train.run_chunk(compiled, group, chunk_index, by_chunk[chunk_index], data,
                                    workdir, swept, summaries=summaries, progress=progress,
                                    stop=stop, redo_before=redo)
    finally:
        if summaries is not None:
            summaries.close()
