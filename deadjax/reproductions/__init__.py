"""Paper reproductions: each runs its sweeps, draws its figures and checks
deadjax's numbers against the published ones.

    python scripts/reproduce.py NAME [--quick] [--workdir runs/NAME] [--figures figures/NAME]

or, from Python, ``reproduce(NAME, quick=..., workdir=..., figdir=...)``, which
returns the summary dict also written to ``figdir/summary.json`` (DESIGN.md,
"Reproduction summaries"). One module per reproduction; its docstring gives
the paper's setup, the published numbers with their sources, and the run time.
docs/reproductions.md is the gallery.
"""

from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path

from deadjax.errors import ConfigError
from deadjax.reproductions import common

NAMES = ("mnist1d", "glorot2010", "he2015", "ioffe2015", "lu2019", "schoenholz2017",
         "seed_remedies", "plasticity", "edge_of_stability",
         "plasticity_gpu")


def module(name: str):
    if name not in NAMES:
        raise ValueError(f"reproduction {name!r} is unknown; choose one of "
                         f"{', '.join(NAMES)}.")
    return importlib.import_module(f"deadjax.reproductions.{name}")


def reproduce(name: str, *, quick: bool = False, workdir=None, figdir=None,
              verbose: bool = True, time_budget: float | None = None) -> dict:
    """Runs (or resumes) reproduction ``name``; returns its summary dict.

    ``workdir`` defaults to ``runs/NAME``, ``figdir`` to ``figures/NAME``.
    ``time_budget`` (seconds of training) is for reproductions whose ``run``
    takes one (plasticity_gpu): they stop at the next evaluation after it and
    check what finished. A module's ``run`` returns its checks, or ``(checks,
    extra)`` with more fields for the summary.
    """
    mod = module(name)
    kwargs = {}
    if time_budget:
        if "time_budget" not in inspect.signature(mod.run).parameters:
            raise ConfigError(f"reproduction {name!r} takes no time budget; only "
                             + ", ".join(n for n in NAMES if "time_budget" in
                                         inspect.signature(module(n).run).parameters)
                             + " do.")
        kwargs["time_budget"] = time_budget
    workdir = Path(workdir or Path("runs") / name)
    figdir = Path(figdir or Path("figures") / name)
    figdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if verbose:
        print(f"reproduce {name} ({'quick' if quick else 'full'}): {mod.TITLE}", flush=True)
    checks = mod.run(workdir, figdir, quick, **kwargs)
    extra = {}
    if isinstance(checks, tuple):
        checks, extra = checks
    seconds = time.time() - t0
    common.write_summary(figdir, name, quick, checks,
                         extra={"title": mod.TITLE, "seconds": round(seconds, 1),
                                "workdir": str(workdir), **extra})
    if verbose:
        print(common.table(checks))
        ok = sum(c.passed for c in checks)
        print(f"{ok}/{len(checks)} checks pass; {seconds:.0f} s; figures and summary.json "
              f"in {figdir}", flush=True)
    import json
    return json.loads((figdir / "summary.json").read_text())
