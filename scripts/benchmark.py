"""Benchmarks deadjax's training of the seed MLP; prints Markdown tables.

    python scripts/benchmark.py --device cpu                    # all sections
    python scripts/benchmark.py --device gpu --repeats 3        # populations 1..4096
    python scripts/benchmark.py --device gpu --only core --precisions highest,tf32,bf16
    python scripts/benchmark.py --only core --populations 1,8,64 --steps 200
    python scripts/benchmark.py --only claim                    # 1,000 members vs 5 runs

Sections (``--only``):

``core``
    member-steps per second of the seed MLP (784-128-128-10 ReLU, He-normal,
    batch 128, Adam 1e-3, ``random`` data, ``shuffle`` order) trained by
    deadjax (``population.Compiled.train_chunk``, diagnostics off) against a
    hand-written ``jit(scan(vmap(step)))`` of the same model and against the
    members trained one after another (``jit(scan(step))`` per member), from
    the same initial state; compile time apart; the share of the device's
    float32 matmul peak (measured here with a 4096² matmul), counting
    ``6 · parameters · batch`` FLOPs per member-step. ``--precisions`` runs
    the table once per ``train.precision`` (highest, tf32, bf16), each against
    the matmul peak measured at that precision; ``--core-budget`` caps the
    section's seconds (populations left when a precision's share is spent
    are listed as skipped); ``--trace-dir`` records a profiler trace of one
    call of each program at every population where deadjax is below
    ``--trace-below`` of the hand-written program, and prints where the
    device time goes.
``diagnostics``
    the same at population 64 with diagnostics on (default ``diagnostics.*``,
    ``train.eval_every = 100``) against off.
``interventions``
    each ``interventions.method`` on every member of a population of 64 seed
    MLPs (``interventions.every = 100``, diagnostics off) against ``none``:
    the cost of continual backprop's per-step bookkeeping and of the
    periodic probe pass and fresh draws of the others.
``families``
    the cost of diagnostic families (``--families``, default ``sharpness``)
    at population 64 (``--diag-population``) and ``train.eval_every = 100``:
    intervals of 100 steps and an evaluation (not full) with each family
    (and ``output``, always measured) against ``output`` alone and against
    diagnostics off; the first evaluation of a fresh population apart (the
    sharpness family's cold start from its fixed vector) and, for
    ``sharpness``, the Hessian-vector products used per evaluation.
``evaluation``
    one evaluation of the ``mnist1d1024`` sweep's group (1,024 members;
    ``--sweep-scale`` divides them), full and not, with diagnostics off, each
    default family alone beside ``output``, and all of them: what each family
    adds, and each program's compile time (not run by default: minutes).
``io``
    a 64-seed sweep through ``runner.run_sweep`` with TensorBoard on: the time
    spent writing results, histograms, summaries and checkpoints against the
    time spent training (compile excluded), at the default intervals.
``sweep``
    whole sweeps as a user runs them (``scripts/sweep.py``'s code path:
    plan, compile, train, evaluate, results, TensorBoard, checkpoints, the
    final table; data generated or loaded in the run) against a hand-written
    program doing the same training and evaluations
    (:class:`deadjax.benchmarking.HandwrittenSweep`), whole wall times,
    interleaved; where deadjax's time goes; and the cost of the default
    diagnostics on the 1,024-member sweep.
``claim``
    "a thousand models in the time of five": the wall time of a sweep of
    ``--claim-members`` (1,000) seeds of one job (``--claim-config``, default
    the MNIST-1D default job, experiments/mnist1d_mlp.py) through
    ``scripts/sweep.py``'s code path, against the same job as
    ``--claim-singles`` (5) single-seed sweeps run one after another through
    the same code path, each from a fresh process state; median of
    ``--claim-repeats`` rounds, and the ratio.

Every timing is repeated ``--repeats`` times, deadjax and its baseline
interleaved, and the tables give medians. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import tempfile
import time
from typing import Sequence

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from deadjax import benchmarking as bm  # noqa: E402
from deadjax import (checkpoints, cli, diagnostics, interventions, population,  # noqa: E402
                     results, runner)
from deadjax import data as data_lib, sharding, summaries  # noqa: E402
from deadjax.config import default_config  # noqa: E402



# --------------------------------------------------------------------------
# Flags and devices
# --------------------------------------------------------------------------

SECTIONS = ("core", "diagnostics", "interventions", "families", "evaluation", "io", "sweep",
            "claim")
PRECISIONS = ("highest", "tf32", "bf16")
RECORD: dict = {}  # every section's numbers, for --json
TRACED = [0]       # populations traced so far (--trace-max)

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--populations", default=None,
                   help="comma-separated, run in this order (the table is sorted; with "
                        "--core-budget the last ones are those skipped); default 1,8,64,256 "
                        "(cpu) or 1,4,...,4096 (gpu)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed chunk; default 200 (cpu) or 1000 (gpu)")
    p.add_argument("--member-steps", type=int, default=None,
                   help="cap on population x steps per timed chunk (big populations then "
                        "time fewer steps); default 6400 (cpu), 262144 (gpu)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=SECTIONS, action="append",
                   help="run only this section (repeatable); default all")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="train.precision of every section (default highest)")
    p.add_argument("--precisions", default=None,
                   help="comma-separated train.precision values of the core section, "
                        "e.g. highest,tf32,bf16 (default: --precision)")
    p.add_argument("--core-budget", type=float, default=0.0,
                   help="seconds the core section may take (0: no cap); populations left "
                        "when a precision's share is spent are skipped and listed")
    p.add_argument("--trace-dir", default=None,
                   help="core: profiler traces of one call of each program where deadjax "
                        "is below --trace-below of the hand-written program")
    p.add_argument("--trace-below", type=float, default=0.95)
    p.add_argument("--trace-max", type=int, default=6,
                   help="at most this many populations traced in all (a trace takes seconds)")
    p.add_argument("--loop-members", type=int, default=4,
                   help="members timed one after another for the loop baseline")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--diag-population", type=int, default=64)
    p.add_argument("--diag-chunks", type=int, default=0,
                   help="evaluation intervals per diagnostics timing (0: "
                        "diagnostics.full_every, one full evaluation per timing)")
    p.add_argument("--families", default="sharpness",
                   help="comma-separated diagnostic families of the families section")
    p.add_argument("--family-chunks", type=int, default=2,
                   help="evaluation intervals per timing of the families section")
    p.add_argument("--io-steps", type=int, default=1000,
                   help="train.steps of the io sweep (checkpoints every 1000)")
    p.add_argument("--io-population", type=int, default=64)
    p.add_argument("--io-diagnostics", action="store_true",
                   help="diagnostics on in the io sweep (adds histograms to the writing, "
                        "and the diagnostics' own cost to the training time)")
    p.add_argument("--sweeps", default="seed64,mnist1d1024,mnist60k",
                   help="comma-separated sweep cases of the sweep section")
    p.add_argument("--sweep-scale", type=int, default=1,
                   help="divide the sweeps' members, examples and steps (quick checks)")
    p.add_argument("--sweep-budget", type=float, default=0.0,
                   help="seconds the sweep section may take (0: no cap); repeats and cases "
                        "that would not fit are skipped and listed")
    p.add_argument("--claim-config", default="experiments/mnist1d_mlp.py")
    p.add_argument("--claim-members", type=int, default=1000)
    p.add_argument("--claim-singles", type=int, default=5)
    p.add_argument("--claim-steps", type=int, default=0,
                   help="train.steps of the claim's job (0: the config's)")
    p.add_argument("--claim-max-population", type=int, default=0,
                   help="train.max_population of the big sweep (0: all members in one)")
    p.add_argument("--claim-repeats", type=int, default=None, help="default --repeats")
    p.add_argument("--claim-budget", type=float, default=0.0,
                   help="seconds the claim section may take (0: no cap); a round starts "
                        "only if the one before would fit again")
    p.add_argument("--json", default=None, help="also write every section's numbers here")
    args = p.parse_args(argv)
    gpu = args.device == "gpu"
    args.populations = ([int(s) for s in args.populations.split(",")] if args.populations
                        else ([4 ** k for k in range(7)] if gpu else [1, 8, 64, 256]))
    args.steps = args.steps or (1000 if gpu else 200)
    if args.member_steps is None:
        args.member_steps = 2 ** 18 if gpu else 6400
    args.only = args.only or [s for s in SECTIONS if s not in ("claim", "evaluation")]
    args.precisions = ([x.strip() for x in args.precisions.split(",") if x.strip()]
                       if args.precisions else [args.precision or "highest"])
    bad = [x for x in args.precisions if x not in PRECISIONS]
    if bad:
        p.error(f"--precisions: {', '.join(bad)} not allowed; choose from "
                f"{', '.join(PRECISIONS)}")
    args.precision = args.precision or args.precisions[0]
    args.claim_repeats = args.claim_repeats or args.repeats
    args.families = [f for f in args.families.split(",") if f]
    return args


def pick_device(kind: str):
    """The first device of ``kind``; exits with a clear message if there is none."""
    try:
        return jax.devices(kind)[0]
    except RuntimeError as e:
        sys.exit(f"--device {kind}: JAX sees no {kind.upper()} ({e}). Install a CUDA build "
                 "of jaxlib (pip install 'jax[cuda12]') on a machine with an NVIDIA GPU, "
                 "or run with --device cpu.")


def describe_machine(device) -> str:
    import flax
    import jaxlib
    import optax
    return (f"{device.device_kind} ({device.platform}), {os.cpu_count()} CPU cores, "
            f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, "
            f"optax {optax.__version__}, load average {os.getloadavg()[0]:.1f} at start")


def steps_for(population: int, args) -> int:
    if args.member_steps <= 0:
        return args.steps
    return max(10, min(args.steps, args.member_steps // population))


# --------------------------------------------------------------------------
# Timing programs that donate their state
# --------------------------------------------------------------------------

def write_record(args) -> None:
    """``--json``: every section's numbers so far (rewritten after each)."""
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(RECORD, f, indent=1, default=float)


