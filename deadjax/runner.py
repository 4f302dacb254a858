"""Runs a sweep into a workdir: the story of ``scripts/sweep.py`` top to bottom.

1. resolve and validate every point (nothing compiles or is written before);
2. write ``config.json`` (refusing a workdir of another experiment) and
   ``points.jsonl`` (point id, overrides, group, chunk);
3. for each group and chunk: build the population, train it, and at every
   evaluation write the chunk's rows to the results table.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from deadjax import config as config_lib
from deadjax import data as data_lib
from deadjax import population as pop_lib
from deadjax import checkpoints, memory, results, sharding, sweep as sweep_lib, train
from deadjax import summaries as summary_lib
from deadjax.config import ConfigError

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
    import flax
    import optax
    import orbax.checkpoint as ocp
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
    flat = config_lib.flatten(ml_collections.ConfigDict(cfg))
    return {k: sweep_lib._jsonable(v) for k, v in flat.items()
            if k not in config_lib.RUN_LENGTH_FIELDS}


def check_same_experiment(workdir: Path, base: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose config.json differs in anything but run length."""
    path = workdir / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())["config"]
    new, before = _comparable(base.to_dict()), _comparable(old)
    defaults = _comparable(config_lib.default_config().to_dict())
    for k in config_lib.ADDED_FIELDS:  # written before the field existed
        before.setdefault(k, defaults[k])
    diff = sorted(k for k in set(new) | set(before) if new.get(k) != before.get(k))
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{workdir} holds another experiment: {k} is {before.get(k)!r} there but "
            f"{new.get(k)!r} now ({len(diff)} field(s) differ); use a new --workdir or "
            "the same config (only train.steps may change).")


