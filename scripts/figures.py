"""Draws the default figures of a workdir from its results table.

    python scripts/figures.py --workdir runs/mnist1d_mlp [--out runs/mnist1d_mlp/figures] \
        [--metric dead_fraction/layer_0 --metric grad_norm_ratio ...]

Writes test_accuracy.png, train_loss.png, dead_fraction.png and one
final_<metric>_vs_<field>.png per numeric swept field (docs/figures.md), plus
one <metric>.png per --metric, and prints their paths. A workdir without
results or an unknown metric stops with one sentence (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deadjax import figures, results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="Workdir written by scripts/sweep.py.")
    parser.add_argument("--out", default=None, help="Output folder (default WORKDIR/figures).")
    parser.add_argument("--metric", action="append", default=[],
                        help="Extra metric to draw against steps (repeatable).")
    args = parser.parse_args(argv)
    try:
        frame = results.load_results(args.workdir)
        for metric in args.metric:
            figures.check_metric(frame, metric)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.workdir) / "figures"
    written = figures.default_figures(args.workdir, out)
    for metric in args.metric:
        written.append(figures.save_png(figures.metric_curves(frame, metric),
                                        out / f"{figures.file_stem(metric)}.png"))
    for path in dict.fromkeys(written):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
