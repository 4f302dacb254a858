"""The ``deadjax`` command (``[project.scripts]``; ``python scripts/*.py`` are thin
wrappers around it)::

    deadjax sweep --config experiments/NAME.py --workdir DIR [--config.a.b=V ...]
                  [--dry-run] [--num_tasks N --task_index I] [--distributed ...]
    deadjax status DIR
    deadjax figures --workdir DIR [--format png,pdf,svg] [--metric M ...]
    deadjax reproduce NAME [--quick]
    deadjax --help | deadjax sweep --help       (lists every config field)

Every mistake on the command line is one sentence on stderr and exit status 2
(:mod:`deadjax.errors` lists the statuses); nothing is compiled or written
before the config is valid.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import logging
import math
import sys
import time
from pathlib import Path

import jax
import ml_collections

from deadjax import (checkpoints, config as config_lib, data as data_lib, errors, figures,
                     locks, memory, reproductions, results, runner, sharding,
                     sweep as sweep_lib, train)
from deadjax.errors import EXIT_BAD_CONFIG, ConfigError

USAGE = __doc__.split("\n\n")[1]


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------

class Progress:
    """One progress display for the sweep this process trains.

    The work is what is left of it: the chunks of this process's share that
    are not finished, each from its newest checkpoint (``plan_work``), so the
    counts and the time left are right after a resume or for a grown sweep.
    Off a terminal (logs, CI, SLURM) it prints one line per evaluation: group,
    chunk, step, member-steps per second, time left, and the mean test
    accuracy and dead fraction of the chunk's members; on a terminal a live
    ``rich`` bar shows the same.
    """

    def __init__(self, work: dict, stream=sys.stderr):
        self.stream = stream
        self.work = dict(work)                  # (group id, chunk) -> member-steps left
        self.total = max(sum(self.work.values()), 1)
        self.done = 0
        self.t0 = time.time()
        self._at: dict = {}
        self._bar = None
        if getattr(stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import (BarColumn, Progress as RichProgress, TextColumn,
                                       TimeRemainingColumn)
            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} member-steps"),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                TextColumn("{task.fields[last]}"), console=Console(file=stream),
                transient=False)
            self._task = self._bar.add_task("", total=self.total, rate="", last="")
            self._bar.start()

    def begin(self, group, chunk, start: int, members: int) -> None:
        """A chunk starts (or resumes) at ``start``."""
        self._at[(group.id, chunk)] = start

    def skipped(self, group, chunk) -> None:
        """A chunk another process trains: its work leaves the total."""
        self.total = max(self.total - self.work.pop((group.id, chunk), 0), 1)

    def __call__(self, group, chunk, step, total, members, scalars):
        key = (group.id, chunk)
        self.done += max(step - self._at.get(key, step), 0) * members
        self._at[key] = step
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        values = []
        for name, label in (("test/accuracy", "test accuracy"), ("test/loss", "test loss"),
                            ("dead_fraction/all", "dead fraction")):
            if name in scalars and (name != "test/loss" or "test/accuracy" not in scalars):
                values.append(f"{label} {float(scalars[name][:members].mean()):.4f}")
        last = ", ".join(values) + (f" (means over {members} members)" if values else "")
        where = f"{group.id} chunk {chunk} step {step:,}/{total:,}"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=where,
                             rate=f"{rate:,.0f}/s", last=last)
            return
        print(f"deadjax: {where}: {rate:,.0f} member-steps/s, {_duration(left)} left"
              + (f"; {last}" if last else ""), file=self.stream, flush=True)
        if step >= total:
            print(f"deadjax: {group.id} chunk {chunk} done ({members} members, {total:,} "
                  f"steps); {self.done:,}/{self.total:,} member-steps of this run",
                  file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line about the sweep (a chunk skipped, a part repaired, ...)."""
        if self._bar is not None:
            self._bar.console.print(f"deadjax: {text}")
        else:
            print(f"deadjax: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "? s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_work(workdir, groups, num_tasks: int = 1, task_index: int = 0) -> dict:
    """``{(group id, chunk): member-steps left}`` of the chunks of this
    process's share that are not finished (their newest checkpoint below
    ``train.steps``)."""
    out = {}
    for group, chunk in runner.task_share(groups, num_tasks, task_index):
        members = sum(1 for p in group.points if p.chunk == chunk)
        total = group.config.train.steps
        latest = checkpoints.latest_step(workdir, group.id, chunk) if Path(workdir).is_dir() \
            else None
        start = latest or 0
        if latest is None or latest < total:
            out[(group.id, chunk)] = members * (total - start)
    return out


def schedule_note(config, shown: int = 6) -> str:
    """When a group's runs evaluate and checkpoint, in words."""
    t = config.train
    steps = train.checkpoint_steps(0, t.steps, config)
    listed = ", ".join(str(s) for s in steps[:shown]) + (", ..." if len(steps) > shown else "")
    return (f"evaluations every {t.eval_every} steps, checkpoints at the first evaluation at "
            f"or after each multiple of {t.checkpoint_every} and at the end (steps {listed})")


def summary_table(workdir, limit: int = 40) -> str:
    frame = results.load_results(workdir)
    last = frame.sort_values("step").groupby("point").tail(1).sort_values("point")
    swept = [c for c in frame.columns
             if c not in results.ID_COLUMNS and not results.is_metric(c)]
    cols = ["point"] + swept + ["step", "test/accuracy", "test/loss", "diverged"]
    cols = [c for c in cols if c in last.columns]
    shown = last[cols].head(limit)
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    if len(last) > limit:
        text += f"\n... {len(last) - limit} more points (deadjax.load_results('{workdir}'))"
    return text


# --------------------------------------------------------------------------
# Config overrides on the command line
# --------------------------------------------------------------------------

def _nearest(name: str) -> str:
    names = [f.name for f in config_lib.all_fields()]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; deadjax sweep --help lists them."


def parse_value(name: str, text: str, current):
    """The value ``--config.NAME=TEXT`` sets, read as the field's type
    (``current`` is its value in the experiment's config); ConfigError with
    one sentence when the text is not of that type."""
    def refuse(kind: str, example: str = ""):
        raise ConfigError(f"--config.{name} = {text!r} is not allowed; it must be {kind}"
                          f"{' (' + example + ')' if example else ''}.")

    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        refuse("True or False")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            refuse("an integer")
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            refuse("a number", "e.g. 1e-3")
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, (tuple, list)):
            example = f"{name}=({text},)" if text.strip().lstrip("-").isdigit() else ""
            refuse("a tuple such as (128,) or (128, 128)",
                   f"one element needs the comma: --config.{example}" if example else "")
        return tuple(value)
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def parse_overrides(items: list[str], base) -> dict:
    """``{"a.b": value}`` from ``--config.a.b=V`` (or ``--config.a.b V``) items."""
    out = {}
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--config."):
            raise ConfigError(f"{item!r} is not an option of deadjax sweep; deadjax sweep "
                              "--help lists them.")
        name, eq, text = item[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(items):
                raise ConfigError(f"--config.{name} needs a value (--config.{name}=V).")
            text, i = items[i + 1], i + 1
        try:
            current = config_lib.get_field(base, name)
        except KeyError:
            raise ConfigError(f"--config.{name} is not a config field{_nearest(name)}") from None
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{name} is a section, not a field; give one of its "
                              f"fields, e.g. --config.{name}.{next(iter(current.keys()))}=V.")
        out[name] = parse_value(name, text, current)
        i += 1
    return out


