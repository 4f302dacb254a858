"""Born-dead ReLU networks against depth (Lu, Shin, Su & Karniadakis 2019).

Paper: L. Lu, Y. Shin, Y. Su, G. E. Karniadakis, "Dying ReLU and
Initialization: Theory and Numerical Examples", arXiv:1903.06733 (2019);
Commun. Comput. Phys. 28 (2020) 1671–1706. Published claims we test (abstract;
Sec. 5 for RAI): (i) a deep ReLU network with symmetric initialisation is born
dead with probability → 1 as depth → ∞; (ii) the randomized asymmetric
initialisation (RAI) lowers that probability. We could not retrieve the
paper's figures in this session, so no number is read off them; the
quantitative check is against the exact fixed-input probability derived in
docs/theory.md (``theory.born_dead_probability``).

Setup. Bias-free ReLU MLPs of ``depth`` hidden layers of equal ``width`` ∈
{2, 3, 4, 5}, 1-dimensional input (``data.name="random"``, ``num_features=1``,
standardised), evaluated at initialisation (the step-0 rows; see ``get_config`` for why
one negligible SGD step is taken): 2000
networks (seeds) per configuration in one vmapped population. Two inits:
``he_normal`` (symmetric: N(0, 2/fan_in), biases zero) and ``rai`` (RAI draws
its own biases; RAI is run with the 256-input probe only). The depth axis costs nothing extra: layers 0..d−1 of a
depth-30 network are distributed exactly as a depth-d network's hidden
layers (the output layer plays no part in the events below), so one depth-30
network gives the event for every d ≤ 30 (estimates at different d share
networks, so they are correlated across d, each one binomial).

Two events, each from the results table's ``dead_fraction/layer_l`` (share of
units with z ≤ 0 on *every* probe input):

* **fixed-input** (``diagnostics.probe_size = 1``): some hidden layer l < d has
  every unit off at the one probe input x: max_{l<d} 1[dead_fraction/layer_l = 1].
  Theory (exact, any symmetric atomless init, bias-free):
  P = 1 − (1 − 2^{−width})^d = ``theory.born_dead_probability(width, d)``.
* **batch-wide, one layer** (``probe_size = 256``): some single layer l < d
  is off on *all* 256 probe inputs. It implies the output is constant on the
  batch, but is stricter than that.
* **born dead on the batch** — the paper's event (the network is a constant
  function on the domain), restricted to the probe batch: the results
  table's ``born_dead`` flag (output constant over the 256 probe inputs). It is
  per network, so we have it at the full depth only. It is more frequent than
  the one-layer event: on a 1-d input a bias-free ReLU network is positively
  homogeneous, and it can die on x > 0 and x < 0 at *different* layers.

For bias-free networks both batch events imply the fixed-input event at every
probe input (a constant output of a bias-free net is 0, which needs the last
hidden layer to be zero, a.s.), so the theory line is an upper bound for
them.

Checks (full | quick):

1. fixed-input MC vs theory: max over widths and depths of
   |p̂ − p| / √(p(1−p)/n) ≤ 4 (binomial standard errors; about 4 % of
   comparisons at |z| > 2 are expected by chance);
2. one-layer batch-wide MC ≤ theory + 3 SE at every width and depth, and
   the ``born_dead`` flag rate ≤ theory + 3 SE at the full depth (the bound);
3. depth kills (paper claim (i)): at width 2 the batch-wide rate at depth 30
   (quick: 12) exceeds 0.9 (quick: 0.5), and for every width it is higher at
   the deepest depth than at depth 1;
4. RAI lowers the rate (claim (ii)): at the deepest depth, for every width,
   RAI's rate is below the symmetric one by more than 3 combined SE, both for
   the one-layer batch-wide event and for the ``born_dead`` flag.

Quick: widths {2, 4}, depth 12, 400 networks per configuration.
Time on this project's 2-core CPU machine, shared with other jobs at the
time (measured): full 17.6 min wall, 9.2 min CPU (the sweep: 24,000 points in 12 compiled
populations; resolving the points alone takes ~40 s), quick ~2–4 min; a
rerun over a finished workdir ~25 s.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from deadjax import theory
from deadjax.config import default_config
from deadjax.reproductions import common
from deadjax.sweep import product

TITLE = "Born-dead ReLU networks vs depth, symmetric init vs RAI (Lu et al. 2019)"
PAPER = "Lu, Shin, Su & Karniadakis 2019, arXiv:1903.06733"
INITS = {"he_normal": "symmetric (he_normal)", "rai": "RAI"}
PROBES = {1: "fixed input", 256: "one layer off on all 256 inputs"}


def settings(quick: bool) -> dict:
    if quick:
        return {"widths": (2, 4), "depth": 12, "networks": 400}
    return {"widths": (2, 3, 4, 5), "depth": 30, "networks": 2000}


def get_config(quick: bool = False):
    s = settings(quick)
    c = default_config()
    c.data.name = "random"
    c.data.num_features = 1
    c.data.num_classes = 2
    c.data.num_train = 256
    c.data.num_test = 16
    c.data.val_fraction = 0.0
    c.data.batch_size = 0
    c.model.activation = "relu"
    c.model.kernel_init = "he_normal"
    c.model.bias_init = "zeros"
    # One negligible SGD step, of which only the step-0 rows (the init) are
    # read: train.steps = 0 evaluates the initialisation alone too, but this
    # setting keeps the reproduction's workdirs and numbers as first recorded.
    c.optim.name = "sgd"
    c.optim.learning_rate = 1e-9
    c.train.steps = 1
    c.train.eval_every = 1
    c.train.checkpoint_every = 1
    c.train.max_population = s["networks"]
    c.diagnostics.families = ("dead", "output")
    c.diagnostics.jacobian_probe_size = 1
    return c


def get_sweep(quick: bool = False):
    s = settings(quick)
    # symmetric init at both probe sizes; RAI batch-wide only (its fixed-input
    # rate has no closed form to compare with, and each group is a compile)
    combos = [{"model.kernel_init": "he_normal", "diagnostics.probe_size": 1},
              {"model.kernel_init": "he_normal", "diagnostics.probe_size": 256},
              {"model.kernel_init": "rai", "diagnostics.probe_size": 256}]
    return product(combos, {"model.widths": [(w,) * s["depth"] for w in s["widths"]]},
                   {"seed": range(s["networks"])})


def rates(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (init, width, probe, depth d): n, k (networks with some layer
    l < d entirely dead), p̂ = k/n, its binomial SE, and the theory value."""
    frame = frame[frame["step"] == 0]
    layers = sorted((c for c in frame.columns if c.startswith("dead_fraction/layer_")),
                    key=lambda c: int(c.rsplit("_", 1)[1]))
    rows = []
    for (init, widths, probe), sub in frame.groupby(
            ["model.kernel_init", "model.widths", "diagnostics.probe_size"]):
        w = json_widths(widths)
        dead = sub[layers[:len(w)]].to_numpy() >= 1.0          # (networks, layers)
        some = np.logical_or.accumulate(dead, axis=1)            # some layer < d dead
        n = len(sub)
        for d in range(1, len(w) + 1):
            k = int(some[:, d - 1].sum())
            p = k / n
            rows.append({"init": init, "width": w[0], "probe": int(probe), "depth": d,
                         "n": n, "k": k, "p": p, "se": math.sqrt(max(p * (1 - p), 1 / n) / n),
                         "theory": theory.born_dead_probability(w[0], d),
                         "born_dead_flag": float(sub["born_dead"].mean())
                         if d == len(w) else np.nan})
    return pd.DataFrame(rows)


