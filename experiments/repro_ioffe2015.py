"""The sweep of ``scripts/reproduce.py ioffe2015``: 3x100 sigmoid MLPs with and
without BatchNorm (before the sigmoid) on MNIST-1D (MNIST when the environment
variable DEADJAX_MNIST_PATH names a folder with the MNIST files), plain SGD at
0.2, batches of 60, 10,000 steps, 4 seeds; every diagnostic at every
evaluation (every 250 steps) for the last hidden layer's input percentiles.

    python scripts/reproduce.py ioffe2015     # sweep + figures + checks
    python scripts/sweep.py --config experiments/repro_ioffe2015.py --workdir runs/repro_ioffe2015

Expected (Ioffe & Szegedy 2015, Fig. 1): the BN network reaches higher test
accuracy sooner, and the 15/50/85th percentiles of its last-layer sigmoid
inputs drift less than the plain network's. Setup, sources and checks:
deadjax/reproductions/ioffe2015.py.
"""

from deadjax.reproductions import ioffe2015


def get_config():
    return ioffe2015.get_config(quick=False)


def get_sweep():
    return ioffe2015.get_sweep(quick=False)