def compile_timed(jitted, *example):
    """``(compiled, seconds)``: ahead-of-time lowering and compilation."""
    t = time.perf_counter()
    compiled = jitted.lower(*example).compile()
    return compiled, time.perf_counter() - t


class Runner:
    """Calls a compiled program that maps ``(state, *extra) -> (state, ...)``
    and keeps its state. ``stop_after``: the program is deadjax's
    ``Compiled.chunk``, whose last arguments are the step to train to (it
    trains ``stop - step`` steps) and whether the evaluation is full, so each
    call passes ``step + stop_after`` and the next entry of ``full`` (a
    cycle)."""

    def __init__(self, compiled, state, *extra, stop_after: int | None = None,
                 full: Sequence[bool] = (True,)):
        self.compiled, self.state, self.extra = compiled, state, extra
        self.stop_after, self.full, self.calls = stop_after, tuple(full), 0

    def __call__(self, calls: int = 1) -> float:
        """Seconds of ``calls`` consecutive calls, until the result is ready.
        ``stop_after = 0`` times ``train_chunk`` with no step to take: the
        evaluation alone."""
        train_chunk = self.stop_after is not None
        step = int(jax.device_get(self.state.step[0])) if train_chunk else 0
        t = time.perf_counter()
        for i in range(1, calls + 1):
            tail = ()
            if train_chunk:
                full = self.full[self.calls % len(self.full)]
                tail = (jnp.int32(step + i * self.stop_after), jnp.bool_(full))
            self.state = self.compiled(self.state, *self.extra, *tail)[0]
            self.calls += 1
        jax.block_until_ready(self.state)
        return time.perf_counter() - t


def interleaved(runners: dict, repeats: int, calls: int = 1) -> dict[str, list[float]]:
    """One warm-up call each, then ``repeats`` rounds timing each runner in turn."""
    for r in runners.values():
        r(1)
    times = {k: [] for k in runners}
    for _ in range(repeats):
        for k, r in runners.items():
            times[k].append(r(calls))
    return times