def read_points(workdir: Path) -> dict[str, dict]:
    path = workdir / "points.jsonl"
    if not path.exists():
        return {}
    return {r["point"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


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
    if path.exists():
        old = json.loads(path.read_text())
        record["history"] = old.get("history", []) + [old.get("provenance", {})]
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
    groups = sweep_lib.group_points(points)
    for g in groups:
        data_lib.check(g.config)
    workdir = Path(workdir).absolute()
    check_same_experiment(workdir, _base_with(base, overrides))
    for g in groups:
        if g.config.train.memory_budget_gb > 0:
            pop = population_for(g, data_lib.load(g.config))
            g.chunk_size, g.chunk_note = memory.chunk_size(pop)
        else:
            g.chunk_size = g.config.train.max_population
            g.chunk_note = f"chunks of at most {g.chunk_size} members (train.max_population)"
    assign_chunks(groups, read_points(workdir))
    return points, groups, workdir


def _base_with(base, overrides):
    cfg = ml_collections.ConfigDict(base.to_dict())
    for k, v in (overrides or {}).items():
        config_lib.set_field(cfg, k, v)
    return cfg


def _pad(state, size: int):
    """Fills a state of n real members up to ``size`` with copies of member 0.
    Padding members are trained like member 0 and never leave the program."""
    n = jax.tree.leaves(state)[0].shape[0]
    if n == size:
        return state
    idx = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
    return jax.tree.map(lambda a: a[idx], state)


def _real(state, n: int):
    return jax.tree.map(lambda a: a[:n], state)


def chunk_is_finished(workdir, group, chunk_index) -> bool:
    ckpt_dir = checkpoints.checkpoint_dir(workdir, group.id, chunk_index)
    if not ckpt_dir.exists():
        return False
    with checkpoints.ChunkCheckpointer(workdir, group.id, chunk_index) as ckpt:
        return ckpt.latest_step() == group.config.train.steps


def run_chunk(pop, group, chunk_index, members, data, workdir, swept, *, summaries=None,
              progress=None):
    """Trains one chunk (padded to the population size and sharded over the
    devices) from its latest checkpoint, writing rows, summaries and
    checkpoints at evaluations."""
    cfg = group.config
    size = sharding.population_size(len(group.points), group.chunk_size)
    n = len(members)
    padded = members + [members[0]] * (size - n)
    seeds = np.asarray([p.config.seed for p in padded], np.int32)
    hparams = pop.hparams_of([p.config for p in padded])
    state = pop.init(*sharding.shard_members((seeds, hparams)))
    total = cfg.train.steps
    ids = [p.id for p in members]
    meta = {"points": ids, "group": group.id, "chunk": chunk_index,
            "config": sweep_lib._jsonable(cfg)}
    writer = sharding.is_writer()
    with checkpoints.ChunkCheckpointer(workdir, group.id, chunk_index,
                                       max_to_keep=cfg.train.keep_checkpoints) as ckpt:
        template = jax.tree.map(lambda a: np.zeros((n,) + a.shape[1:], a.dtype), state)
        found = ckpt.restore_latest(template, points=ids)
        start = 0
        if found is not None:
            start, restored, _ = found
            state = sharding.shard_members(_pad(restored, size))
            log.info("resuming %s chunk %d at step %d", group.id, chunk_index, start)
        if found is not None and start >= total:
            return state
        if progress is not None and writer:
            progress.begin(group, chunk_index, start, n)

        def on_eval(step, state, scalars, hists):
            # Gathers and checkpoint saves are collective: every process makes them.
            host = sharding.to_host(scalars)
            host_hists = sharding.to_host(hists) if hists else {}
            # Step 0 needs no checkpoint: the initialisation is recomputed exactly.
            if step > 0 and (step % cfg.train.checkpoint_every == 0 or step == total):
                ckpt.save(step, _real(state, n), meta)
            if not writer:
                return
            frame = results.rows_for_evaluation(members, step, host, swept)
            results.write_part(workdir, group.id, chunk_index, step, frame)
            if host_hists:
                results.write_histograms(workdir, group.id, chunk_index, step, members,
                                         host_hists)
            if summaries is not None:
                summaries.write_evaluation(members, step, host, host_hists,
                                           resumed_from=start if start else None)
            if progress is not None:
                progress(group, chunk_index, step, total, n, host)

        state = train.run(pop, state, data, start=start, total=total, on_eval=on_eval)
    if summaries is not None:
        summaries.close_chunk()
        summary_lib.write_aggregates(workdir)
    return state


_POPULATIONS: dict = {}


def population_for(group, dataset) -> pop_lib.Population:
    """The group's Population, built once per process: its compiled programs
    are reused by every chunk and by a rerun in the same process. Dropout
    masks, the L2 term and each intervention are compiled in only if some
    member needs them."""
    uses_dropout = any(p.config.model.dropout > 0 for p in group.points)
    uses_l2 = any(p.config.optim.weight_decay > 0 for p in group.points)
    methods = pop_lib.group_interventions([p.config for p in group.points])
    key = (group.id, uses_dropout, uses_l2, methods)
    if key not in _POPULATIONS:
        _POPULATIONS[key] = pop_lib.Population(group.config, dataset,
                                               uses_dropout=uses_dropout, uses_l2=uses_l2,
                                               methods=methods)
    return _POPULATIONS[key]


def task_share(groups, num_tasks: int, task_index: int) -> list[tuple]:
    """The (group, chunk) units of a job-array task: units in order of group
    and chunk, unit k to task k mod num_tasks. Deterministic, so N tasks
    launched with the same command split the sweep without talking."""
    units = [(g, c) for g in groups for c in sorted({p.chunk for p in g.points})]
    return [u for k, u in enumerate(units) if k % num_tasks == task_index]


def run_sweep(base, sweep, workdir, overrides=None, *, progress=None,
              tensorboard: bool = True, num_tasks: int = 1, task_index: int = 0) -> list:
    """Runs (or continues) every point of the sweep into ``workdir``.

    Chunks whose checkpoint is at ``train.steps`` are skipped; the others
    continue from their latest checkpoint, so a killed sweep resumes where it
    stopped and new points of a grown sweep train in chunks of their own.
    With ``num_tasks > 1`` this process trains only its share (task_share).
    """
    if not 0 <= task_index < num_tasks:
        raise ConfigError(f"--task_index = {task_index} is not allowed; it must be in "
                          f"[0, {num_tasks}) for --num_tasks = {num_tasks}.")
    points, groups, workdir = plan(base, sweep, workdir, overrides)
    if sharding.is_writer():
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
            todo = [c for g, c in mine if g is group
                    and not chunk_is_finished(workdir, group, c)]
            if not todo:
                continue
            dataset = data_lib.load(group.config)
            pop = population_for(group, dataset)
            data = sharding.replicate(
                pop_lib.device_data(dataset, data_lib.probe_indices(group.config)))
            for chunk_index in todo:
                run_chunk(pop, group, chunk_index, by_chunk[chunk_index], data, workdir,
                          swept, summaries=summaries, progress=progress)
    finally:
        if summaries is not None:
            summaries.close()
    return points
