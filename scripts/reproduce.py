"""Runs a paper reproduction: its sweeps, its figures and its checks.

    python scripts/reproduce.py NAME [--quick] [--workdir runs/NAME] [--figures figures/NAME]
    python scripts/reproduce.py plasticity_gpu [--time-budget SECONDS]

The same as ``deadjax reproduce``. NAME is one of the reproductions of
docs/reproductions.md (``deadjax.reproductions.NAMES``). The sweeps run (or
resume) into the workdir; PNG figures and ``summary.json`` (each check's
published number, its source, ours, the tolerance and the verdict) go to the
figures folder. ``--quick`` is a scaled-down run of a minute or two on two CPU
cores with looser, stated tolerances. ``--time-budget`` (plasticity_gpu) stops
training at the next evaluation after that many seconds, with a checkpoint,
and checks the tasks that finished. Exit status 0 when every check passes, 1
otherwise, 2 for a bad argument.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deadjax import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.reproduce_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