# --------------------------------------------------------------------------
# Core: deadjax vs hand-written vs a loop over members
# --------------------------------------------------------------------------

def core_row(population: int, args, peak: float, precision: str,
             loops: dict) -> dict:
    """One row of the core table at ``precision``. ``loops`` caches the loop
    baseline's rate by steps per timing (it does not depend on the
    population), so each precision compiles and times it once per length."""
    t_row = time.perf_counter()
    steps = steps_for(population, args)
    cfg = bm.seed_config(eval_every=steps, steps=10 ** 6, precision=precision,
                         max_population=population)
    compiled, state, data = bm.deadjax_population(cfg, population)
    hw = bm.Handwritten(cfg, data_lib.load(cfg))
    members = hw.from_deadjax(state)
    loop_states = ([] if steps in loops else  # before the timings donate ``state``
                   [bm.member(hw.from_deadjax(state), i)
                    for i in range(min(population, args.loop_members))])
    dj_prog, dj_compile = compile_timed(compiled.chunk, state, data, jnp.int32(steps),
                                        jnp.bool_(True))
    hw_prog, hw_compile = compile_timed(hw.population_program(steps), members)

    eval_state = jax.tree.map(jnp.copy, state)  # train_chunk donates its state
    runners = {"deadjax": Runner(dj_prog, state, data, stop_after=steps),
               "evaluation": Runner(dj_prog, eval_state, data, stop_after=0),
               "handwritten": Runner(hw_prog, members)}
    times = interleaved(runners, args.repeats)
    if loop_states:
        loop_prog, _ = compile_timed(hw.member_program(steps), loop_states[0])
        loop = [Runner(loop_prog, s) for s in loop_states]
        for r in loop:
            r(1)
        loop_times = [sum(r(1) for r in loop) for _ in range(args.repeats)]
        loops[steps] = bm.median([len(loop) * steps / t for t in loop_times])

    work = population * steps
    # A call trains ``steps`` steps and then evaluates (train/test metrics), as
    # in a sweep; the hand-written program only trains. The steps alone are
    # timed as the call less the evaluation alone, measured in the same round.
    dj = [work / (t - e) for t, e in zip(times["deadjax"], times["evaluation"])]
    with_eval = [work / t for t in times["deadjax"]]
    hand = [work / t for t in times["handwritten"]]
    loop_rate = loops[steps]
    flops = bm.flops_per_member_step(bm.SEED_FEATURES, bm.SEED_WIDTHS, bm.SEED_CLASSES,
                                     bm.SEED_BATCH)
    row = {
        "precision": precision, "population": population, "steps": steps,
        "deadjax": bm.median(dj), "handwritten": bm.median(hand),
        "ratio": bm.median([a / b for a, b in zip(dj, hand)]),  # paired per round
        "ratios": [a / b for a, b in zip(dj, hand)],
        "with_eval": bm.median(with_eval),
        "ratio_with_eval": bm.median([a / b for a, b in zip(with_eval, hand)]),
        "evaluation_s": bm.median(times["evaluation"]),
        "loop": loop_rate, "speedup": bm.median(dj) / loop_rate,
        "peak_deadjax": 100 * bm.median(dj) * flops / peak,
        "peak_handwritten": 100 * bm.median(hand) * flops / peak,
        "compile_deadjax": dj_compile, "compile_handwritten": hw_compile,
    }
    if row["ratio"] < args.trace_below:
        row["profile"] = profile(population, steps, precision, args, dj_prog, hw_prog,
                                 runners)
    row["seconds"] = time.perf_counter() - t_row
    return row


def profile(population, steps, precision, args, dj_prog, hw_prog, runners) -> dict:
    """Why deadjax is below the hand-written program at this population: the
    launches each compiled program holds (static) and, with ``--trace-dir``,
    a profiler trace of one call of each (device time per step, kernels per
    step, the costliest kernels)."""
    out = {"ops": {"deadjax": bm.hlo_op_counts(dj_prog),
                   "handwritten": bm.hlo_op_counts(hw_prog)}}
    if not args.trace_dir or TRACED[0] >= args.trace_max:
        return out
    TRACED[0] += 1
    for name in ("deadjax", "handwritten"):
        where = os.path.join(args.trace_dir, f"{precision}_p{population}_{name}")
        try:
            with jax.profiler.trace(where, create_perfetto_trace=True):
                runners[name](1)
            out[name] = bm.trace_summary(where)
        except Exception as e:  # the profiler may be unavailable (sandboxed runtimes)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def profile_note(row, below: float) -> str:
    p = row["profile"]
    ops = "; ".join(f"{k}: " + ", ".join(f"{n} {c}" for n, c in v.items())
                    for k, v in p["ops"].items())
    text = (f"- {row['precision']}, population {row['population']}: ratio "
            f"{row['ratio']:.2f} < {below:.2f}. Compiled programs (instructions outside "
            f"fusions): {ops}.")
    for name in ("deadjax", "handwritten"):
        t = p.get(name)
        if not t:
            continue
        if "error" in t:
            text += f" Trace of {name}: {t['error']}."
            continue
        per = row["steps"]
        top = ", ".join(f"{n[:60]} {us / per:.1f} us ({c // max(per, 1)}/step)"
                        for n, us, c in t["top"][:5])
        text += (f" Trace of one {name} call ({t['where']}): {t['busy_us'] / per:.1f} us busy "
                 f"and {t['events'] / per:.1f} kernels per step; costliest: {top}.")
    return text


