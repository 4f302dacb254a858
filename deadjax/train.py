"""The host loop of one chunk, top to bottom.

A chunk (up to ``train.max_population`` members of one group, padded to the
population size and sharded over the devices) starts from its latest
checkpoint, or from ``init`` at step 0. Then, once per evaluation (never per
step or per member):

1. **program call**: the group's one compiled program trains every member to
   the evaluation's step and evaluates them (the step-0 evaluation is the same
   program with no step to take). JAX dispatches it and returns at once
   (:meth:`deadjax.population.Compiled.start`); on one CPU device a full
   evaluation's costly diagnostics then run in worker threads, beside the
   next interval's training;
2. while the device runs it, the host records the *previous* evaluation:
   **device to host** (once its costly diagnostics are in: its scalars, each
   unit's dead flag and, at full evaluations, histograms, as NumPy arrays),
   **rows** of the results table
   (and histograms, and the unit lifelines' events since the evaluation
   before), **summaries** (TensorBoard events), **progress**;
3. **checkpoint** (:func:`is_checkpoint`: at the first evaluation at or
   after each multiple of ``train.checkpoint_every``, and at the last step):
   the host first records this evaluation, then starts saving the real
   members' state (Orbax writes it in the background) before the next
   program call, which donates the state.
4. **stop**, when a SIGTERM or SIGINT has arrived (:class:`StopRequest`):
   the evaluation just taken is recorded and checkpointed, and the sweep
   raises :class:`deadjax.errors.Stopped`; at most the interval in progress
   when the signal came is lost.

So the device never waits for files except at checkpoints, at most one
evaluation is in flight (its scalars on the device while the next interval
runs), rows, events and checkpoints are written in step order, and a
checkpoint at step *s* is started only once every row up to *s* is on disk:
a kill at any moment resumes from the last finalised checkpoint and rewrites
the rows after it (parts are replaced whole, never duplicated).

:func:`run_chunk` is that loop; :func:`evaluation_steps` and
:func:`is_full_evaluation` say when it evaluates and how much.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import jax
import numpy as np

from deadjax import checkpoints, errors, population, results, sharding
from deadjax import summaries as summary_lib
from deadjax import sweep as sweep_lib

log = logging.getLogger("deadjax")


def evaluation_steps(start: int, total: int, eval_every: int) -> list[int]:
    """The steps after ``start`` at which a run of ``total`` steps evaluates:
    every multiple of ``eval_every``, and ``total`` itself."""
    steps = list(range((start // eval_every + 1) * eval_every, total, eval_every))
    if total > start:
        steps.append(total)
    return steps


def is_checkpoint(step: int, previous: int, total: int, every: int) -> bool:
    """Whether the evaluation at ``step`` (the one before it at ``previous``)
    writes a checkpoint: at the first evaluation at or after each multiple of
    ``every`` (``train.checkpoint_every``, whatever ``train.eval_every``), and
    at the last step ``total`` (also when it is 0: ``train.steps = 0`` leaves
    a loadable member). Step 0 needs none otherwise: the initialisation is
    recomputed exactly from the seeds."""
    return step == total or (step > 0 and step // every > previous // every)


def checkpoint_steps(start: int, total: int, config) -> list[int]:
    """The steps after ``start`` at which a run checkpoints (the progress
    header prints them)."""
    previous, out = start, []
    for step in evaluation_steps(start, total, config.train.eval_every):
        if is_checkpoint(step, previous, total, config.train.checkpoint_every):
            out.append(step)
        previous = step
    return out


class StopRequest:
    """Set by a signal handler; the host loop stops at the next evaluation.

    ``install()`` makes SIGTERM (how SLURM and preemptible VMs stop a job) and
    SIGINT (Ctrl-C) request a stop instead of killing the process; a second
    SIGINT stops at once (KeyboardInterrupt). ``restore()`` puts the previous
    handlers back."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"deadjax: {signal.Signals(signum).name} received; stopping at the next "
              "evaluation (a second Ctrl-C stops at once)", file=sys.stderr, flush=True)

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def is_full_evaluation(step: int, total: int, config) -> bool:
    """Whether the evaluation at ``step`` computes the costly diagnostics
    (percentiles, Jacobian singular values, effective rank, histograms): at
    step 0, at the last step ``total``, and at every multiple of
    ``eval_every * diagnostics.full_every``. Depends on the step alone, so a
    resumed run evaluates as an uninterrupted one."""
    every = config.train.eval_every * config.diagnostics.full_every
    return step == 0 or step == total or step % every == 0


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


