"""Runs every point of an experiment's sweep into a workdir; safe to re-run.

    python scripts/sweep.py --config experiments/mnist1d_mlp.py --workdir runs/mnist1d_mlp \
        [--config.train.steps=2000 ...]

Command-line overrides apply to every point. ``--num_tasks N --task_index I``
splits the sweep over a job array; ``--distributed`` spans hosts (docs/cluster.md). A bad config value stops the run
with one sentence naming the field, the value and what is allowed (exit 2),
before anything compiles or is written.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from deadjax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/NAME.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; an existing one is resumed.")
flags.DEFINE_integer("num_tasks", 1, "Job-array size: this task trains a deterministic "
                     "1/num_tasks share of the groups' chunks (not part of the config).")
flags.DEFINE_integer("task_index", 0, "This task's index in [0, num_tasks), e.g. "
                     "$SLURM_ARRAY_TASK_ID.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (arguments "
                  "from the environment on TPU pods and SLURM); process 0 writes.")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process "
                    "0's coordinator, where the environment does not say (bare machines).")
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # Orbax's INFO lines would drown the progress
        logging.set_verbosity(logging.WARNING)
    sys.exit(cli.sweep_main(FLAGS))


if __name__ == "__main__":
    app.run(main)
