"""Loss of plasticity on non-stationary tasks, and remedies during training.

Papers: S. Dohare, J. F. Hernandez-Garcia, Q. Lan, P. Rahman, A. R. Mahmood,
R. S. Sutton, "Loss of plasticity in deep continual learning", Nature 632,
768-774 (2024); S. Dohare, R. S. Sutton, A. R. Mahmood, "Continual backprop:
stochastic gradient descent with persistent randomness", arXiv:2108.06325
(2021); the remedies of docs/interventions.md (Sokar et al. 2023, ReDo; Ash &
Adams 2020, shrink and perturb; the founding write-up's activation switch).

Published trends we compare with (we could not read the papers' full texts in
this session; the trends are as the issue, the papers' abstracts and figure
captions state them, and no number is read off a figure):

* on Online Permuted MNIST, plain backprop's per-task accuracy falls over
  hundreds of tasks while the share of dead ReLU units grows (Nature 2024,
  Fig. 2); continual backprop keeps both steady;
* on the slowly-changing regression, plain backprop's online error with ReLU
  rises over time (Nature 2024, Extended Data Fig. 2; arXiv:2108.06325,
  Fig. 2), and continual backprop keeps it low;
* shrink and perturb and ReDo, re-initialising or perturbing the network,
  reduce the loss of plasticity too (Nature 2024 compares shrink and
  perturb; Sokar et al. 2023 for ReDo).

Setup here (scaled down for 2 CPU cores), one population per task with one
member per (method, seed), methods ``none``, ``activation_reset``, ``redo``,
``continual_backprop``, ``shrink_perturb``:

* **Permuted MNIST-1D**: 40 → 32 × 3 ReLU → 10, He init, Adam at 1e-2,
  batches of 32, a new input permutation every 400 steps (3.2 epochs of the
  4000 training series), 60 tasks (quick: 12), 4 seeds (quick: 2). Adam at a
  large step size is what kills units fast enough to see in 60 short tasks:
  at 1e-2 a third of the units are dead after ~10 tasks (a pilot at 3e-2
  killed 60% in 10 tasks, and ReDo at τ = 0.1 then recycled so much that it
  trained worse than plain). The paper's setting (SGD, 3 × 2000 units, one
  example per step, 60,000 examples per task, 800 tasks) is out of reach here;
  :mod:`deadjax.reproductions.plasticity_gpu` scales this setup up for a GPU.
* **Slowly-changing regression** (Dohare et al.'s, deadjax.tasks): 20 input
  bits (15 flipping), the network 20 → 5 ReLU → 1 as in the paper's small
  learner, plain SGD at 0.01, one example per step, a bit flip every 10,000
  steps, 100 tasks (quick: 15), 4 seeds (quick: 2).
* Interventions: activation reset (to leaky ReLU 0.01), ReDo (τ = 0.1) and
  shrink and perturb (λ = 0.9, σ = 0.01) every 100 steps (regression: every
  1000); continual backprop with ρ = 1e-3, maturity 100, η = 0.99 — ρ is
  ten times the paper's permuted-MNIST value because our tasks are 150 times
  shorter, and inside the range the paper's code sweeps for the regression.
* Evaluations at the end of every task (``train.eval_every =
  data.task_every``), so ``train/online_accuracy`` / ``train/online_loss`` are
  per-task averages of the training batches' accuracy / loss before their
  updates, the measure the paper plots, and ``dead_fraction/all`` is taken at
  the end of each task on the probe batch as that task presents it.

Checks (each on the per-task curves, means over seeds; "block" = a fifth
of the tasks):

1. plain ReLU's dead fraction grows by >= 0.1 from the end of task 0 to the
   mean of the last block, on each setup;
2. permuted: plain ReLU's online accuracy over the last block is below the
   best earlier block by >= 0.01;
3. regression: plain ReLU's online error rises *relative to a network that
   keeps its plasticity*: the ratio of plain's mean online loss to that of
   the intervention with the lowest late error grows from the first block to
   the last (all members share the bit flips, and how hard a task is varies
   a lot from flip to flip, so absolute errors of different tasks are not
   comparable; the ratio is — the figures' middle panels divide by each
   task's median for the same reason);
4. each intervention leaves fewer dead units than plain (last block), on
   each setup;
5. at least two of the four interventions lower plain's late online error by
   a margin outside the seed-to-seed noise of a block mean: 0.01 of error
   rate (permuted), 10% of the loss (regression).

Quick runs (12 and 15 tasks, 2 seeds) check 1 on permuted, 3, 4, and 5 on the
regression: a dozen short tasks are too few for the others.

Results of the full run (figures/plasticity/summary.json, docs/reproductions.md):
dead units grow and every remedy reduces them on both setups, and on the
regression ReDo, continual backprop and shrink and perturb keep the online
error at 0.52-0.61 of plain's (activation reset does not: a leaky slope of
0.01 leaves a switched unit nearly silent); but on permuted MNIST-1D the
dead units cost almost nothing — plain's online accuracy falls by only
0.009 over 60 tasks with 56% of its units dead, and no remedy changes the
error by 0.01 — so checks 2 and 5 (permuted) fail: that half of the
published trend is *not reproduced* at this scale. Pilots (2 seeds, 40
tasks, Adam at 3e-2, measured): plain's online accuracy falls from 0.42 to
0.375 with 60% of its units dead; shrink and perturb keeps 0.42; ReDo at
τ = 0.1 recycles a third of the network every 100 steps and falls to 0.20
(at τ = 0.025: 0.36; at τ = 0, only units dead on the probe batch: 0.375,
as plain); continual
backprop at ρ = 1e-3 0.37, at ρ = 1e-2 0.17; activation reset 0.35. Units
that are recycled die again within 100 steps at that step size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deadjax.config import set_field
from deadjax.reproductions import common
from deadjax import sweep as sweep_lib
from deadjax.sweep import product

TITLE = ("Loss of plasticity on permuted MNIST-1D and slowly-changing regression, "
         "and four remedies during training (Dohare et al. 2024)")
PAPER = "Dohare et al., Nature 632:768-774 (2024)"
METHODS = ("none", "activation_reset", "redo", "continual_backprop", "shrink_perturb")
LABEL = {"none": "plain ReLU", "activation_reset": "activation reset", "redo": "ReDo",
         "continual_backprop": "continual backprop", "shrink_perturb": "shrink & perturb"}
SETUPS = ("permuted", "regression")


def settings(setup: str, quick: bool) -> dict:
    if setup == "permuted":
        return {"tasks": 12 if quick else 60, "task_every": 400, "seeds": 2 if quick else 4}
    return {"tasks": 15 if quick else 100, "task_every": 10_000, "seeds": 2 if quick else 4}


def get_config(setup: str = "permuted", quick: bool = False):
    """The base config of one setup: ``experiments/plasticity.py``'s recipe
    (its ``REGRESSION`` fields for the regression), run length scaled down
    when ``quick``."""
    c = common.experiment_config("plasticity")
    if setup == "regression":
        for field, value in regression_fields().items():
            set_field(c, field, value)
    s = settings(setup, quick)
    c.train.steps = s["tasks"] * s["task_every"]
    c.train.checkpoint_every = s["task_every"] * (10 if setup == "permuted" else 5)
    return c


def regression_fields() -> dict:
    """The fields the experiment file's regression points set (all but the
    method and the seed)."""
    _, points = sweep_lib.load_experiment(common.experiment_path("plasticity"))
    point = next(p for p in points if p.get("data.name") == "slowly_changing_regression")
    return {k: v for k, v in point.items() if k not in ("interventions.method", "seed")}


def get_sweep(setup: str = "permuted", quick: bool = False):
    return product({"interventions.method": list(METHODS),
                    "seed": list(range(settings(setup, quick)["seeds"]))})


# --------------------------------------------------------------------------
# Per-task curves
# --------------------------------------------------------------------------

def per_task(frame: pd.DataFrame, metric: str, relative: bool = False) -> pd.DataFrame:
    """Rows (task, method) -> mean, min, max over seeds of ``metric`` at each
    task's last evaluation; ``relative``: each value divided first by the
    median over every member at that task, which takes out how hard the task
    is (all members share the tasks)."""
    f = frame[frame["step"] > 0]
    f = f.sort_values("step").groupby(["interventions.method", "seed", "task"]).last()
    values = f[metric]
    if relative:
        values = values / values.groupby(level="task").transform("median")
    g = values.groupby(level=["task", "interventions.method"])
    return pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max()}).reset_index()


def error_metric(setup: str) -> str:
    return "train/online_loss" if setup == "regression" else "train/online_error"


def _with_error(frame: pd.DataFrame) -> pd.DataFrame:
    if "train/online_accuracy" in frame:
        frame = frame.assign(**{"train/online_error": 1.0 - frame["train/online_accuracy"]})
    return frame


def _fifths(curve: pd.DataFrame, method: str):
    """(first-block mean, last-block mean, every block's mean) of a per-task
    curve, in blocks of ``len // 5`` consecutive tasks (a fifth of them)."""
    m = curve[curve["interventions.method"] == method].sort_values("task")["mean"].to_numpy()
    k = max(len(m) // 5, 1)
    means = [m[i:i + k].mean() for i in range(0, len(m) - k + 1, k)]
    return m[:k].mean(), m[-k:].mean(), means


# --------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------

def run(workdir: Path, figdir: Path, quick: bool) -> list:
    frames = {}
    for setup in SETUPS:
        frame = common.sweep(get_config(setup, quick), get_sweep(setup, quick), workdir,
                             f"plasticity_{setup}", quick)
        frames[setup] = _with_error(frame)
        _figure(frames[setup], setup, figdir, quick)
    return checks(frames, quick)


def checks(frames: dict, quick: bool) -> list:
    """The checks of the module docstring; ``quick`` keeps those its shorter
    runs can show (1 on permuted MNIST-1D, 2 on the regression, 3, 4 on the
    regression)."""
    out = [_dead_growth_check(frames["permuted"], "permuted")]
    if not quick:
        out.append(_dead_growth_check(frames["regression"], "regression"))
        out.append(_accuracy_falls_check(frames["permuted"]))
    out.append(_relative_error_check(frames["regression"]))
    for setup in SETUPS:
        out.append(_fewer_dead_check(frames[setup], setup))
    for setup in (SETUPS if not quick else ("regression",)):
        out.append(_late_error_check(frames[setup], setup))
    return out


def _dead_growth_check(frame: pd.DataFrame, setup: str):
    dead = per_task(frame, "dead_fraction/all")
    first = float(dead[(dead.task == 0) & (dead["interventions.method"] == "none")]["mean"].iloc[0])
    _, last, _ = _fifths(dead, "none")
    source = ("Fig. 2 (Online Permuted MNIST)" if setup == "permuted"
              else "Extended Data Fig. 2 (slowly-changing regression)")
    return common.claim(
        f"{setup}: plain ReLU's dead units grow over tasks",
        "the share of dead units of plain backprop grows over the tasks",
        f"{PAPER}, {source}",
        f"dead fraction {first:.3f} after task 0, {last:.3f} over the last fifth of the tasks",
        "growth >= 0.1", last - first >= 0.1)


def _accuracy_falls_check(frame: pd.DataFrame):
    acc = per_task(frame, "train/online_accuracy")
    _, last, blocks = _fifths(acc, "none")
    best = max(blocks[:-1])
    return common.claim(
        "permuted: plain ReLU's online accuracy falls over tasks",
        "per-task accuracy of plain backprop falls over the tasks",
        f"{PAPER}, Fig. 2 (Online Permuted MNIST)",
        "online accuracy by blocks of a fifth of the tasks: "
        + ", ".join(f"{v:.3f}" for v in blocks),
        "last block <= best earlier block - 0.01", last <= best - 0.01)


def _relative_error_check(frame: pd.DataFrame):
    loss = per_task(frame, "train/online_loss")
    ref = min(METHODS[1:], key=lambda m: _fifths(loss, m)[1])
    p1, p5, _ = _fifths(loss, "none")
    q1, q5, _ = _fifths(loss, ref)
    return common.claim(
        "regression: plain ReLU's online error rises relative to a plastic network",
        "the online error of plain backprop with ReLU rises over time; continual "
        "backprop's stays low",
        f"{PAPER}, Extended Data Fig. 2; Dohare, Sutton & Mahmood 2021, Fig. 2",
        f"plain / {LABEL[ref]} (lowest late error) online loss: {p1 / q1:.2f} over the "
        f"first fifth of the tasks, {p5 / q5:.2f} over the last",
        "last-fifth ratio > first-fifth ratio", p5 / q5 > p1 / q1)


def _late(frame: pd.DataFrame, metric: str) -> tuple[float, dict]:
    """Plain's and each intervention's mean of ``metric`` over the last block."""
    curve = per_task(frame, metric)
    return _fifths(curve, "none")[1], {m: _fifths(curve, m)[1] for m in METHODS[1:]}


def _fewer_dead_check(frame: pd.DataFrame, setup: str):
    plain, late = _late(frame, "dead_fraction/all")
    return common.claim(
        f"{setup}: every intervention leaves fewer dead units than plain ReLU",
        "remedies that re-initialise, switch or perturb units reduce dead units",
        f"{PAPER} (continual backprop, shrink and perturb); docs/interventions.md",
        f"dead fraction, last fifth of the tasks: plain {plain:.3f}; "
        + ", ".join(f"{LABEL[m]} {v:.3f}" for m, v in late.items()),
        "each intervention < plain", all(v < plain for v in late.values()))


def _late_error_check(frame: pd.DataFrame, setup: str):
    """At least two interventions lower plain's late online error by a margin
    well outside the seed-to-seed noise of a block mean: 0.01 of error rate
    (permuted), 10% of the loss (regression)."""
    plain, late = _late(frame, error_metric(setup))
    if setup == "regression":
        what, rule, lower = "online loss", ">= 2 of the 4 interventions below 0.9 x plain", \
            {m: v <= 0.9 * plain for m, v in late.items()}
    else:
        what, rule, lower = "online error (1 - accuracy)", \
            ">= 2 of the 4 interventions below plain - 0.01", \
            {m: v <= plain - 0.01 for m, v in late.items()}
    return common.claim(
        f"{setup}: interventions lower the late online error",
        "remedies keep the error of later tasks lower than plain backprop's",
        f"{PAPER}, Fig. 2 and Extended Data Fig. 2",
        f"{what}, last fifth of the tasks: plain {plain:.3f}; "
        + ", ".join(f"{LABEL[m]} {v:.3f}" for m, v in late.items()),
        rule, sum(lower.values()) >= 2)


def _figure(frame: pd.DataFrame, setup: str, figdir: Path, quick: bool) -> None:
    s = settings(setup, quick)
    fig = common.figure(12.5, 3.8)
    axes = fig.subplots(1, 3)
    error = ("online loss (MSE)" if setup == "regression" else "online error (1 - accuracy)")
    panels = ((error_metric(setup), False, f"{error} per task"),
              (error_metric(setup), True, "the same / its median over all members"),
              ("dead_fraction/all", False, "dead fraction at the end of the task"))
    for ax, (metric, relative, ylabel) in zip(axes, panels):
        curve = per_task(frame, metric, relative)
        for k, m in enumerate(METHODS):
            c = curve[curve["interventions.method"] == m].sort_values("task")
            ax.plot(c["task"], c["mean"], color=f"C{k}", label=LABEL[m], linewidth=1.2)
            if metric == "dead_fraction/all":  # bands on the noisy error panels hide the lines
                ax.fill_between(c["task"], c["min"], c["max"], color=f"C{k}", alpha=0.15)
        ax.set_xlabel("task")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if setup == "permuted":
        title = (f"Permuted MNIST-1D: ReLU 32 x 3, Adam 1e-2, {s['task_every']} steps of "
                 f"32 per task")
        trend = "Dohare et al. 2024 Fig. 2: plain backprop's accuracy falls and dead units grow."
    else:
        title = ("Slowly-changing regression: ReLU 5 units, SGD 0.01, one example per step, "
                 f"a bit flip every {s['task_every']:,} steps")
        trend = ("Dohare et al. 2024 Ext. Data Fig. 2: plain backprop's error rises; "
                 "continual backprop's stays low.")
    fig.suptitle(title)
    common.caption(fig, f"line: mean over {s['seeds']} seeds; band (dead fraction): min-max "
                   f"over seeds. {trend}")
    common.save(fig, figdir, f"{setup}.png", colors=128)