def core_section(args, device) -> None:
    """Prints the core table once per precision, each against the matmul peak
    measured at that precision, within ``--core-budget``."""
    budget = bm.Budget(args.core_budget)
    flops = bm.flops_per_member_step(bm.SEED_FEATURES, bm.SEED_WIDTHS, bm.SEED_CLASSES,
                                     bm.SEED_BATCH)
    params = bm.num_params(bm.SEED_FEATURES, bm.SEED_WIDTHS, bm.SEED_CLASSES)
    cap = (f", capped at {args.member_steps:,} member-steps" if args.member_steps > 0 else "")
    print(f"a member-step counts {flops / 1e6:.1f} MFLOP (6 x {params:,} parameters x batch "
          f"{bm.SEED_BATCH}); loop = {args.loop_members} members one after another; "
          f"steps per timing {args.steps}{cap}\n", flush=True)
    peaks, all_rows = {}, []
    for k, precision in enumerate(args.precisions):
        share = budget.share(len(args.precisions) - k)
        t0 = time.perf_counter()
        peak = bm.matmul_flops_per_second(device, size=args.matmul_size,
                                          repeats=max(args.repeats, 3), precision=precision)
        peaks[precision] = peak
        rows, skipped, loops = [], [], {}
        for population in args.populations:
            if rows and time.perf_counter() - t0 > share:
                skipped.append(population)
                continue
            rows.append(core_row(population, args, peak, precision, loops))
            print(f"<!-- {precision}: population {population} done in "
                  f"{rows[-1]['seconds']:.1f} s -->", flush=True)
        rows.sort(key=lambda r: r["population"])
        all_rows += rows
        out = [f"### train.precision = {precision}\n\nmatmul peak ({args.matmul_size}², "
               f"float32 arrays under this precision, jit, median of "
               f"{max(args.repeats, 3)}): {peak / 1e9:,.1f} GFLOP/s "
               f"({time.perf_counter() - t0:.0f} s for this table)\n", core_table(rows)]
        notes = [profile_note(r, args.trace_below) for r in rows if "profile" in r]
        if notes:
            out.append(f"\nBelow {args.trace_below:.2f} of the hand-written program:\n\n"
                       + "\n".join(notes))
        if skipped:
            out.append(f"\nskipped (--core-budget {args.core_budget:.0f} s spent): populations "
                       + ", ".join(map(str, skipped)))
        print("\n".join(out) + "\n", flush=True)
        RECORD["core"] = {"peaks": peaks, "rows": all_rows}
        write_record(args)