def json_widths(cell) -> tuple:
    import json
    return tuple(json.loads(cell)) if isinstance(cell, str) else tuple(cell)


def run(workdir: Path, figdir: Path, quick: bool) -> list[common.Check]:
    s = settings(quick)
    frame = common.sweep(get_config(quick), get_sweep(quick), workdir, "born_dead", quick)
    r = rates(frame)
    _figure(r, figdir, s)
    depth = s["depth"]
    checks = []

    # 1. fixed-input MC vs exact theory (symmetric init)
    sym1 = r[(r["init"] == "he_normal") & (r["probe"] == 1)]
    z = (sym1["p"] - sym1["theory"]) / np.sqrt(sym1["theory"] * (1 - sym1["theory"]) / sym1["n"])
    worst = sym1.iloc[int(np.argmax(np.abs(z.to_numpy())))]
    checks.append(common.claim(
        f"fixed-input born-dead rate vs 1-(1-2^-w)^d, symmetric init "
        f"({len(sym1)} (width, depth) pairs, n={int(sym1['n'].iloc[0])} networks each)",
        "P = 1-(1-2^-width)^depth (exact at a fixed input; docs/theory.md derivation; "
        "paper: probability -> 1 with depth)",
        f"{PAPER} (claim); deadjax theory.born_dead_probability (number)",
        f"max |z| = {np.max(np.abs(z)):.2f} (worst width {int(worst['width'])}, depth "
        f"{int(worst['depth'])}: {worst['p']:.4f} vs {worst['theory']:.4f}); "
        f"share |z|>2 = {np.mean(np.abs(z) > 2):.2f}",
        "max |z| <= 4 binomial SE", bool(np.max(np.abs(z)) <= 4)))

    # 2. batch-wide event below the fixed-input bound
    symb = r[(r["init"] == "he_normal") & (r["probe"] == 256)]
    excess = ((symb["p"] - symb["theory"]) / symb["se"]).to_numpy()
    full = symb[symb["depth"] == depth]
    n_full = full["n"].to_numpy()
    flag_se = np.sqrt(np.maximum(full["theory"] * (1 - full["theory"]), 1 / n_full) / n_full)
    flag_excess = ((full["born_dead_flag"] - full["theory"]) / flag_se).to_numpy()
    checks.append(common.claim(
        "batch-wide born-dead rates <= fixed-input probability (bias-free: dead on the "
        "batch implies dead at each input)",
        "upper bound 1-(1-2^-width)^depth", f"{PAPER}, domain-wide born dead; docs/theory.md",
        f"max (p_batch - bound)/SE = {np.max(excess):.2f}; at depth {depth}: " + ", ".join(
            f"w{int(x.width)} {x.p:.3f}<={x.theory:.3f}"
            for x in symb[symb["depth"] == depth].itertuples())
        + "; table's born_dead flag (output constant over the probe batch) at depth "
        f"{depth}: " + ", ".join(f"w{int(x.width)} {x.born_dead_flag:.3f}"
                                 for x in symb[symb["depth"] == depth].itertuples()),
        "p_batch <= bound + 3 SE everywhere (one-layer event at every depth; born_dead "
        "flag at the full depth)",
        bool(np.max(excess) <= 3 and np.max(flag_excess) <= 3)))

    # 3. depth kills
    deep = symb[symb["depth"] == depth].set_index("width")["p"]
    shallow = symb[symb["depth"] == 1].set_index("width")["p"]
    need = 0.5 if quick else 0.9
    w0 = min(s["widths"])
    ok = bool(deep[w0] > need and all(deep[w] > shallow[w] for w in deep.index))
    checks.append(common.claim(
        f"born dead with probability -> 1 as depth grows (batch-wide, symmetric init)",
        "-> 1 as depth -> infinity", f"{PAPER}, abstract",
        f"width {w0}: {shallow[w0]:.3f} at depth 1 -> {deep[w0]:.3f} at depth {depth}; "
        + ", ".join(f"w{w}: {shallow[w]:.3f}->{deep[w]:.3f}" for w in deep.index if w != w0),
        f"width {w0} > {need} at depth {depth}; every width higher at depth {depth} than 1",
        ok))

    # 4. RAI lowers the rate
    rai = r[(r["init"] == "rai") & (r["probe"] == 256) & (r["depth"] == depth)].set_index("width")
    sym = symb[symb["depth"] == depth].set_index("width")
    def gap(a, b, n):
        se = math.sqrt(max(a * (1 - a), 1 / n) / n + max(b * (1 - b), 1 / n) / n)
        return (a - b) / se
    gaps = {w: min(gap(sym.loc[w, "p"], rai.loc[w, "p"], sym.loc[w, "n"]),
                   gap(sym.loc[w, "born_dead_flag"], rai.loc[w, "born_dead_flag"],
                       sym.loc[w, "n"])) for w in sym.index}
    checks.append(common.claim(
        f"RAI lowers the born-dead rate (depth {depth})",
        "RAI lowers the probability of a born-dead network", f"{PAPER}, abstract and Sec. 5",
        "one-layer event " + ", ".join(f"w{w}: {sym.loc[w, 'p']:.3f} -> {rai.loc[w, 'p']:.3f}"
                                       for w in sym.index)
        + "; born_dead flag " + ", ".join(
            f"w{w}: {sym.loc[w, 'born_dead_flag']:.3f} -> {rai.loc[w, 'born_dead_flag']:.3f}"
            for w in sym.index),
        "symmetric - RAI > 3 combined SE at every width, for both events",
        all(g > 3 for g in gaps.values())))
    return checks


