"""What the command-line scripts do, kept out of ``scripts/`` so it can be tested."""

from __future__ import annotations

import logging
import math
import sys
import time

from ml_collections import config_flags

from deadjax import errors, results, runner, sharding, sweep as sweep_lib, train
from deadjax.errors import EXIT_BAD_CONFIG, ConfigError


class Progress:
    """One progress display for the whole sweep: chunks and groups done,
    member-steps trained, member-steps per second and time left.

    On a terminal it is a live ``rich`` bar; otherwise (logs, CI, SLURM) it
    prints one plain line per finished chunk.
    """

    def __init__(self, groups, stream=sys.stderr):
        self.stream = stream
        self.total = max(sum(len(g.points) * g.config.train.steps for g in groups), 1)
        self.chunks_left = {g.id: len({p.chunk for p in g.points}) for g in groups}
        self.num_groups = len(groups)
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
                console=Console(file=stream), transient=False)
            self._task = self._bar.add_task(self._describe(), total=self.total, rate="")
            self._bar.start()

    def _describe(self) -> str:
        groups_done = sum(1 for left in self.chunks_left.values() if left == 0)
        return f"groups {groups_done}/{self.num_groups}"

    def begin(self, group, chunk, start: int, members: int) -> None:
        """A chunk starts at ``start`` (> 0 when resumed): those steps count as done."""
        self._at[(group.id, chunk)] = start
        self.done += start * members

    def __call__(self, group, chunk, step, total, members, scalars):
        key = (group.id, chunk)
        self.done += (step - self._at.get(key, 0)) * members
        self._at[key] = step
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = self.done / elapsed
        finished = step >= total
        if finished:
            self.chunks_left[group.id] -= 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=self._describe(),
                             rate=f"{rate:,.0f}/s")
        elif finished:
            acc = scalars.get("test/accuracy")
            acc_text = (f", mean test accuracy {float(acc[:members].mean()):.4f}"
                        if acc is not None else "")
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            print(f"deadjax: {group.id} chunk {chunk} done ({members} members, {step} steps"
                  f"{acc_text}); {self._describe()}, {self.done:,}/{self.total:,} member-steps, "
                  f"{rate:,.0f} member-steps/s, {left:,.0f} s left",
                  file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line about the sweep (a chunk skipped, ...)."""
        if self._bar is not None:
            self._bar.console.print(f"deadjax: {text}")
        else:
            print(f"deadjax: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


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


def sweep_main(flags) -> int:
    if flags.distributed:
        import jax
        # Processes whose devices are CPUs need a CPU collectives backend for
        # the gathers; gloo ships with jaxlib. Accelerators use their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=getattr(flags, "coordinator_address", None),
            num_processes=getattr(flags, "num_processes", None),
            process_id=getattr(flags, "process_id", None))
    base = flags.config
    path = config_flags.get_config_filename(flags["config"])
    overrides = config_flags.get_override_values(flags["config"])
    try:
        _, sweep = sweep_lib.load_experiment(path)
        points, groups, workdir = runner.plan(base, sweep, flags.workdir, overrides)
    except (ConfigError, errors.DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"deadjax: {len(points)} points in {len(groups)} groups -> {workdir}",
          file=sys.stderr)
    for g in groups:
        print(f"deadjax: group {g.id}: {len(g.points)} points, {g.chunk_note}; "
              f"{schedule_note(g.config)}", file=sys.stderr)
    progress = Progress(groups)
    stop = train.StopRequest().install()
    try:
        runner.run_sweep(base, sweep, flags.workdir, overrides, progress=progress,
                         num_tasks=flags.num_tasks, task_index=flags.task_index, stop=stop)
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
