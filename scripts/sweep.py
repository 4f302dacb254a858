"""Runs every point of an experiment's sweep into a workdir; safe to re-run.

    python scripts/sweep.py --config experiments/mnist1d_mlp.py --workdir runs/mnist1d_mlp \
        [--config.train.steps=2000 ...] [--dry-run] [--help]

The same as ``deadjax sweep`` (deadjax/cli.py, which documents every option):
command-line overrides apply to every point; ``--num_tasks N --task_index I``
splits the sweep over a job array; ``--distributed`` spans hosts
(docs/cluster.md). A bad config value stops the run with one sentence naming
the field, the value and what is allowed (exit 2), before anything compiles or
is written; docs/faults.md lists the other exit statuses.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deadjax import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(["sweep", *sys.argv[1:]]))