def run_chunk(compiled: population.Compiled, group, chunk_index: int, members: list, data,
              workdir, swept, *, summaries=None, progress=None, stop=None,
              redo_before: int | None = None):
    """Trains one chunk of ``group`` (its real ``members``, in order) from its
    latest checkpoint to ``train.steps``, writing at every evaluation; returns
    the final state (padded members included). ``stop``: a
    :class:`StopRequest` (any object true once a stop is wanted).
    ``redo_before``: the chunk's rows of that step are missing or damaged, so
    it resumes from its newest checkpoint before it (or from the start) and
    rewrites every row after."""
    cfg = group.config
    total = cfg.train.steps
    n = len(members)
    # A chunk keeps the members it was given, also when train.max_population
    # changed since: the population is at least that size.
    size = max(sharding.population_size(len(group.points), group.chunk_size),
               sharding.population_size(n, n))
    padded = members + [members[0]] * (size - n)
    seeds = np.asarray([p.config.seed for p in padded], np.int32)
    hparams = compiled.program.hparams_of([p.config for p in padded])
    state = compiled.init(*sharding.shard_members((seeds, hparams)))
    ids = [p.id for p in members]
    meta = {"points": ids, "group": group.id, "chunk": chunk_index,
            "config": sweep_lib._jsonable(cfg)}
    writer = sharding.is_writer()

    with checkpoints.ChunkCheckpointer(workdir, group.id, chunk_index,
                                       max_to_keep=cfg.train.keep_checkpoints) as ckpt:
        # The restore target: the real members' initial state, whose values
        # fill what an older checkpoint lacks (checkpoints.ADAPTABLE).
        template = jax.tree.map(lambda a: np.asarray(a)[:n], sharding.to_host(state))
        found = ckpt.restore_latest(template, points=ids, before=redo_before)
        start = 0
        evaluated: list[int] = []  # every step whose rows this chunk has written
        lifelines = results.Lifelines(members)  # each unit's dead flag, step to step
        if found is not None:
            start, restored, record = found
            evaluated = [s for s in record.get("evaluations", []) if s <= start]
            lifelines.resume(start, restored)
            state = sharding.shard_members(_pad(restored, size))
            log.info("resuming %s chunk %d at step %d", group.id, chunk_index, start)
            if start >= total:
                return state
        if progress is not None and writer:
            progress.begin(group, chunk_index, start, n)

        def record(step, evaluation, full):
            """The host's work for one evaluation, in order."""
            # device to host (collective: every process takes part), once the
            # costly diagnostics computed beside training are in
            scalars, tables = evaluation.result()
            host = sharding.to_host(scalars)
            host_hists = sharding.to_host(tables["histograms"]) if full and tables["histograms"] \
                else {}
            units = sharding.to_host(tables["units"])
            if not writer:
                return
            # rows
            results.write_part(workdir, group.id, chunk_index, step,
                               results.rows_for_evaluation(members, step, host, swept))
            if host_hists:
                results.write_histograms(workdir, group.id, chunk_index, step, members,
                                         host_hists)
            if "dead" in units:
                results.write_units(workdir, group.id, chunk_index, step,
                                    lifelines.events(step, units))
            # summaries
            if summaries is not None:
                summaries.write_evaluation(members, step, host, host_hists,
                                           resumed_from=start if start else None)
            # progress
            if progress is not None:
                progress(group, chunk_index, step, total, n, host)

        pending = None  # the evaluation whose host work waits for the next call
        previous = start
        # Step 0 is the initialisation, evaluated by the same program.
        for step in ([0] if start == 0 else []) + evaluation_steps(start, total,
                                                                   cfg.train.eval_every):
            full = is_full_evaluation(step, total, cfg)
            # the program call (asynchronous), then the previous evaluation's host work
            state, evaluation = compiled.start(state, data, step, full)
            if pending is not None:
                record(*pending)
            pending = (step, evaluation, full)
            evaluated.append(step)
            # checkpoint (collective too), after this evaluation's rows
            due = is_checkpoint(step, previous, total, cfg.train.checkpoint_every)
            previous = step
            stopping = step < total and sharding.any_process(bool(stop))
            if due or stopping:
                record(*pending)
                pending = None
                ckpt.save(step, _real(state, n), dict(meta, evaluations=sorted(set(evaluated))))
            if stopping:
                ckpt.wait()
                raise errors.Stopped(group.id, chunk_index, step, total)
        if pending is not None:
            record(*pending)
    if summaries is not None:
        summaries.close_chunk()
        summary_lib.write_aggregates(workdir)
    return state
