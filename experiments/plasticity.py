"""Loss of plasticity and four remedies during training, on two non-stationary
tasks (Dohare et al. 2024, Nature): one member per (intervention, seed).

    python scripts/sweep.py --config experiments/plasticity.py --workdir runs/plasticity
    python scripts/reproduce.py plasticity [--quick]     # the same runs + figures + checks

* permuted MNIST-1D (the base config below): 40 -> 32 x 3 ReLU -> 10, Adam at
  1e-2, batches of 32, a new input permutation every 400 steps, 60 tasks;
* the slowly-changing regression (the points of ``REGRESSION``): 20 input
  bits, 15 of them flipping one at a time every 10,000 steps, 20 -> 5 ReLU ->
  1, plain SGD at 0.01, one example per step, 100 tasks.

Interventions (docs/interventions.md): none, activation reset, ReDo,
continual backprop, shrink and perturb. Evaluations at the end of every task,
so train/online_accuracy and train/online_loss are per-task averages.
Setup, sources and checks: deadjax/reproductions/plasticity.py.
"""

from deadjax.config import default_config
from deadjax.sweep import product

METHODS = ["none", "activation_reset", "redo", "continual_backprop", "shrink_perturb"]
SEEDS = range(4)

# The slowly-changing regression: fields that differ from the base config.
REGRESSION = {
    "data.name": "slowly_changing_regression",
    "data.num_features": 20,
    "data.flipping_bits": 15,
    "data.num_train": 1000,
    "data.num_test": 1000,
    "data.val_fraction": 0.0,
    "data.batch_size": 1,
    "data.task": "stationary",
    "data.task_every": 10_000,
    "model.widths": (5,),
    "optim.name": "sgd",
    "optim.learning_rate": 0.01,
    "train.loss": "mse",
    "train.steps": 100 * 10_000,
    "train.eval_every": 10_000,
    "train.checkpoint_every": 50_000,
    "interventions.every": 1000,
}


def get_config():
    c = default_config()
    c.data.name = "mnist1d"
    c.data.val_fraction = 0.0
    c.data.batch_size = 32
    c.data.task = "permuted_inputs"
    c.data.task_every = 400
    c.model.widths = (32, 32, 32)
    c.model.activation = "relu"
    c.model.kernel_init = "he_normal"
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-2
    c.train.steps = 60 * 400
    c.train.eval_every = 400
    c.train.checkpoint_every = 4000
    c.diagnostics.probe_size = 1024
    c.diagnostics.full_every = 10
    # Every 100 steps: activation reset (to leaky ReLU 0.01), ReDo (tau 0.1),
    # shrink and perturb (0.9, 0.01), the defaults (docs/interventions.md).
    c.interventions.every = 100
    # Continual backprop: 10x the paper's permuted-MNIST rate, as our tasks
    # are 150x shorter; maturity 100 and decay 0.99 as in the paper.
    c.interventions.replacement_rate = 1e-3
    return c


def get_sweep():
    methods = {"interventions.method": METHODS, "seed": SEEDS}
    return product(methods) + product([REGRESSION], methods)
