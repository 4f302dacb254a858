"""The sweep of ``scripts/reproduce.py lu2019``: 2000 bias-free ReLU networks of
depth 30 per width in {2,3,4,5} and per (init, probe size) in {(he_normal, 1),
(he_normal, 256), (rai, 256)}, on a 1-d input, evaluated at initialisation
(the step-0 rows).

    python scripts/reproduce.py lu2019             # sweep + figure + checks
    python scripts/sweep.py --config experiments/repro_lu2019.py --workdir runs/repro_lu2019

Expected: the fixed-input born-dead rate follows 1 - (1 - 2^-w)^d; RAI lowers
the batch-wide rate. Time: ~9 CPU-minutes, 18 min wall on a shared 2-core machine (12 compiled
populations). Setup, sources and checks: deadjax/reproductions/lu2019.py.
"""

from deadjax.reproductions import lu2019


def get_config():
    return lu2019.get_config(quick=False)


def get_sweep():
    return lu2019.get_sweep(quick=False)
