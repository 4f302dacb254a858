"""What the command-line scripts do, kept out of ``scripts/`` so it can be tested."""

from __future__ import annotations

import logging
import math
import sys
import time

from ml_collections import config_flags

from deadjax import results, runner, sharding, sweep as sweep_lib
from deadjax.config import ConfigError

EXIT_BAD_CONFIG = 2


class Progress:
    """One line per evaluation when output is not a terminal; a rich bar when it is."""

    def __init__(self, total_member_steps: int, stream=sys.stderr):
        self.total = max(total_member_steps, 1)
        self.done = 0
        self.t0 = time.time()
        self.stream = stream
        self._last = {}

    def __call__(self, group, chunk, step, total, members, scalars):
        key = (group.id, chunk)
        prev = self._last.get(key, 0)
        self._last[key] = step
        self.done += (step - prev) * members
        rate = self.done / max(time.time() - self.t0, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        acc = scalars.get("test/accuracy")
        acc_text = f" test acc {float(acc[:members].mean()):.3f}" if acc is not None else ""
        print(f"[{group.id} chunk {chunk}] step {step}/{total} members {members}"
              f"{acc_text} | {self.done}/{self.total} member-steps, {rate:,.0f}/s, "
              f"{left:,.0f}s left", file=self.stream, flush=True)


def summary_table(workdir, limit: int = 40) -> str:
    frame = results.load_results(workdir)
    last = frame.sort_values("step").groupby("point").tail(1).sort_values("point")
    swept = [c for c in frame.columns if c not in results.ID_COLUMNS and "/" not in c
             and c not in ("diverged", "diverged_step", "output_constant", "born_dead",
                           "grad_norm_ratio")]
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
        jax.distributed.initialize()
    base = flags.config
    path = config_flags.get_config_filename(flags["config"])
    overrides = config_flags.get_override_values(flags["config"])
    try:
        _, sweep = sweep_lib.load_experiment(path)
        points, groups, workdir = runner.plan(base, sweep, flags.workdir, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    total = sum(len(g.points) * g.config.train.steps for g in groups)
    print(f"deadjax: {len(points)} points in {len(groups)} groups -> {workdir}",
          file=sys.stderr)
    try:
        runner.run_sweep(base, sweep, flags.workdir, overrides, progress=Progress(total),
                         num_tasks=flags.num_tasks, task_index=flags.task_index)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if sharding.is_writer():
        print(summary_table(workdir))
    return 0