def core_table(rows) -> str:
    head = ("| population | steps/timing | deadjax member-steps/s | hand-written member-steps/s "
            "| ratio | with evaluation: member-steps/s (ratio; evaluation s) "
            "| loop member-steps/s | speed-up over loop | % of matmul peak "
            "(deadjax / hand-written) | compile s (deadjax / hand-written) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['population']} | {r['steps']} | {r['deadjax']:,.0f} | {r['handwritten']:,.0f} "
            f"| {r['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in r['ratios'])}) "
            f"| {r['with_eval']:,.0f} ({r['ratio_with_eval']:.2f}; {r['evaluation_s']:.2f}) "
            f"| {r['loop']:,.0f} | {r['speedup']:.1f}x "
            f"| {r['peak_deadjax']:.1f} / {r['peak_handwritten']:.1f} "
            f"| {r['compile_deadjax']:.1f} / {r['compile_handwritten']:.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Diagnostics overhead
# --------------------------------------------------------------------------

def diagnostics_overhead(args) -> str:
    """Diagnostics on (the default ``diagnostics.*``) against off at the
    default interval. A timing covers ``diagnostics.full_every`` intervals,
    the first with a full evaluation (the costly statistics), as a sweep
    runs them."""
    population, every = args.diag_population, 100
    full_every = default_config().diagnostics.full_every
    runners, compiles = {}, {}
    for name, enabled in (("off", False), ("on", True)):
        cfg = bm.seed_config(eval_every=every, steps=10 ** 6, diagnostics=enabled,
                             precision=args.precision, max_population=population)
        compiled, state, data = bm.deadjax_population(cfg, population)
        prog, compiles[name] = compile_timed(compiled.chunk, state, data, jnp.int32(every),
                                             jnp.bool_(True))
        runners[name] = Runner(prog, state, data, stop_after=every,
                               full=(True,) + (False,) * (full_every - 1))
    chunks = args.diag_chunks or full_every
    times = interleaved(runners, args.repeats, calls=chunks)
    work = population * every * chunks
    rate = {k: bm.median([work / t for t in v]) for k, v in times.items()}
    costs = [on / off - 1 for on, off in zip(times["on"], times["off"])]
    cost = bm.median(costs)
    return (f"population {population}, train.eval_every = {every}, "
            f"diagnostics.full_every = {full_every}, {chunks} interval(s) per timing "
            f"(the first full), {args.repeats} repeats\n\n"
            "| diagnostics | member-steps/s | compile s |\n|---|---:|---:|\n"
            f"| off | {rate['off']:,.0f} | {compiles['off']:.1f} |\n"
            f"| on (default diagnostics.*) | {rate['on']:,.0f} | {compiles['on']:.1f} |\n\n"
            f"steady-state cost of diagnostics: {100 * cost:.1f}% of the training time "
            f"(per repeat: {', '.join(f'{100 * c:.1f}%' for c in costs)}; "
            f"{'within' if cost <= 0.10 else 'ABOVE'} the 10% budget)")


def families_overhead(args) -> str:
    """Each family of ``--families`` (with ``output``) against ``output`` alone
    and against diagnostics off, at the default interval of 100 steps, not
    full evaluations (the full-only parts of ``jacobian`` and ``rank`` cost
    nothing there). The first evaluation of a fresh population (step 0,
    nothing trained) is timed once, apart: the sharpness family starts its
    Lanczos iteration there from the fixed vector, later ones warm."""
    population, every = args.diag_population, 100
    cases = {"off": None, "output": ("output",)}
    for fam in args.families:
        if fam != "output":
            cases[fam] = (fam, "output")
    runners, compiles, firsts, iters = {}, {}, {}, {}
    for name, families in cases.items():
        cfg = bm.seed_config(eval_every=every, steps=10 ** 6, diagnostics=families is not None,
                             precision=args.precision, max_population=population)
        if families is not None:
            cfg.diagnostics.families = families
        compiled, state, data = bm.deadjax_population(cfg, population)
        prog, compiles[name] = compile_timed(compiled.chunk, state, data, jnp.int32(every),
                                             jnp.bool_(False))
        t = time.perf_counter()
        state, scalars, _ = prog(state, data, jnp.int32(0), jnp.bool_(False))
        jax.block_until_ready(state)
        firsts[name] = time.perf_counter() - t
        if "sharpness_iterations" in scalars:
            iters[name] = [np.asarray(scalars["sharpness_iterations"])]
        runners[name] = Runner(prog, state, data, stop_after=every, full=(False,))
    times = interleaved(runners, args.repeats, calls=args.family_chunks)
    for name in iters:      # the products of one more (steady-state) evaluation
        r = runners[name]
        step = int(jax.device_get(r.state.step[0]))
        r.state, scalars, _ = r.compiled(r.state, *r.extra,
                                        jnp.int32(step + every), jnp.bool_(False))
        iters[name].append(np.asarray(scalars["sharpness_iterations"]))
    per = {k: bm.median(v) / args.family_chunks for k, v in times.items()}
    lines = [f"population {population}, train.eval_every = {every}, evaluations not full, "
             f"{args.family_chunks} interval(s) per timing, {args.repeats} repeats; "
             "sharpness batch: the seed MLP's whole training set (922 examples, "
             "diagnostics.sharpness_batch = 1024 >= 922)\n",
             "| diagnostics.families | s per interval (100 steps + evaluation) | "
             "evaluation cost vs output alone | vs diagnostics off | first evaluation s "
             "(step 0, cold) | compile s |", "|---|---:|---:|---:|---:|---:|"]
    for name in cases:
        extra = per[name] - per["output"]
        lines.append(f"| {name if name in ('off', 'output') else name + ', output'} "
                     f"| {per[name]:.2f} | {extra:+.2f} s | {per[name] / per['off'] - 1:+.1%} "
                     f"| {firsts[name]:.2f} | {compiles[name]:.1f} |")
    for name, (first, later) in iters.items():
        lines.append(f"\n{name}: Hessian-vector products per member at the first evaluation "
                     f"(cold): mean {first.mean():.1f}, max {first.max():.0f}; at a later one "
                     f"(warm, after 100 steps): mean {later.mean():.1f}, "
                     f"max {later.max():.0f} (diagnostics.sharpness_iters = "
                     f"{default_config().diagnostics.sharpness_iters}: the population "
                     "steps until its slowest member converges)")
    return "\n".join(lines)


def interventions_overhead(args) -> str:
    """Every member using one intervention against none, ``interventions.every
    = 100`` and ``train.eval_every = 100``: a timed interval of 100 steps holds
    one application of the periodic methods and 100 of continual backprop."""
    population, every, chunks = args.diag_population, 100, 2
    runners, compiles = {}, {}
    for method in interventions.names():
        cfg = bm.seed_config(eval_every=every, steps=10 ** 6, diagnostics=False,
                             precision=args.precision, max_population=population)
        cfg.interventions.method = method
        cfg.interventions.every = every
        compiled, state, data = bm.deadjax_population(cfg, population)
        prog, compiles[method] = compile_timed(compiled.chunk, state, data,
                                               jnp.int32(every), jnp.bool_(False))
        runners[method] = Runner(prog, state, data, stop_after=every, full=(False,))
    times = interleaved(runners, args.repeats, calls=chunks)
    work = population * every * chunks
    rows = []
    for method, ts in times.items():
        costs = [t / base - 1 for t, base in zip(ts, times["none"])]
        rows.append(f"| {method} | {bm.median([work / t for t in ts]):,.0f} | "
                    f"{100 * bm.median(costs):+.1f}% | {compiles[method]:.1f} |")
    return (f"population {population}, every member using the method, "
            f"interventions.every = {every}, {chunks} intervals of {every} steps per timing "
            f"(each ending in an evaluation without diagnostics), {args.repeats} repeats\n\n"
            "| interventions.method | member-steps/s | time vs none (median) | compile s |\n"
            "|---|---:|---:|---:|\n" + "\n".join(rows))


# --------------------------------------------------------------------------
# Summaries and checkpoints overhead
# --------------------------------------------------------------------------

class Clock:
    """Accumulates seconds by name; ``wrap`` times a function in place."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, list[float]] = {}

    def add(self, name, seconds):
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls.setdefault(name, []).append(seconds)

    @contextlib.contextmanager
    def wrap(self, owner, attr: str, name: str):
        original = getattr(owner, attr, None)
        if original is None:  # the runner no longer calls it: nothing to time
            yield
            return

        @functools.wraps(original)
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.add(name, time.perf_counter() - t)

        setattr(owner, attr, timed)
        try:
            yield
        finally:
            setattr(owner, attr, original)


@contextlib.contextmanager
def patched(owner, attr: str, value):
    original = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, original)


def timed_program(clock: Clock):
    """``Compiled.start`` waited for (the costly diagnostics computed beside
    included) and timed: training calls apart from evaluations alone (the
    step-0 evaluation), so the rest of the host loop's time is the writing."""
    original = population.Compiled.start

    def call(self, state, data, stop, full=True):
        trains = int(stop) > int(jax.device_get(state.step[0]))
        t = time.perf_counter()
        state, evaluation = original(self, state, data, stop, full)
        jax.block_until_ready((state, evaluation.result()))
        clock.add("train_chunk" if trains else "evaluate", time.perf_counter() - t)
        return state, evaluation

    return patched(population.Compiled, "start", call)


WRITING = ("device to host", "results parquet", "histograms parquet", "TensorBoard",
           "Orbax save")


def io_overhead(args) -> str:
    cfg = bm.seed_config(eval_every=100, steps=args.io_steps, diagnostics=args.io_diagnostics,
                         precision=args.precision, max_population=args.io_population)
    cfg.train.checkpoint_every = 1000
    if args.io_steps % 1000 and args.io_steps > 1000:
        cfg.train.checkpoint_every = 100 * (args.io_steps // 100)
    sweep = [{"seed": s} for s in range(args.io_population)]
    clock = Clock()
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        stack.enter_context(clock.wrap(results, "write_part", "results parquet"))
        stack.enter_context(clock.wrap(results, "write_histograms", "histograms parquet"))
        stack.enter_context(clock.wrap(checkpoints.ChunkCheckpointer, "save", "Orbax save"))
        stack.enter_context(clock.wrap(summaries.SweepSummaries, "write_evaluation",
                                       "TensorBoard"))
        stack.enter_context(clock.wrap(sharding, "to_host", "device to host"))
        stack.enter_context(timed_program(clock))
        t = time.perf_counter()
        runner.run_sweep(cfg, sweep, workdir, tensorboard=True)
        wall = time.perf_counter() - t
    chunks = clock.calls.get("train_chunk", [])
    steady = bm.median(chunks[1:]) if len(chunks) > 1 else float("nan")
    # The first training call may include compilation: count it at the
    # steady-state time. The step-0 evaluation (compiled there) is left out.
    train_s = steady * len(chunks)
    writing = sum(clock.seconds.get(k, 0.0) for k in WRITING)
    lines = [f"{args.io_population} seeds, train.steps = {args.io_steps}, eval_every 100, "
             f"checkpoint_every {cfg.train.checkpoint_every}, diagnostics "
             f"{'on' if args.io_diagnostics else 'off'}, TensorBoard on; "
             f"run_sweep wall time {wall:.1f} s (compilation included)\n",
             "| part | seconds | calls | % of training time |", "|---|---:|---:|---:|",
             f"| training (steady state, {len(chunks)} intervals) | {train_s:.2f} | "
             f"{len(chunks)} | 100 |"]
    for name in WRITING:
        if name in clock.seconds:
            s = clock.seconds[name]
            lines.append(f"| {name} | {s:.2f} | {len(clock.calls[name])} | "
                         f"{100 * s / train_s:.1f} |")
    lines.append(f"| all writing | {writing:.2f} | | {100 * writing / train_s:.1f} |")
    share = writing / train_s
    lines.append(f"\nwriting costs {100 * share:.1f}% of the training time "
                 f"({'below' if share < 0.10 else 'ABOVE'} the 10% budget)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Whole sweeps
# --------------------------------------------------------------------------

def _fresh_process_state():
    """Forgets what an earlier run left in this process (datasets, compiled
    programs), so each timed run loads, generates and compiles as a new one."""
    data_lib.clear_cache()
    population.compiled.cache_clear()
    jax.clear_caches()


def deadjax_sweep_seconds(case, workdir, diagnostics: bool = False) -> float:
    """Wall time of ``scripts/sweep.py``'s code path on ``case``."""
    cfg = ml_collections.ConfigDict(case.config.to_dict())
    cfg.diagnostics.enabled = diagnostics
    _fresh_process_state()
    t = time.perf_counter()
    _, groups, workdir = runner.plan(cfg, case.points, workdir)
    progress = cli.Progress(cli.plan_work(workdir, groups), stream=io.StringIO())
    runner.run_sweep(cfg, case.points, workdir, progress=progress)
    progress.close()
    cli.summary_table(workdir)
    return time.perf_counter() - t


def handwritten_sweep_seconds(case) -> float:
    _fresh_process_state()
    t = time.perf_counter()
    lrs = [p.get("optim.learning_rate", case.config.optim.learning_rate) for p in case.points]
    bm.HandwrittenSweep(case.config, lrs, [p["seed"] for p in case.points]).run()
    return time.perf_counter() - t


BREAKDOWN = ("compile", "training intervals", "evaluation alone (step 0)", "device to host",
             "results parquet", "histograms parquet", "TensorBoard", "Orbax save",
             "dataset")


def sweep_breakdown(case, workdir, diagnostics: bool = False) -> tuple[dict, float]:
    """Where one run's time goes: every program call waited for and timed
    (so this run is serial), the writers wrapped, compilation from JAX's own
    monitoring events. ``other`` is the rest of the wall time (planning,
    metadata, the final table, Python)."""
    clock = Clock()
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compiles.append(secs)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    cfg = ml_collections.ConfigDict(case.config.to_dict())
    cfg.diagnostics.enabled = diagnostics
    _fresh_process_state()
    with contextlib.ExitStack() as stack:
        stack.enter_context(clock.wrap(results, "write_part", "results parquet"))
        stack.enter_context(clock.wrap(results, "write_histograms", "histograms parquet"))
        stack.enter_context(clock.wrap(checkpoints.ChunkCheckpointer, "save", "Orbax save"))
        for attr in ("write_evaluation", "close_chunk"):
            stack.enter_context(clock.wrap(summaries.SweepSummaries, attr, "TensorBoard"))
        stack.enter_context(clock.wrap(summaries, "write_aggregates", "TensorBoard"))
        stack.enter_context(clock.wrap(sharding, "to_host", "device to host"))
        stack.enter_context(clock.wrap(data_lib, "load", "dataset"))
        stack.enter_context(timed_program(clock))
        t = time.perf_counter()
        runner.run_sweep(cfg, case.points, workdir)
        cli.summary_table(workdir)
        wall = time.perf_counter() - t
    seconds = dict(clock.seconds)
    seconds["compile"] = sum(compiles)
    # The first program call compiles: its compile time is counted apart.
    seconds["evaluation alone (step 0)"] = max(seconds.get("evaluate", 0.0) - sum(compiles), 0)
    seconds["training intervals"] = seconds.pop("train_chunk", 0.0)
    seconds.pop("evaluate", None)
    seconds["other"] = wall - sum(seconds.get(k, 0.0) for k in BREAKDOWN)
    return seconds, wall


def sweep_section(args) -> None:
    """Prints each case's table and where its time goes as soon as the case
    is done (a run cut short by a time limit keeps the cases before)."""
    cases = {c.name: c for c in bm.sweep_cases(args.sweep_scale)}
    chosen = [cases[name] for name in args.sweeps.split(",")]
    print(f"whole wall times, median of {args.repeats} interleaved runs (deadjax, then "
          "the hand-written program, each from a fresh process state: data loaded, "
          "programs compiled); TensorBoard, results and checkpoints written as a sweep "
          f"writes them{'; scale 1/' + str(args.sweep_scale) if args.sweep_scale > 1 else ''}\n",
          flush=True)
    skipped = []
    budget = bm.Budget(args.sweep_budget)
    RECORD["sweep"] = {}
    for case in chosen:
        if not budget.allows():
            skipped.append(case.name)
            continue
        dj, hand, diag, details = [], [], [], []
        with_diagnostics = case.name == "mnist1d1024"
        t_case = time.perf_counter()
        for r in range(args.repeats):
            t_round = time.perf_counter()
            with tempfile.TemporaryDirectory() as workdir:
                dj.append(deadjax_sweep_seconds(case, workdir))
            hand.append(handwritten_sweep_seconds(case))
            if with_diagnostics:
                with tempfile.TemporaryDirectory() as workdir:
                    diag.append(deadjax_sweep_seconds(case, workdir, diagnostics=True))
            # One more round and the breakdown run (about a round) must fit.
            if r + 1 < args.repeats and not budget.allows(2 * (time.perf_counter() - t_round)):
                skipped.append(f"{case.name} rounds {r + 2}-{args.repeats}")
                break
        ratios = [a / b for a, b in zip(dj, hand)]
        record = {"deadjax_s": dj, "handwritten_s": hand, "diagnostics_s": diag}
        if diag:
            costs = [d / o - 1 for d, o in zip(diag, dj)]
            details.append(f"with the default diagnostics: {bm.median(diag):.1f} s, "
                           f"{100 * bm.median(costs):+.1f}% against diagnostics off "
                           f"(per round: {', '.join(f'{100 * c:+.1f}%' for c in costs)})")
        if budget.allows((time.perf_counter() - t_case) / max(len(dj), 1) / 2):
            with tempfile.TemporaryDirectory() as workdir:
                parts, wall = sweep_breakdown(case, workdir)
            record["breakdown"], record["breakdown_wall_s"] = parts, wall
            details.append(f"one instrumented run (every program call waited for): "
                           f"{wall:.1f} s: " + ", ".join(
                               f"{k} {parts.get(k, 0.0):.1f}" for k in BREAKDOWN + ("other",)))
        else:
            skipped.append(f"{case.name} breakdown")
        if diag and budget.allows(bm.median(diag)):
            with tempfile.TemporaryDirectory() as workdir:
                parts, wall = sweep_breakdown(case, workdir, diagnostics=True)
            record["breakdown_diagnostics"] = parts
            details.append(f"with the default diagnostics, one instrumented run (the costly "
                           f"diagnostics waited for too, so not beside training): {wall:.1f} s: "
                           + ", ".join(f"{k} {parts.get(k, 0.0):.1f}"
                                       for k in BREAKDOWN + ("other",)))
        RECORD["sweep"][case.name] = record
        write_record(args)
        print(f"### {case.name}: {case.description}\n\n"
              "| sweep | deadjax s | hand-written s | ratio (per round) |\n|---|---:|---:|---:|\n"
              f"| {case.name} | {bm.median(dj):.1f} | {bm.median(hand):.1f} | "
              f"{bm.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) |\n\n"
              + "".join(f"{case.name} {d}\n\n" for d in details)
              + f"<!-- sweep {case.name} done in {time.perf_counter() - t_case:.0f} s -->\n",
              flush=True)
    if skipped:
        print(f"skipped (--sweep-budget {args.sweep_budget:.0f} s): " + ", ".join(skipped) + "\n",
              flush=True)


# --------------------------------------------------------------------------
# One evaluation of the mnist1d1024 group, family by family
# --------------------------------------------------------------------------

def evaluation_costs(args) -> str:
    """What each default diagnostic family adds to one evaluation of the
    ``mnist1d1024`` sweep's group (``--sweep-scale`` divides its members):
    the group's own program called at step 0 (``stop`` = the current step:
    an evaluation alone), full and not, with diagnostics off, each default
    family alone beside ``output`` (always measured), and every default
    family; compile time of each program. Medians of ``--repeats``."""
    case = {c.name: c for c in bm.sweep_cases(args.sweep_scale)}["mnist1d1024"]
    population = len(case.points)
    cases = {"off": None, "output": ("output",)}
    for fam in diagnostics.DEFAULT_FAMILIES:
        if fam != "output":
            cases[fam] = (fam, "output")
    cases["default"] = diagnostics.DEFAULT_FAMILIES
    rows = {}
    for name, families in cases.items():
        cfg = ml_collections.ConfigDict(case.config.to_dict())
        cfg.diagnostics.enabled = families is not None
        if families is not None:
            cfg.diagnostics.families = tuple(families)
        compiled, state, data = bm.deadjax_population(cfg, population)
        prog, seconds = compile_timed(compiled.chunk, state, data, jnp.int32(0),
                                      jnp.bool_(True))
        times = {True: [], False: []}
        for _ in range(args.repeats + 1):                      # the first call warms up
            for full in (True, False):
                t = time.perf_counter()
                state = jax.block_until_ready(
                    prog(state, data, jnp.int32(0), jnp.bool_(full)))[0]
                times[full].append(time.perf_counter() - t)
        rows[name] = (seconds, bm.median(times[True][1:]), bm.median(times[False][1:]))
    RECORD["evaluation"] = {k: dict(zip(("compile_s", "full_s", "regular_s"), v))
                            for k, v in rows.items()}
    write_record(args)
    base = rows["output"]
    lines = [f"{case.description}; {population} members, the group's step-0 evaluation "
             f"(full and not), medians of {args.repeats}\n",
             "| diagnostics.families | full evaluation s | other evaluation s | compile s | "
             "full: added to output alone | other: added to output alone |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, (c, f, r) in rows.items():
        added = ("" if name in ("off", "output", "default")
                 else f"{f - base[1]:+.2f} s | {r - base[2]:+.2f} s")
        lines.append(f"| {name} | {f:.2f} | {r:.2f} | {c:.1f} | {added or ' | '} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The claim: a thousand models in the time of five
# --------------------------------------------------------------------------

def claim_base(args) -> ml_collections.ConfigDict:
    """The claim's job: ``--claim-config``'s base config at ``--precision``,
    ``--claim-steps`` when given (evaluations and checkpoints kept inside)."""
    from deadjax import sweep as sweep_lib
    path = args.claim_config
    if not os.path.isfile(path):  # relative to the repository, wherever we run from
        path = os.path.join(REPO, path)
    base, _ = sweep_lib.load_experiment(path)
    base = ml_collections.ConfigDict(base.to_dict())
    base.train.precision = args.precision
    if args.claim_steps:
        base.train.steps = args.claim_steps
        base.train.eval_every = min(base.train.eval_every, args.claim_steps)
        base.train.checkpoint_every = min(base.train.checkpoint_every, args.claim_steps)
    return base


def claim_seconds(base, seeds, max_population: int) -> float:
    """Wall time of one sweep of ``seeds`` through scripts/sweep.py's code
    path (plan, compile, train, evaluate, results, TensorBoard, checkpoints,
    the final table) into a fresh workdir, from a fresh process state."""
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.train.max_population = max_population
    case = bm.SweepCase("claim", "", cfg, [{"seed": int(s)} for s in seeds])
    with tempfile.TemporaryDirectory() as workdir:
        return deadjax_sweep_seconds(case, workdir, diagnostics=bool(cfg.diagnostics.enabled))


def claim_section(args) -> str:
    """``--claim-members`` seeds as one sweep against ``--claim-singles``
    single-seed sweeps one after another (seeds 0, 1, ...), interleaved, for
    ``--claim-repeats`` rounds or until ``--claim-budget`` would be exceeded."""
    base = claim_base(args)
    n, k = args.claim_members, args.claim_singles
    big_population = args.claim_max_population or n
    budget = bm.Budget(args.claim_budget)
    big, loop, rounds = [], [], []
    for r in range(args.claim_repeats):
        if rounds and not budget.allows(rounds[-1]):
            break
        t = time.perf_counter()
        big.append(claim_seconds(base, range(n), big_population))
        print(f"<!-- claim round {r + 1}: {n} members as one sweep {big[-1]:.1f} s -->",
              flush=True)
        singles = []
        for seed in range(k):
            singles.append(claim_seconds(base, [seed], 1))
            print(f"<!-- claim round {r + 1}: single run of seed {seed} {singles[-1]:.1f} s "
                  "-->", flush=True)
        loop.append(sum(singles))
        rounds.append(time.perf_counter() - t)
        print(f"<!-- claim round {r + 1}: {n} members {big[-1]:.1f} s, {k} single runs "
              f"{loop[-1]:.1f} s ({', '.join(f'{x:.1f}' for x in singles)}) -->", flush=True)
    ratios = [a / b for a, b in zip(big, loop)]
    ratio = bm.median(ratios)
    verdict = ("holds" if ratio <= 1.0 else
               f"does not hold: {n:,} models take {ratio:.2f} times as long as {k}")
    RECORD["claim"] = {"members": n, "singles": k, "big_s": big, "loop_s": loop,
                       "ratio": ratio, "config": args.claim_config,
                       "steps": int(base.train.steps), "max_population": big_population}
    write_record(args)
    skipped = (f"; {args.claim_repeats - len(big)} round(s) skipped (--claim-budget "
               f"{args.claim_budget:.0f} s)" if len(big) < args.claim_repeats else "")
    return (f"job: {args.claim_config} ({base.model.widths} {base.model.activation}, "
            f"{base.optim.name} {base.optim.learning_rate:g}, batch {base.data.batch_size}, "
            f"{base.train.steps} steps, eval_every {base.train.eval_every}, checkpoint_every "
            f"{base.train.checkpoint_every}, diagnostics "
            f"{'on' if base.diagnostics.enabled else 'off'}, train.precision "
            f"{base.train.precision}), TensorBoard, results and checkpoints written; each "
            "sweep into a fresh workdir from a fresh process state (data generated, programs "
            f"compiled); {len(big)} round(s), interleaved{skipped}\n\n"
            f"| job | wall s (median) | per round | per model s |\n|---|---:|---:|---:|\n"
            f"| {n:,} seeds as one sweep (train.max_population {big_population}) | "
            f"{bm.median(big):.1f} | {', '.join(f'{x:.1f}' for x in big)} | "
            f"{bm.median(big) / n:.3f} |\n"
            f"| {k} single-seed sweeps, one after another | {bm.median(loop):.1f} | "
            f"{', '.join(f'{x:.1f}' for x in loop)} | {bm.median(loop) / k:.3f} |\n\n"
            f"ratio ({n:,} as one sweep / {k} single runs): **{ratio:.2f}** "
            f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}); \"{n:,} models in the "
            f"time of {k}\" {verdict} on this machine")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    with jax.default_device(device):
        print(f"# deadjax benchmark\n\nmachine: {describe_machine(device)}\n"
              f"command: python scripts/benchmark.py {' '.join(sys.argv[1:])}\n"
              f"precision: {args.precision} (core: {', '.join(args.precisions)}); "
              f"repeats: {args.repeats} (medians)\n")
        if "core" in args.only:
            print("## Core: seed MLP, diagnostics off\n", flush=True)
            core_section(args, device)
        if "diagnostics" in args.only:
            print("## Diagnostics overhead\n\n" + diagnostics_overhead(args) + "\n",
                  flush=True)
        if "interventions" in args.only:
            print("## Interventions overhead\n\n" + interventions_overhead(args) + "\n",
                  flush=True)
        if "families" in args.only:
            print("## Diagnostic families\n\n" + families_overhead(args) + "\n", flush=True)
        if "evaluation" in args.only:
            print("## One evaluation, family by family\n\n" + evaluation_costs(args) + "\n",
                  flush=True)
        if "io" in args.only:
            print("## Summaries and checkpoints overhead\n\n" + io_overhead(args) + "\n",
                  flush=True)
        if "sweep" in args.only:
            print("## Whole sweeps\n", flush=True)
            sweep_section(args)
        if "claim" in args.only:
            print(f"## {args.claim_members:,} models against {args.claim_singles} single "
                  "runs\n\n" + claim_section(args) + "\n", flush=True)
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
