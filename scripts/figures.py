"""Draws the default figures of a workdir from its results table.

    python scripts/figures.py --workdir runs/mnist1d_mlp [--out runs/mnist1d_mlp/figures] \
        [--metric dead_fraction/layer_0 --metric grad_norm_ratio ...] [--format png,pdf,svg]

Writes test_accuracy, train_loss, dead_fraction and one
final_<metric>_vs_<field> per numeric swept field (docs/figures.md), plus one
<metric> per --metric, once per --format (png, pdf, svg; default png), then
index.html (every figure with its caption, and each point's last row), and
prints their paths. A workdir without results, an unknown metric or an
unknown format stops with one sentence before anything is written (exit 2).
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
    parser.add_argument("--format", default="png",
                        help="Comma-separated file formats of each figure: png, pdf, svg "
                             "(default png; PDFs embed their fonts).")
    parser.add_argument("--no-index", action="store_true", help="Do not write index.html.")
    args = parser.parse_args(argv)
    try:
        formats = figures.check_formats([f for f in args.format.split(",") if f.strip()])
        frame = results.load_results(args.workdir)
        for metric in args.metric:
            figures.check_metric(frame, metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.workdir) / "figures"
    written = figures.default_figures(args.workdir, out, formats=formats,
                                      metrics=args.metric, index=not args.no_index)
    for path in dict.fromkeys(written):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
