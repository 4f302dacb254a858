"""MNIST-1D baselines (Greydanus 2020): logistic regression and the MLP.

Paper: S. Greydanus, "Scaling down deep learning", arXiv:2011.14439 (2020);
code and numbers: github.com/greydanus/mnist1d.

Setup (the authors' recipe, ``notebooks/models.py`` ``LinearBase`` and
``MLPBase``, ``notebooks/train.py`` ``get_model_args`` / ``train_model``; the
same as experiments/mnist1d_mlp.py): the default MNIST-1D data (4000 training
and 1000 test series of length 40, generated offline with the package's
``make_dataset``), raw inputs, Adam at learning rate 1e-2 without weight
decay, batches of 100 taken in order (``bix = step*100 % 4000``), 8000 steps,
PyTorch's default ``nn.Linear`` initialisation (U[−1/√fan_in, 1/√fan_in] for
weights and biases: deadjax's ``standard``).

* logistic regression: ``model.widths = ()`` (40 → 10, softmax cross-entropy);
* MLP: 40 → 256 → 256 → 10 ReLU with a residual connection around the second
  hidden layer (``h = h + relu(linear2(h))``).

We apply the one training recipe to both models (``train.py`` has one
``get_model_args``); the linear model converges long before 8000 steps.

Published (github.com/greydanus/mnist1d, README, table "Comparing MNIST and
MNIST-1D", row MNIST-1D): logistic regression 32%, MLP 68% test accuracy.

Checks (test accuracy at the last step, mean over seeds):

* full (8000 steps, seeds 0–3 for each model): logistic regression 32 ± 3
  points, MLP 68 ± 3 points, and MLP − logistic regression ≥ 30 points (the
  published gap is 36);
* quick (1500 steps, seeds 0–1): logistic regression 32 ± 5, MLP 68 ± 10
  (1500 steps is under 40 epochs; the MLP is still rising), gap ≥ 20 points.

Time on this project's 2-core CPU machine, shared with other jobs at the
time (measured): full 13.6 min wall, 5.9 min CPU; quick 35–45 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deadjax import figures
from deadjax.reproductions import common
from deadjax.sweep import product

TITLE = "MNIST-1D baselines: logistic regression 32%, MLP 68% (Greydanus 2020)"
SOURCE = ("Greydanus 2020, github.com/greydanus/mnist1d README, table "
          "'Comparing MNIST and MNIST-1D', row MNIST-1D")
PUBLISHED = {"logistic": 0.32, "mlp": 0.68}
MODELS = {  # label -> overrides
    "logistic": {"model.widths": (), "model.residual": False},
    "mlp": {"model.widths": (256, 256), "model.residual": True},
}


def get_config(quick: bool = False):
    c = common.experiment_config("mnist1d_mlp")  # the MNIST-1D MLP recipe
    c.train.steps = 1500 if quick else 8000
    c.train.eval_every = 250 if quick else 500
    c.train.checkpoint_every = 1500 if quick else 2000
    if quick:  # diagnostics do not change training; fewer compile faster
        c.diagnostics.families = ("dead", "output")
        c.diagnostics.probe_size = 256
    return c


def get_sweep(quick: bool = False):
    seeds = range(2) if quick else range(4)
    return product(list(MODELS.values()), {"seed": seeds})


def _label(widths_cell) -> str:
    return "logistic" if str(widths_cell) in ("[]", "()") else "mlp"


def run(workdir: Path, figdir: Path, quick: bool) -> list[common.Check]:
    frame = common.sweep(get_config(quick), get_sweep(quick), workdir, "baselines", quick)
    frame["model"] = [_label(w) for w in frame["model.widths"]]
    last = common.final_rows(frame)
    acc = {m: last.loc[last["model"] == m, "test/accuracy"].to_numpy() for m in MODELS}
    steps = int(last["step"].max())
    _figure(frame, figdir, steps)

    tol = {"logistic": 0.05, "mlp": 0.10} if quick else {"logistic": 0.03, "mlp": 0.03}
    names = {"logistic": "logistic regression", "mlp": "MLP (40-256-256-10, residual)"}
    checks = []
    for m in MODELS:
        a = acc[m]
        checks.append(common.within(
            f"{names[m]} test accuracy, mean of {len(a)} seeds at step {steps} "
            f"(seeds range {np.min(a):.3f}-{np.max(a):.3f})",
            PUBLISHED[m], SOURCE, round(float(np.mean(a)), 4), tol[m]))
    gap = float(np.mean(acc["mlp"]) - np.mean(acc["logistic"]))
    need = 0.20 if quick else 0.30
    checks.append(common.claim(
        "MLP − logistic regression (nonlinearity matters on MNIST-1D)",
        "0.36 (68% − 32%)", SOURCE, round(gap, 4), f">= {need:g}", gap >= need))
    return checks


def _figure(frame, figdir, steps) -> None:
    fig = common.figure(6.4, 4.2)
    ax = fig.add_subplot()
    groups = figures.aggregate(frame, "test/accuracy", "step", ["model"])
    colors = {"logistic": "C0", "mlp": "C1"}
    for (model,), n, x, mean, lo, hi in groups:
        ax.plot(x, mean, color=colors[model], marker="o", markersize=3,
                label=f"deadjax {model} (mean of n={n[1]} seeds)")
        ax.fill_between(x, lo, hi, color=colors[model], alpha=0.2, linewidth=0)
        ax.axhline(PUBLISHED[model], color=colors[model], linestyle="--", linewidth=1,
                   label=f"published {model}: {PUBLISHED[model]:.0%}")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"MNIST-1D baselines ({steps} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    common.caption(fig, "Band: min–max over seeds. Dashed: published (Greydanus 2020, "
                   "mnist1d README). Adam 1e-2, batches of 100 in order.")
    common.save(fig, figdir, "test_accuracy.png")
