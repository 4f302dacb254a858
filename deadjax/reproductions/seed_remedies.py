"""The founding write-up's dead-neuron claims and remedies, tested on its own example.

Source: the founding write-up (``/work/shared/founding-writeup.md``; in
Chinese, quotes below translated by us, the original in ``published``). Its
claims we test:

* Sec. 4 (the code example, a 784-128-128-10 ReLU MLP trained with Adam 1e-3
  on 1000 random inputs ``np.random.rand(1000, 784)`` with uniform random
  labels for 100 full-batch steps): "during training we can observe that the
  outputs of some neurons fall into a dead state" (在训练过程中，我们可以观察到部分神经元的输出陷入死亡状态),
  and the four remedies it lists there for "this problem": switching the
  activation, Batch Normalization, Dropout, Xavier or He initialisation
  (Sec. 3.1.1–3.1.4);
* Sec. 3.1.2: BatchNorm "accelerates training and improves generalisation";
* Sec. 3.1.3: Dropout "prevents overfitting".

Setup: the example done right (``experiments/seed_example.py``: logits into a
softmax cross-entropy; the write-up applied softmax twice): data ``random``,
1000 training and 1000 test examples, x ~ U[0, 1)^784, labels uniform over 10
classes, full batch, 100 Adam steps at 1e-3, 8 seeds (quick: 4 seeds, 50
steps); an evaluation every 10 steps (quick: every 5) with the families dead,
dormant, saturation, gradients and output. The baseline is the write-up's
Keras model as written: ReLU, ``glorot_uniform`` kernels (the Keras default,
i.e. Xavier), zero biases, no BN, no dropout. Each remedy changes one thing:
``leaky_relu`` (slope 0.01), ``prelu``, ``sigmoid``, ``tanh`` (activation
switch), ``he_normal`` (init), ``model.norm = "batch"`` (BN before the
activation), ``model.dropout = 0.2``: 8 cells × 8 seeds. Unlike the
factorial ``runs/seed_example`` (320 members, ~680 s), this one-factor-at-a-time
design is a sweep of its own (``runs/seed_remedies``).

Two input preprocessings, both swept (``data.standardize``):

* **standardised** (deadjax's default, as in ``experiments/seed_example.py``):
  per-feature zero mean, unit variance;
* **raw** (``data.standardize = False``): x ∈ [0, 1)^784 as the write-up's
  ``np.random.rand`` — all inputs positive, so a first-layer ReLU unit whose
  incoming weights sum to a clearly negative number is off on every input.

Dead = ``dead_fraction/layer_L`` (share of units with φ'(z) = 0 on *all* 1024
probe inputs, docs/metrics.md; θ = 0, so leaky ReLU, PReLU, sigmoid and tanh
have no dead units by construction; we also record saturation for sigmoid and
tanh). Test accuracy on random labels is chance (0.10) by construction: no
remedy can raise it; memorisation is ``train/accuracy``.

Checks (the rules were fixed after a first quick run, which we report rather
than hide: what the write-up expects is stated in ``published``, what we
measured in ``ours``, and each rule is a test of our measurement against the
stated expectation — several pass *because* the write-up's claim is **not**
reproduced, and say so):

1. dying ReLU units, standardised inputs (Sec. 4): expectation from
   ``runs/seed_example`` (docs/metrics.md): no unit of the baseline dies —
   max over seeds, layers and evaluations of ``dead_fraction`` = 0. Passes when
   that holds, i.e. the write-up's claim is not reproduced.
2. dying ReLU units, raw inputs (Sec. 4, the write-up's literal data): the
   baseline ReLU has dead first-layer units *at initialisation* (born dead,
   all inputs positive), and their number does not grow during training:
   passes when the step-0 dead fraction of layer 0 is > 0 and the final one is
   ≤ the step-0 one (so the units do not "fall into" death during training;
   they start there).
3. remedies remove dead units (Sec. 3.1, Sec. 4): on raw inputs every remedy
   cell ends with a final mean dead fraction (all layers) ≤ the baseline's,
   and BN, leaky ReLU, PReLU, sigmoid, tanh at 0.
4. BN accelerates training (Sec. 3.1.2): the BN cell's mean training loss at
   the first evaluation after step 0 is below the baseline's (standardised
   inputs) — the "accelerates" half.
5. generalisation on random labels (Sec. 3.1.2, 3.1.3): every cell's mean
   final test accuracy is chance, |acc − 0.10| ≤ 0.03 (±3 binomial SE of one
   network on 1000 test examples is ±0.028), while every cell memorises:
   final train accuracy ≥ 0.95 (quick: ≥ 0.5, 50 steps) — so neither BN's
   "improves generalisation" nor Dropout's "prevents overfitting" is
   reproduced (nothing can generalise on random labels, and dropout 0.2 does
   not stop memorisation).

Time on this project's 2-core CPU machine, shared with other jobs at the time
(measured): full TBD, quick TBD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deadjax.config import default_config
from deadjax.reproductions import common

TITLE = "The founding write-up's dead-neuron claims and remedies on its own random-data example"
SOURCE = "founding write-up (/work/shared/founding-writeup.md)"
CHANCE = 0.10

# cell name -> the fields it changes from the baseline (ReLU, glorot_uniform, no BN, no dropout)
CELLS = {
    "baseline (relu, xavier)": {},
    "leaky_relu": {"model.activation": "leaky_relu"},
    "prelu": {"model.activation": "prelu"},
    "sigmoid": {"model.activation": "sigmoid"},
    "tanh": {"model.activation": "tanh"},
    "he init": {"model.kernel_init": "he_normal"},
    "batchnorm": {"model.norm": "batch"},
    "dropout 0.2": {"model.dropout": 0.2},
}
BASE = "baseline (relu, xavier)"
FIELDS = ("model.activation", "model.kernel_init", "model.norm", "model.dropout")


def settings(quick: bool) -> dict:
    if quick:
        return {"steps": 50, "eval_every": 5, "seeds": (0, 1, 2, 3), "memorised": 0.5}
    return {"steps": 100, "eval_every": 10, "seeds": tuple(range(8)), "memorised": 0.95}


def get_config(quick: bool = False):
    s = settings(quick)
    c = default_config()
    c.data.name = "random"
    c.data.num_train = 1000
    c.data.num_test = 1000
    c.data.num_features = 784
    c.data.num_classes = 10
    c.data.val_fraction = 0.0
    c.data.batch_size = 0
    c.model.widths = (128, 128)
    c.model.activation = "relu"
    c.model.kernel_init = "glorot_uniform"
    c.model.bias_init = "zeros"
    c.model.norm = "none"
    c.model.dropout = 0.0
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.train.steps = s["steps"]
    c.train.eval_every = s["eval_every"]
    c.train.checkpoint_every = s["steps"]
    c.diagnostics.families = ("dead", "dormant", "saturation", "gradients", "output")
    return c


def get_sweep(quick: bool = False):
    s = settings(quick)
    base = {"model.activation": "relu", "model.kernel_init": "glorot_uniform",
            "model.norm": "none", "model.dropout": 0.0}
    return [{"data.standardize": std, **base, **change, "seed": seed}
            for std in (True, False) for change in CELLS.values() for seed in s["seeds"]]


def cell_of(row) -> str:
    for name, change in CELLS.items():
        want = {"model.activation": "relu", "model.kernel_init": "glorot_uniform",
                "model.norm": "none", "model.dropout": 0.0, **change}
        if all(_same(row[k], v) for k, v in want.items()):
            return name
    return "?"


def _same(a, b) -> bool:
    if isinstance(b, float):
        return abs(float(a) - b) < 1e-9
    return a == b


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    f = frame.copy()
    f["cell"] = [cell_of(r) for _, r in f[list(FIELDS)].iterrows()]
    f["inputs"] = np.where(f["data.standardize"].astype(bool), "standardised", "raw")
    return f


def run(workdir: Path, figdir: Path, quick: bool) -> list[common.Check]:
    s = settings(quick)
    f = prepare(common.sweep(get_config(quick), get_sweep(quick), workdir, "remedies", quick))
    last = f[f["step"] == f["step"].max()]
    first_after = sorted(f["step"].unique())[1]
    n = len(s["seeds"])
    _dead_figure(f, figdir, s)
    _accuracy_figure(last, figdir, s)

    def cell(inputs, name, frame=f):
        return frame[(frame["inputs"] == inputs) & (frame["cell"] == name)]

    checks = []
    # 1. standardised inputs: does the baseline ReLU lose units?
    b = cell("standardised", BASE)
    mx = float(b[["dead_fraction/layer_0", "dead_fraction/layer_1"]].max().max())
    checks.append(common.claim(
        "dying ReLU units in the write-up's example (standardised inputs)",
        "during training some neurons' outputs fall into a dead state "
        "(在训练过程中，我们可以观察到部分神经元的输出陷入死亡状态) — expectation tested here: "
        "none die (runs/seed_example, docs/metrics.md)",
        f"{SOURCE}, Sec. 4 (code example)",
        f"baseline ReLU, {n} seeds, steps 0-{s['steps']}: max dead_fraction over layers, "
        f"seeds and evaluations = {mx:.4f} -> the write-up's claim is "
        f"{'NOT reproduced' if mx == 0 else 'reproduced'}",
        "passes when our measurement matches the stated expectation: max dead_fraction = 0 "
        "(no unit dies; i.e. the claim is not reproduced)", mx == 0.0))

    # 2. raw inputs: born dead, not dying
    r = cell("raw", BASE)
    d0 = r[r["step"] == 0]["dead_fraction/layer_0"].astype(float)
    dT = r[r["step"] == r["step"].max()]["dead_fraction/layer_0"].astype(float)
    d1max = float(r["dead_fraction/layer_1"].max())
    checks.append(common.claim(
        "dying ReLU units with the write-up's raw inputs x ~ U[0,1)",
        "during training some neurons fall into a dead state — expectation tested here: "
        "layer-0 units are dead at initialisation (inputs all positive), not killed by "
        "training",
        f"{SOURCE}, Sec. 4 (code example: X_train = np.random.rand(1000, 784))",
        f"baseline ReLU, raw inputs, {n} seeds: layer-0 dead fraction step 0 mean "
        f"{d0.mean():.4f} (max {d0.max():.4f}) -> step {s['steps']} mean {dT.mean():.4f} "
        f"(max {dT.max():.4f}); layer 1 max over training {d1max:.4f}",
        "step-0 mean > 0 (born dead) and final mean <= step-0 mean (no death during "
        "training)", bool(d0.mean() > 0 and dT.mean() <= d0.mean() + 1e-12)))

    # 3. remedies remove dead units (raw inputs, final step)
    fin = (last[last["inputs"] == "raw"].groupby("cell")["dead_fraction/all"]
           .agg(["mean", "max"]))
    base_final = float(fin.loc[BASE, "mean"])
    zero_cells = ("batchnorm", "leaky_relu", "prelu", "sigmoid", "tanh")
    ok = (all(fin.loc[c, "mean"] <= base_final + 1e-12 for c in CELLS)
          and all(fin.loc[c, "max"] == 0.0 for c in zero_cells))
    checks.append(common.claim(
        "remedies leave no more dead units than the baseline (raw inputs)",
        "switching activation, BatchNorm, Dropout, Xavier/He init solve the dead-neuron "
        "problem",
        f"{SOURCE}, Sec. 3.1.1-3.1.4 and Sec. 4",
        "final dead_fraction/all, mean (max) over seeds: "
        + "; ".join(f"{c} {fin.loc[c, 'mean']:.4f} ({fin.loc[c, 'max']:.4f})" for c in CELLS),
        "every cell's mean <= the baseline's; BN, leaky_relu, prelu, sigmoid, tanh: "
        "max 0", bool(ok)))

    # 4. BN accelerates training
    bl = cell("standardised", BASE)
    bl = float(bl[bl["step"] == first_after]["train/loss"].mean())
    bn = cell("standardised", "batchnorm")
    bn = float(bn[bn["step"] == first_after]["train/loss"].mean())
    checks.append(common.claim(
        "BatchNorm accelerates training (standardised inputs)",
        "Batch Normalization accelerates training (加速训练)",
        f"{SOURCE}, Sec. 3.1.2",
        f"mean train/loss at step {first_after}: BN {bn:.4f}, baseline {bl:.4f}",
        f"BN's mean training loss at step {first_after} < the baseline's", bn < bl))

    # 5. generalisation on random labels
    acc = last.groupby(["inputs", "cell"])[["test/accuracy", "train/accuracy"]].mean()
    worst_test = float((acc["test/accuracy"] - CHANCE).abs().max())
    min_train = float(acc["train/accuracy"].min())
    do = acc.xs("dropout 0.2", level="cell")
    checks.append(common.claim(
        "BN 'improves generalisation', Dropout 'prevents overfitting' (random labels)",
        "BN improves generalisation (提高泛化能力); Dropout prevents overfitting (防止过拟合) "
        "— expectation tested here: on random labels test accuracy is chance for every "
        "cell and every cell memorises",
        f"{SOURCE}, Sec. 3.1.2 and 3.1.3",
        f"final mean test accuracy over {len(acc)} cells: "
        f"{acc['test/accuracy'].min():.3f}-{acc['test/accuracy'].max():.3f} "
        f"(max |acc - 0.10| = {worst_test:.3f}); final mean train accuracy >= "
        f"{min_train:.3f} (dropout 0.2: "
        + ", ".join(f"{k} {v:.3f}" for k, v in do["train/accuracy"].items())
        + ") -> neither claim reproduced (none can be on random labels)",
        f"every cell: |mean test acc - 0.10| <= 0.03 and mean train acc >= "
        f"{s['memorised']}", bool(worst_test <= 0.03 and min_train >= s["memorised"])))
    return checks


COLORS = {BASE: "k", "leaky_relu": "tab:blue", "prelu": "tab:cyan", "sigmoid": "tab:green",
          "tanh": "tab:olive", "he init": "tab:red", "batchnorm": "tab:purple",
          "dropout 0.2": "tab:orange"}


def _dead_figure(f: pd.DataFrame, figdir: Path, s: dict) -> None:
    fig = common.figure(11.0, 6.4)
    axes = fig.subplots(2, 2, sharex=True)
    for i, inputs in enumerate(("standardised", "raw")):
        for l in range(2):
            ax = axes[i, l]
            col = f"dead_fraction/layer_{l}"
            for k, name in enumerate(CELLS):
                g = f[(f["inputs"] == inputs) & (f["cell"] == name)]
                st = g.groupby("step")[col].agg(["mean", "min", "max"])
                off = (k - 3.5) * 0.0006  # tiny offsets so overlapping zero lines stay visible
                ax.plot(st.index, st["mean"] + off, color=COLORS[name], label=name,
                        marker=".", markersize=3, linewidth=1.2)
                ax.fill_between(st.index, st["min"] + off, st["max"] + off,
                                color=COLORS[name], alpha=0.12)
            ax.set_title(f"{inputs} inputs, hidden layer {l}", fontsize="medium")
            ax.set_ylabel("dead fraction")
            ax.grid(alpha=0.3)
            ax.set_ylim(-0.01, max(0.05, float(f[col].max()) * 1.2))
            if i == 1:
                ax.set_xlabel("Adam step (full batch)")
    axes[0, 0].legend(fontsize="x-small", ncol=2)
    fig.suptitle("Dead units per layer over training, 784-128-128-10 on random labels")
    common.caption(fig, f"Mean over {len(s['seeds'])} seeds (band: min-max); lines offset by "
                   "<= 0.002 so coinciding zeros stay visible. Dead = phi'(z) = 0 on all 1024 "
                   "probe inputs (0 by construction for leaky_relu/prelu/sigmoid/tanh).")
    common.save(fig, figdir, "dead_fraction.png")


def _accuracy_figure(last: pd.DataFrame, figdir: Path, s: dict) -> None:
    fig = common.figure(10.0, 4.0)
    axes = fig.subplots(1, 2, sharey=True)
    names = list(CELLS)
    for ax, inputs in zip(axes, ("standardised", "raw")):
        for j, (metric, color) in enumerate((("train/accuracy", "tab:blue"),
                                             ("test/accuracy", "tab:orange"))):
            st = (last[last["inputs"] == inputs].groupby("cell")[metric]
                  .agg(["mean", "min", "max"]).reindex(names))
            x = np.arange(len(names)) + (j - 0.5) * 0.38
            ax.bar(x, st["mean"], width=0.38, color=color, label=metric.split("/")[0])
            ax.errorbar(x, st["mean"], yerr=[st["mean"] - st["min"], st["max"] - st["mean"]],
                        fmt="none", color="k", linewidth=0.8, capsize=2)
        ax.axhline(CHANCE, color="r", linestyle="--", linewidth=0.8, label="chance 0.10")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize="small")
        ax.set_title(f"{inputs} inputs, step {s['steps']}", fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("final accuracy")
    axes[0].legend(fontsize="x-small")
    common.caption(fig, f"Mean over {len(s['seeds'])} seeds, bars min-max. Labels are random: "
                   "test accuracy is chance by construction; train accuracy is memorisation.")
    common.save(fig, figdir, "final_accuracy.png")
