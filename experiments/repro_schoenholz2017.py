"""The sweep of ``scripts/reproduce.py schoenholz2017``: tanh MLPs (width 64,
depth 4-64) on MNIST-1D with the mean_field init over sigma_w^2 in [0.5, 4]
at sigma_b^2 = 0.05, 400 SGD+momentum steps; one population per depth.

    python scripts/reproduce.py schoenholz2017     # sweep + figures + checks
    python scripts/sweep.py --config experiments/repro_schoenholz2017.py --workdir runs/repro_schoenholz2017

Expected: training accuracy well above chance only near sigma_w^2 ~ 1.76 at
depth 64 and inside the 6 xi_c line elsewhere. Setup, sources and checks:
deadjax/reproductions/schoenholz2017.py.
"""

from deadjax.reproductions import schoenholz2017


def get_config():
    return schoenholz2017.get_config(quick=False)


def get_sweep():
    return schoenholz2017.get_sweep(quick=False)