def fields_help() -> str:
    """Every config field, its default and its meaning, by section."""
    lines, section = [], None
    for f in config_lib.all_fields():
        head = f.section.split(".")[0] or "(top level)"
        if head != section:
            section = head
            lines.append(f"\n{section}:")
        kind = "per member" if f.per_member else "static"
        lines.append(f"  {f.name} = {f.default!r}  [{kind}]\n      {f.doc}")
    return "config fields (--config.FIELD=VALUE; per-member fields share a compiled program):" \
        + "\n".join(lines)


# --------------------------------------------------------------------------
# deadjax sweep
# --------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one sentence and exit status 2."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}.")


def _sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="deadjax sweep", add_help=False,
                description="Runs every point of an experiment's sweep into a workdir; "
                            "safe to re-run (it resumes).")
    p.add_argument("--config", help="experiment file (experiments/NAME.py)")
    p.add_argument("--workdir", help="output folder; an existing one is resumed")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, groups, points, chunks and memory; write "
                        "nothing")
    p.add_argument("--num_tasks", type=int, default=1, help="job-array size")
    p.add_argument("--task_index", type=int, default=0, help="this task's index")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (docs/cluster.md)")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("-h", "--help", action="store_true", help="this help and every config field")
    return p


def _require(value, flag: str):
    if not value:
        raise ConfigError(f"deadjax sweep needs {flag} (deadjax sweep --help).")
    return value


