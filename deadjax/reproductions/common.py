"""What every reproduction shares: running its sweeps, checks, the summary file.

A reproduction module (``deadjax/reproductions/NAME.py``) defines

    TITLE: str
    def run(workdir: Path, figdir: Path, quick: bool) -> list[Check]

``run`` trains (or resumes) its sweeps with :func:`sweep`, draws its PNGs into
``figdir`` from the results table only, and returns its checks.
:func:`deadjax.reproductions.reproduce` writes ``figdir/summary.json`` in the
DESIGN.md schema::

    {"name", "quick", "checks": [{"name", "published", "source", "ours",
                                  "tolerance", "pass"}], ...}

Quick and full runs train into different sub-folders of the workdir
(``<sweep>_quick`` and ``<sweep>``): a workdir refuses a config that differs in
anything but run length, and mixing the two would pool their points.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import ml_collections
import numpy as np
import pandas as pd

from deadjax import figures, results, runner
from deadjax import sweep as sweep_lib

log = logging.getLogger("deadjax.reproductions")


@dataclasses.dataclass
class Check:
    """One comparison of a published number with ours.

    ``published`` and ``ours`` are numbers or short texts; ``tolerance`` says in
    words (or as a number) what counts as agreement; ``passed`` is the verdict.
    """
    name: str
    published: Any
    source: str
    ours: Any
    tolerance: Any
    passed: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "published": _plain(self.published), "source": self.source,
                "ours": _plain(self.ours), "tolerance": _plain(self.tolerance),
                "pass": bool(self.passed)}


def _plain(v):
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return round(v, 6) if math.isfinite(v) else str(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def within(name: str, published: float, source: str, ours: float, tol: float,
           unit: str = "") -> Check:
    """Passes when |ours − published| ≤ tol (and ours is finite)."""
    ok = bool(np.isfinite(ours) and abs(ours - published) <= tol)
    return Check(name, published, source, ours, f"±{tol:g}{unit}", ok)


def claim(name: str, published: str, source: str, ours: str, tolerance: str,
          passed: bool) -> Check:
    """A qualitative check: the published claim, our measurement, the rule applied."""
    return Check(name, published, source, ours, tolerance, bool(passed))


# --------------------------------------------------------------------------
# Running sweeps
# --------------------------------------------------------------------------

def quiet() -> None:
    """Silences absl/orbax INFO chatter (hundreds of lines per chunk)."""
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    for name in ("absl", "orbax", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sweep(base: ml_collections.ConfigDict, points: Sequence[dict], workdir: Path,
          label: str, quick: bool, stop=None) -> pd.DataFrame:
    """Runs (or resumes) ``points`` into ``workdir/label[_quick]`` and returns
    their rows of the results table (only this sweep's points). ``stop``: as
    :func:`deadjax.runner.run_sweep`'s (it raises
    :class:`deadjax.errors.Stopped`; :func:`load_sweep` then reads what
    finished)."""
    quiet()
    sub = Path(workdir) / (f"{label}_quick" if quick else label)
    t0 = time.time()
    runner.run_sweep(base, list(points), sub, tensorboard=False, stop=stop)
    frame = load_sweep(base, points, workdir, label, quick)
    print(f"  {label}: {frame['point'].nunique()} points in {sub} ({time.time() - t0:.0f} s)",
          flush=True)
    return frame


def load_sweep(base: ml_collections.ConfigDict, points: Sequence[dict], workdir: Path,
               label: str, quick: bool) -> pd.DataFrame:
    """The rows of ``points`` in ``workdir/label[_quick]``'s results table,
    as far as they were trained."""
    sub = Path(workdir) / (f"{label}_quick" if quick else label)
    ids = {p.id for p in sweep_lib.resolve_points(base, list(points))}
    frame = results.load_results(sub)
    return frame[frame["point"].isin(ids)].reset_index(drop=True)


def experiment_path(name: str) -> Path:
    """``experiments/NAME.py`` of this checkout."""
    return Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py"


def experiment_config(name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of ``experiments/NAME.py``, the recipe a reproduction
    starts from."""
    return sweep_lib.load_experiment(experiment_path(name))[0]


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return figures.final_rows(frame).reset_index(drop=True)


def save(fig, figdir: Path, name: str, colors: int | None = None) -> Path:
    path = Path(figdir) / name
    figures.save_png(fig, path, colors)
    return path


def figure(width: float = 6.4, height: float = 4.2):
    """A Matplotlib figure on an Agg canvas (no pyplot state), like deadjax.figures."""
    return figures._figure(width, height)


def caption(fig, text: str) -> None:
    figures._caption(fig, text)


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------

def write_summary(figdir: Path, name: str, quick: bool, checks: Sequence[Check],
                  extra: dict | None = None) -> Path:
    record = {"name": name, "quick": bool(quick), "checks": [c.as_dict() for c in checks]}
    if extra:
        record.update(_plain(extra))
    path = Path(figdir) / "summary.json"
    results.atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def table(checks: Sequence[Check]) -> str:
    rows = [("check", "published", "ours", "tolerance", "pass")]
    for c in checks:
        rows.append((c.name, _short(c.published), _short(c.ours), _short(c.tolerance),
                     "PASS" if c.passed else "FAIL"))
    widths = [min(max(len(r[i]) for r in rows), 48) for i in range(5)]
    lines = []
    for r in rows:
        lines.append("  ".join(s[:48].ljust(w) for s, w in zip(r, widths)))
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)
