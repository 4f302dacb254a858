"""Loss of plasticity at a GPU's scale: online permuted MNIST-1D with one pass
of 60,000 examples per task over 200 tasks (Dohare et al., Nature 2024, Fig. 2).

    python scripts/reproduce.py plasticity_gpu [--time-budget SECONDS]   # a GPU
    python scripts/reproduce.py plasticity_gpu --quick                   # CPU, a minute

The CPU reproduction (:mod:`deadjax.reproductions.plasticity`, 32 x 3 units,
60 tasks of 400 steps) sees dead units grow but not plain backprop's online
accuracy fall. This one scales its permuted setup up, toward the paper's
(3 x 2000 units, 800 tasks of one pass over 60,000 MNIST images): the setup,
its sources and the pilots that chose it are in experiments/plasticity_gpu.py.
One population of 28 members: the five methods x 4 seeds at Adam 3e-3, and
plain backprop at 1e-3 and 1e-2 x 4 seeds.

The data are MNIST-1D drawn at MNIST's size (75,000 samples of the
``mnist1d`` generator's standard arguments: 60,000 training and 15,000 test
series), written once as an ``arrays`` file into the workdir
(:func:`make_data`; about 15-30 s of one CPU core).

``--time-budget`` (reproduce.py): training stops at the first end of a task
after that many seconds (with a checkpoint: the same command resumes), and
the checks and figures use the tasks that finished; the summary records how
many (``tasks_done``) and the training's seconds.

Checks (those of the CPU reproduction's permuted setup, on the members at
3e-3; "block" = a fifth of the tasks that finished):

1. plain ReLU's dead fraction grows by >= 0.1 from the end of task 0 to the
   mean of the last block;
2. plain ReLU's online accuracy over the last block is below the best earlier
   block by >= 0.01 (the check that fails at CPU scale);
3. each intervention leaves fewer dead units than plain (last block);
4. at least two of the four interventions lower plain's late online error by
   >= 0.01.

Plain backprop's online accuracy by blocks at every learning rate is recorded
too (``plain_by_learning_rate``), not checked. ``--quick``: a 7,500-sample
draw (6,000 training series), widths 32, 12 tasks of one pass (187 steps),
one seed: a check of the pipeline, whose verdicts mean little.
"""

from __future__ import annotations

import contextlib
import io
import os
import random as _py_random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deadjax import errors
from deadjax.reproductions import common, plasticity
from deadjax import sweep as sweep_lib

TITLE = ("Loss of plasticity at a GPU's scale: online permuted MNIST-1D, one pass of "
         "60,000 examples per task, 200 tasks (Dohare et al. 2024, Fig. 2)")
METHODS = plasticity.METHODS
LABEL = plasticity.LABEL


