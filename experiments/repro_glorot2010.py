"""The main sweep of ``scripts/reproduce.py glorot2010``: 5 x 256 tanh MLPs on
MNIST-1D at initialisation (train.steps = 0), standard vs normalised
(glorot_uniform) init, 4 seeds each; one population per init.

    python scripts/reproduce.py glorot2010     # both sweeps + figures + checks
    python scripts/sweep.py --config experiments/repro_glorot2010.py --workdir runs/repro_glorot2010

Expected: with the standard init preact_std and delta_norm shrink by ~1/sqrt(3)
per layer (activations towards the output, back-propagated gradients towards
the input); with the normalised init they stay within a factor ~2 over the
five layers; mean Jacobian singular values ~0.48 and ~0.77 (paper: 0.5, 0.8).
The reproduction's second sweep (sigmoid, 4 x 256, standard init, SGD; the
top layer saturates at 0) is ``glorot2010.get_sigmoid_config()`` /
``get_sigmoid_sweep()``. Setup, sources and checks:
deadjax/reproductions/glorot2010.py.
"""

from deadjax.reproductions import glorot2010


def get_config():
    return glorot2010.get_config(quick=False)


def get_sweep():
    return glorot2010.get_sweep(quick=False)
