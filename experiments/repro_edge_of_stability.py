"""The sweep of ``scripts/reproduce.py edge_of_stability``: full-batch gradient
descent (optim.name = "sgd", data.batch_size = 0) on the MNIST-1D training set
(all 4,000 examples), 40-50-50-10 tanh and ReLU MLPs, step sizes eta = 0.2,
0.3, 0.4 in one population per activation, 2,500 steps, the ``sharpness``
family (top Hessian eigenvalue of the training loss) every 10 steps: about
2 minutes on 2 CPU cores (1.8 min measured).

    python scripts/reproduce.py edge_of_stability     # sweep + figures + checks
    python scripts/sweep.py --config experiments/repro_edge_of_stability.py \\
        --workdir runs/repro_edge_of_stability

Expected: the sharpness rises from below 1 to 2/eta and then hovers there
(sharpness_x_lr ~ 2) while the train loss falls, with spikes. Time and
numbers: docs/reproductions.md. Setup, sources and checks:
deadjax/reproductions/edge_of_stability.py.
"""

from deadjax.reproductions import edge_of_stability


def get_config():
    return edge_of_stability.get_config(quick=False)


def get_sweep():
    return edge_of_stability.get_sweep(quick=False)