def _figure(r: pd.DataFrame, figdir: Path, s: dict) -> None:
    fig = common.figure(10.0, 4.2)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    d = np.arange(1, s["depth"] + 1)
    for i, w in enumerate(s["widths"]):
        col = f"C{i}"
        ax1.plot(d, [theory.born_dead_probability(w, k) for k in d], color=col, linewidth=1.2,
                 label=f"width {w}: theory 1-(1-2^-w)^d" if i == 0 else f"width {w}: theory")
        for probe, marker, fill in ((1, "o", col), (256, "s", "none")):
            sub = r[(r["init"] == "he_normal") & (r["probe"] == probe) & (r["width"] == w)]
            ax1.errorbar(sub["depth"], sub["p"], yerr=2 * sub["se"], fmt=marker, color=col,
                         mfc=fill, markersize=3.5, linewidth=0.8,
                         label=f"  MC, {PROBES[probe]}" if i == 0 else None)
        for init, ls in (("he_normal", "-"), ("rai", "--")):
            sub = r[(r["init"] == init) & (r["probe"] == 256) & (r["width"] == w)]
            ax2.plot(sub["depth"], sub["p"], ls, color=col, marker="s" if init == "he_normal"
                     else "^", markersize=3, label=f"width {w}, {INITS[init]}")
    ax1.set_title("symmetric init (he_normal, bias-free): MC vs theory")
    ax2.set_title("some layer off on all 256 inputs: symmetric vs RAI")
    for ax in (ax1, ax2):
        ax.set_xlabel("depth d (hidden layers)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower right", ncol=2 if ax is ax2 else 1)
    ax1.set_ylabel("P(born dead)")
    n = int(r["n"].iloc[0])
    common.caption(fig, f"{n} networks per width and init (one vmapped population each), "
                   "1-d standardised input. Fixed-input event: some layer off at one probe "
                   "input (filled). Open: some single layer off on all 256 probe inputs "
                   "(stricter than the output being constant on them). Error bars: 2 binomial SE. Theory: docs/theory.md.")
    common.save(fig, figdir, "born_dead_vs_depth.png")
