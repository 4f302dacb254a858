"""Draws the default figures of a workdir from its results table.

    python scripts/figures.py --workdir runs/mnist1d_mlp [--out runs/mnist1d_mlp/figures] \
        [--metric dead_fraction/layer_0 --metric grad_norm_ratio ...] [--format png,pdf,svg]

The same as ``deadjax figures``: writes test_accuracy, train_loss,
dead_fraction and one final_<metric>_vs_<field> per numeric swept field
(docs/figures.md), plus one <metric> per --metric, once per --format (png, pdf,
svg; default png), then index.html (every figure with its caption, and each
point's last row), and prints their paths. A workdir without results, an
unknown metric or an unknown format stops with one sentence before anything is
written (exit 2).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deadjax import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.figures_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
