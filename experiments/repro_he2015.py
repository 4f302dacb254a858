"""The sweep of ``scripts/reproduce.py he2015``: a 30-hidden-layer ReLU MLP
(width 64) on MNIST-1D with Xavier (glorot_normal) vs He (he_normal) init,
4 seeds each, 2000 steps of plain SGD at 1e-2; one population per init.

    python scripts/reproduce.py he2015     # sweep + figures + checks
    python scripts/sweep.py --config experiments/repro_he2015.py --workdir runs/repro_he2015

Expected: at step 0, q/layer_L halves per layer with Xavier and stays flat
with He; He trains (train accuracy ~0.5 at step 2000), Xavier stays at chance
(loss ~ln 10). Setup, sources and checks: deadjax/reproductions/he2015.py.
"""

from deadjax.reproductions import he2015


def get_config():
    return he2015.get_config(quick=False)


def get_sweep():
    return he2015.get_sweep(quick=False)
