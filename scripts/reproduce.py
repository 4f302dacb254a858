"""Runs a paper reproduction: its sweeps, its figures and its checks.

    python scripts/reproduce.py NAME [--quick] [--workdir runs/NAME] [--figures figures/NAME]
    python scripts/reproduce.py plasticity_gpu [--time-budget SECONDS]

NAME is one of mnist1d, glorot2010, he2015, ioffe2015, lu2019, schoenholz2017,
seed_remedies, plasticity, plasticity_gpu (docs/reproductions.md).
``--time-budget`` (plasticity_gpu) stops training at the next evaluation after
that many seconds, with a checkpoint, and checks the tasks that finished. The
sweeps run (or resume) into the workdir; PNG figures and ``summary.json`` (each
check's published number, its source, ours, the tolerance and the verdict) go
to the figures folder. ``--quick`` is a scaled-down run of a minute or two on
two CPU cores with looser, stated tolerances. Exit status 0 when every check
passes, 1 otherwise, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deadjax import reproductions  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=reproductions.NAMES)
    parser.add_argument("--quick", action="store_true",
                        help="scaled-down run (a minute or two on 2 CPU cores)")
    parser.add_argument("--workdir", default=None, help="default runs/NAME")
    parser.add_argument("--figures", default=None, help="default figures/NAME")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training, then check what finished (plasticity_gpu)")
    args = parser.parse_args(argv)
    try:
        summary = reproductions.reproduce(args.name, quick=args.quick, workdir=args.workdir,
                                          figdir=args.figures, time_budget=args.time_budget)
    except ValueError as e:
        if "time budget" not in str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if all(c["pass"] for c in summary["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
