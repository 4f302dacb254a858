"""The sweep of ``scripts/reproduce.py mnist1d``: MNIST-1D logistic regression
and MLP baselines (Greydanus 2020), 4 seeds each, 8000 steps.

    python scripts/reproduce.py mnist1d            # sweep + figures + checks
    python scripts/sweep.py --config experiments/repro_mnist1d.py --workdir runs/repro_mnist1d

Expected: test accuracy ~0.31 (logistic regression) and ~0.68 (MLP), the
published 32% and 68%. Time: about 6 CPU-minutes (14 min wall on a shared 2-core machine). Setup, sources
and checks: deadjax/reproductions/mnist1d.py.
"""

from deadjax.reproductions import mnist1d


def get_config():
    return mnist1d.get_config(quick=False)


def get_sweep():
    return mnist1d.get_sweep(quick=False)
