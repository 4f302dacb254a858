"""The sweep of ``scripts/reproduce.py seed_remedies``: the founding write-up's
784-128-128-10 ReLU example (1000 random inputs, random labels, 100 full-batch
Adam steps at 1e-3) and its remedies one at a time (leaky_relu, prelu, sigmoid,
tanh, he_normal init, BatchNorm, dropout 0.2, from a ReLU + glorot_uniform
baseline), with standardised and raw (x in [0, 1), as the write-up) inputs,
8 seeds: 128 networks in 14 populations.

    python scripts/reproduce.py seed_remedies     # sweep + figures + checks
    python scripts/sweep.py --config experiments/repro_seed_remedies.py --workdir runs/repro_seed_remedies

Expected: no ReLU unit dies with standardised inputs; with raw inputs a third
of the first layer dies during training, which BN and the non-ReLU
activations prevent and He init and dropout do not; test accuracy is chance
everywhere (random labels). Setup, sources and checks:
deadjax/reproductions/seed_remedies.py.
"""

from deadjax.reproductions import seed_remedies


def get_config():
    return seed_remedies.get_config(quick=False)


def get_sweep():
    return seed_remedies.get_sweep(quick=False)