def sweep_main(argv) -> int:
    parser = _sweep_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.help:
            print(parser.format_help() + "\n" + fields_help())
            return 0
        base, sweep = sweep_lib.load_experiment(_require(args.config, "--config FILE"))
        overrides = parse_overrides(rest, base)
        _require(args.workdir, "--workdir DIR")
        if args.distributed:
            # Processes whose devices are CPUs need a CPU collectives backend
            # for the gathers; gloo ships with jaxlib. Accelerators use theirs.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                       num_processes=args.num_processes,
                                       process_id=args.process_id)
        points, groups, workdir = runner.plan(base, sweep, args.workdir, overrides)
        if args.dry_run:
            print(dry_run_report(base, overrides, points, groups, workdir, args))
            return 0
    except (ConfigError, errors.DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"deadjax: {len(points)} points in {len(groups)} groups -> {workdir}",
          file=sys.stderr)
    for g in groups:
        print(f"deadjax: group {g.id}: {len(g.points)} points, {g.chunk_note}; "
              f"{schedule_note(g.config)}", file=sys.stderr)
    work = plan_work(workdir, groups, args.num_tasks, args.task_index)
    if not work:
        print(f"deadjax: nothing to do: all {len(points)} points are finished", file=sys.stderr)
    progress = Progress(work)
    stop = train.StopRequest().install()
    try:
        runner.run_sweep(base, sweep, workdir, overrides, progress=progress,
                         num_tasks=args.num_tasks, task_index=args.task_index, stop=stop)
    except (ConfigError, errors.DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except errors.WorkdirFault as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_FAULT
    except errors.Stopped as e:
        print(f"deadjax: {e}", file=sys.stderr)
        return errors.EXIT_STOPPED
    finally:
        stop.restore()
        progress.close()
    if sharding.is_writer():
        print(summary_table(workdir))
    return 0


def dry_run_report(base, overrides, points, groups, workdir, args) -> str:
    """What a sweep would run, without running or writing anything."""
    resolved = runner._base_with(base, overrides)
    lines = [f"deadjax sweep --dry-run: {len(points)} points in {len(groups)} groups -> "
             f"{workdir} (nothing is written)", "", "resolved config (every point starts "
             "from it; the sweep's fields are set per point):"]
    for name, value in config_lib.flatten(resolved).items():
        mark = "  (overridden)" if name in overrides else ""
        lines.append(f"  {name} = {value!r}{mark}")
    work = plan_work(workdir, groups, args.num_tasks, args.task_index)
    for g in groups:
        spec = runner.group_spec(g, data_lib.load(g.config))
        per = memory.member_bytes(spec)
        chunks = sorted({p.chunk for p in g.points})
        lines += ["", f"group {g.id}: {len(g.points)} points, {g.chunk_note}; "
                      f"{schedule_note(g.config)}; about {per / 2**20:.2f} MiB of device "
                      "memory per member (deadjax.memory)"]
        for c in chunks:
            members = [p for p in g.points if p.chunk == c]
            state = ("to train" if (g.id, c) in work else "finished")
            lines.append(f"  chunk {c}: {len(members)} members, {state}")
            for p in members:
                values = ", ".join(f"{k}={v!r}" for k, v in p.values.items()) or "(base config)"
                lines.append(f"    {p.id}: {values}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# deadjax status
# --------------------------------------------------------------------------

def _ago(seconds: float) -> str:
    return f"{_duration(seconds)} ago"


def status_report(workdir) -> str:
    """Groups, chunks, steps done, diverged members, last write and whether a
    process holds each chunk, read from the workdir's files (nothing compiled)."""
    workdir = Path(workdir).absolute()
    record = runner.read_config_json(workdir)
    if record is None:
        raise ConfigError(f"{workdir} holds no config.json; give the --workdir of a deadjax "
                          "sweep.")
    known = runner.read_points(workdir)
    base = ml_collections.ConfigDict(record["config"])
    prov = record.get("provenance", {})
    by_chunk: dict = {}
    for r in known.values():
        by_chunk.setdefault((r["group"], int(r["chunk"])), []).append(r)
    try:
        frame = results.load_results(workdir, on_damaged="skip")
    except FileNotFoundError:
        frame = None
    lines = [f"{workdir}: {len(known)} points in {len({g for g, _ in by_chunk})} groups; "
             f"last run {prov.get('time', '?')} (deadjax {prov.get('deadjax_commit', '?')[:10]},"
             f" {prov.get('backend', '?')})"]
    now = time.time()
    for (group, chunk), members in sorted(by_chunk.items()):
        steps = base.train.steps
        for r in members:  # a sweep that varies the run length
            steps = r["overrides"].get("train.steps", steps)
        latest = checkpoints.latest_step(workdir, group, chunk)
        rows = frame[(frame.group == group) & frame.point.isin([r["point"] for r in members])] \
            if frame is not None else None
        last_step = int(rows.step.max()) if rows is not None and len(rows) else None
        diverged = 0
        if rows is not None and len(rows) and "diverged" in rows:
            last = rows.sort_values("step").groupby("point").tail(1)
            diverged = int((last.diverged > 0).sum())
        paths = list((workdir / results.RESULTS / group / f"chunk_{chunk:04d}").glob("*")) + \
            list(checkpoints.checkpoint_dir(workdir, group, chunk).glob("*"))
        written = max((p.stat().st_mtime for p in paths if p.exists()), default=None)
        holder = locks.read_holder(locks.chunk_lock_path(workdir, group, chunk))
        lock = locks.chunk_lock_path(workdir, group, chunk)
        held = ""
        if lock.exists():
            held = (f"; held by {locks.describe(holder)}" if not locks.is_stale(holder, lock)
                    else "; a stale lock (its holder is gone; the next run takes it over)")
        state = ("finished" if latest is not None and latest >= steps else
                 f"step {last_step if last_step is not None else 0:,} of {steps:,} evaluated, "
                 f"checkpoint {latest if latest is not None else 'none yet'}")
        lines.append(f"  {group} chunk {chunk}: {len(members)} members, {state}"
                     f"{f', {diverged} diverged' if diverged else ''}"
                     f"{f', last write {_ago(now - written)}' if written else ''}{held}")
    return "\n".join(lines)


def status_main(argv) -> int:
    p = _Parser(prog="deadjax status", description="What a workdir holds and who trains it.")
    p.add_argument("workdir")
    try:
        args = p.parse_args(argv)
        print(status_report(args.workdir))
    except (ConfigError, errors.DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return 0


# --------------------------------------------------------------------------
# deadjax figures, deadjax reproduce
# --------------------------------------------------------------------------

def figures_main(argv) -> int:
    p = _Parser(prog="deadjax figures", description="Draws the default figures of a workdir "
                "from its results table (docs/figures.md).")
    p.add_argument("--workdir", required=True, help="workdir written by deadjax sweep")
    p.add_argument("--out", default=None, help="output folder (default WORKDIR/figures)")
    p.add_argument("--metric", action="append", default=[],
                   help="extra metric to draw against steps (repeatable)")
    p.add_argument("--format", default="png",
                   help="comma-separated formats of each figure: png, pdf, svg (default png)")
    p.add_argument("--no-index", action="store_true", help="do not write index.html")
    try:
        args = p.parse_args(argv)
        formats = figures.check_formats([f for f in args.format.split(",") if f.strip()])
        frame = results.load_results(args.workdir)
        for metric in args.metric:
            figures.check_metric(frame, metric)
    except (ConfigError, errors.DamagedFile, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    out = Path(args.out) if args.out else Path(args.workdir) / "figures"
    written = figures.default_figures(args.workdir, out, formats=formats, metrics=args.metric,
                                      index=not args.no_index)
    for path in dict.fromkeys(written):
        print(path)
    return 0


def reproduce_main(argv) -> int:
    p = _Parser(prog="deadjax reproduce", description="Runs a paper reproduction: its sweeps, "
                "figures and checks (docs/reproductions.md). Exit status 0 when every check "
                "passes, 1 otherwise.")
    p.add_argument("name", help="one of " + ", ".join(reproductions.NAMES))
    p.add_argument("--quick", action="store_true",
                   help="scaled-down run (a minute or two on 2 CPU cores)")
    p.add_argument("--workdir", default=None, help="default runs/NAME")
    p.add_argument("--figures", default=None, help="default figures/NAME")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training, then check what finished (plasticity_gpu)")
    try:
        args = p.parse_args(argv)
        if args.name not in reproductions.NAMES:
            raise ConfigError(f"reproduction {args.name!r} is unknown; choose one of "
                              f"{', '.join(reproductions.NAMES)}.")
        if args.time_budget is not None and not args.time_budget > 0:
            raise ConfigError(f"--time-budget = {args.time_budget:g} must be a positive "
                              "number of seconds.")
        summary = reproductions.reproduce(args.name, quick=args.quick, workdir=args.workdir,
                                          figdir=args.figures, time_budget=args.time_budget)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return 0 if all(c["pass"] for c in summary["checks"]) else errors.EXIT_FAILED


COMMANDS = {"sweep": sweep_main, "status": status_main, "figures": figures_main,
            "reproduce": reproduce_main}


def main(argv=None) -> int:
    """``deadjax COMMAND ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's INFO lines
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + "\n".join(f"  deadjax {c} --help" for c in COMMANDS))
        return 0 if argv else EXIT_BAD_CONFIG
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        print(f"error: {command!r} is not a deadjax command; choose one of "
              f"{', '.join(COMMANDS)}{f' (did you mean {close[0]}?)' if close else ''}.",
              file=sys.stderr)
        return EXIT_BAD_CONFIG
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