def experiment():
    """``experiments/plasticity_gpu.py`` as a module (its constants and
    ``get_config``/``get_sweep``)."""
    import importlib.util
    path = common.experiment_path("plasticity_gpu")
    spec = importlib.util.spec_from_file_location("experiment_plasticity_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(quick: bool) -> dict:
    e = experiment()
    if quick:
        return {"num_samples": 7_500, "widths": (32, 32, 32), "tasks": 12,
                "task_every": 6_000 // e.BATCH, "seeds": 1}
    return {"num_samples": e.NUM_SAMPLES, "widths": (256, 256, 256), "tasks": e.TASKS,
            "task_every": e.TASK_EVERY, "seeds": len(e.SEEDS)}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def make_data(folder, num_samples: int) -> Path:
    """``folder/mnist1d_<num_samples>.npz``: MNIST-1D from
    ``mnist1d.data.make_dataset`` with its standard arguments
    (``get_dataset_args()``: templates, noise, shear, translation, 40
    features, seed 42, an 80/20 split) but ``num_samples`` samples, as an
    ``arrays`` archive (``x_train, y_train, x_test, y_test``). Written once
    (atomically); NumPy's and Python's global generators, which
    ``make_dataset`` seeds, are restored afterwards. No network access."""
    path = Path(folder) / f"mnist1d_{int(num_samples)}.npz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    np_state, py_state = np.random.get_state(), _py_random.getstate()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from mnist1d.data import get_dataset_args, make_dataset
            args = get_dataset_args()
            args.num_samples = int(num_samples)
            raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        _py_random.setstate(py_state)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, x_train=np.asarray(raw["x"], np.float32), y_train=np.asarray(raw["y"]),
             x_test=np.asarray(raw["x_test"], np.float32), y_test=np.asarray(raw["y_test"]))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------
# Config and sweep
# --------------------------------------------------------------------------

def get_config(workdir, quick: bool = False):
    """experiments/plasticity_gpu.py's config, its data in ``workdir/data``,
    shortened when ``quick``."""
    e, s = experiment(), settings(quick)
    c = e.get_config()
    c.data.path = str(Path(workdir).absolute() / "data" / f"mnist1d_{s['num_samples']}.npz")
    c.model.widths = s["widths"]
    c.data.task_every = s["task_every"]
    c.train.eval_every = s["task_every"]
    c.train.steps = s["tasks"] * s["task_every"]
    c.train.checkpoint_every = (5 if quick else 50) * s["task_every"]
    if quick:
        c.diagnostics.probe_size = 256
        c.diagnostics.full_every = 4
    return c


def get_sweep(quick: bool = False):
    e = experiment()
    if not quick:
        return e.get_sweep()
    seeds = list(range(settings(True)["seeds"]))
    return (sweep_lib.product({"optim.learning_rate": [e.LEARNING_RATE]},
                              {"interventions.method": METHODS, "seed": seeds})
            + sweep_lib.product({"optim.learning_rate": e.PLAIN_LEARNING_RATES},
                                {"interventions.method": ["none"], "seed": seeds}))


class Deadline:
    """True once ``seconds`` have passed (never when ``seconds`` is None):
    given to :func:`deadjax.runner.run_sweep` as ``stop``, it ends training at
    the next evaluation with a checkpoint."""

    def __init__(self, seconds):
        self.end = None if not seconds else time.monotonic() + float(seconds)

    def __bool__(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


# --------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------

def run(workdir: Path, figdir: Path, quick: bool,
        time_budget: float | None = None) -> tuple[list, dict]:
    """The checks, and what the summary records besides them."""
    s = settings(quick)
    t0 = time.time()
    make_data(Path(workdir) / "data", s["num_samples"])
    print(f"  data: {s['num_samples']:,} MNIST-1D samples in {time.time() - t0:.0f} s",
          flush=True)
    base = get_config(workdir, quick)
    t1 = time.time()
    stopped = None
    try:
        frame = common.sweep(base, get_sweep(quick), workdir, "plasticity_gpu", quick,
                             stop=Deadline(time_budget))
    except errors.Stopped as e:
        stopped = str(e)
        print(f"  stopped by --time-budget {time_budget:g} s: {e}", flush=True)
        frame = common.load_sweep(base, get_sweep(quick), workdir, "plasticity_gpu", quick)
    train_s = time.time() - t1
    frame = plasticity._with_error(frame)
    main = frame[np.isclose(frame["optim.learning_rate"], base.optim.learning_rate)]
    tasks_done = int(main[main["step"] > 0]["task"].nunique()) if len(main) else 0
    _figure(frame, base, figdir, quick, tasks_done)
    checks = [_checked(tasks_done, name, lambda: check(main))
              for name, check in CHECKS]
    return checks, {
        "scale": {"widths": list(s["widths"]), "tasks": s["tasks"],
                  "task_every": s["task_every"], "batch_size": int(base.data.batch_size),
                  "num_train": int(s["num_samples"] * 0.8), "seeds": s["seeds"],
                  "learning_rate": float(base.optim.learning_rate),
                  "optimizer": str(base.optim.name)},
        "tasks_done": tasks_done, "training_seconds": round(train_s, 1),
        "stopped": stopped, "plain_by_learning_rate": plain_blocks(frame)}


CHECKS = (
    ("permuted: plain ReLU's dead units grow over tasks",
     lambda f: plasticity._dead_growth_check(f, "permuted")),
    ("permuted: plain ReLU's online accuracy falls over tasks",
     plasticity._accuracy_falls_check),
    ("permuted: every intervention leaves fewer dead units than plain ReLU",
     lambda f: plasticity._fewer_dead_check(f, "permuted")),
    ("permuted: interventions lower the late online error",
     lambda f: plasticity._late_error_check(f, "permuted")),
)


def _checked(tasks_done: int, name: str, make):
    """The check, or a failed one saying why it could not be computed (too
    few tasks finished within the time budget)."""
    if tasks_done >= 2:
        return make()
    return common.claim(name, "see the CPU reproduction", "Dohare et al., Nature "
                        "632:768-774 (2024), Fig. 2 (Online Permuted MNIST)",
                        f"not computed: {tasks_done} task(s) finished", ">= 2 tasks", False)


def plain_blocks(frame: pd.DataFrame) -> dict:
    """Plain backprop's online accuracy by blocks of a fifth of the tasks, at
    every learning rate of the population."""
    out = {}
    for lr, f in frame[frame["interventions.method"] == "none"].groupby("optim.learning_rate"):
        acc = plasticity.per_task(f, "train/online_accuracy")
        if len(acc):
            out[f"{lr:g}"] = [round(float(v), 4) for v in plasticity._fifths(acc, "none")[2]]
    return out


def _figure(frame: pd.DataFrame, base, figdir: Path, quick: bool, tasks_done: int) -> None:
    s = settings(quick)
    main = frame[np.isclose(frame["optim.learning_rate"], base.optim.learning_rate)]
    fig = common.figure(15.5, 3.8)
    axes = fig.subplots(1, 4)
    panels = (("train/online_error", False, "online error (1 - accuracy) per task"),
              ("train/online_error", True, "the same / its median over all members"),
              ("dead_fraction/all", False, "dead fraction at the end of the task"))
    for ax, (metric, relative, ylabel) in zip(axes, panels):
        curve = plasticity.per_task(main, metric, relative)
        for k, m in enumerate(METHODS):
            c = curve[curve["interventions.method"] == m].sort_values("task")
            ax.plot(c["task"], c["mean"], color=f"C{k}", label=LABEL[m], linewidth=1.0)
            if metric == "dead_fraction/all":
                ax.fill_between(c["task"], c["min"], c["max"], color=f"C{k}", alpha=0.15)
        ax.set_xlabel("task")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    ax = axes[3]
    plain = frame[frame["interventions.method"] == "none"]
    for k, (lr, f) in enumerate(sorted(plain.groupby("optim.learning_rate"))):
        c = plasticity.per_task(f, "train/online_accuracy").sort_values("task")
        ax.plot(c["task"], c["mean"], color=f"C{k + 5}", label=f"plain, Adam {lr:g}",
                linewidth=1.0)
    ax.set_xlabel("task")
    ax.set_ylabel("plain backprop's online accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    width = s["widths"][0]
    fig.suptitle(f"Online permuted MNIST-1D ({s['num_samples'] * 4 // 5:,} training series, "
                 f"one pass per task): ReLU {width} x {len(s['widths'])}, Adam "
                 f"{base.optim.learning_rate:g}, batches of {base.data.batch_size}, "
                 f"{tasks_done} of {s['tasks']} tasks")
    common.caption(fig, f"line: mean over {s['seeds']} seed(s); band (dead fraction): min-max "
                   "over seeds. Dohare et al. 2024 Fig. 2: plain backprop's accuracy falls "
                   "over the tasks, continual backprop's holds.")
    common.save(fig, figdir, "permuted.png", colors=128)


if __name__ == "__main__":  # python -m deadjax.reproductions.plasticity_gpu --make-data DIR
    import argparse
    parser = argparse.ArgumentParser(description="writes the MNIST-1D draw of this "
                                     "reproduction (no JAX work)")
    parser.add_argument("--make-data", required=True, metavar="DIR")
    parser.add_argument("--quick", action="store_true")
    flags = parser.parse_args()
    t = time.time()
    out = make_data(flags.make_data, settings(flags.quick)["num_samples"])
    print(f"{out} ({time.time() - t:.0f} s)")
