"""Loss of plasticity at a GPU's scale: online permuted MNIST-1D, one pass of
60,000 examples per task, 200 tasks (Dohare et al. 2024, Nature, Fig. 2).

    python -m deadjax.reproductions.plasticity_gpu --make-data runs/plasticity_gpu/data
    python scripts/sweep.py --config experiments/plasticity_gpu.py --workdir runs/plasticity_gpu_sweep
    python scripts/reproduce.py plasticity_gpu [--quick] [--time-budget 110]   # + figures, checks

The scale-up of experiments/plasticity.py's permuted setup, toward the
paper's (3 x 2000 ReLU units, SGD, one example per step, one pass of 60,000
MNIST images per task, 800 tasks; shibhansh/loss-of-plasticity,
lop/permuted_mnist/cfg/sgd/bp/std_net.json and online_expr.py):

* data: MNIST-1D at MNIST's size, generated offline by the ``mnist1d``
  package with its standard arguments but 75,000 samples (its 80/20 split:
  60,000 training and 15,000 test series of 40 features, 10 classes), read
  as an ``arrays`` file. The standard MNIST-1D has 4,000 training series, so
  a task of 60,000 examples would be 15 passes over them; the bigger draw
  from the same generator keeps the paper's one pass per task. MNIST itself
  cannot be downloaded on a machine without a network, and the ``random``
  dataset's labels carry nothing to learn in one pass;
* 40 -> 256 x 3 ReLU -> 10 (He normal), Adam at 3e-3, batches of 32, a new
  input permutation every 1,875 steps (one pass), 200 tasks (375,000 steps);
* one population: the five methods (none, activation reset, ReDo, continual
  backprop, shrink and perturb) x 4 seeds at 3e-3, and plain backprop at
  1e-3 and 1e-2 x 4 seeds (the paper's Fig. 2 shows several step sizes);
* remedies as in experiments/plasticity.py (every 100 steps; continual
  backprop rho = 1e-3, maturity 100, decay 0.99).

Why these: on 2 CPU cores (pilots, one seed each, measured): 40 -> 256 x 3
at Adam 1e-2 has half its units dead after the first task and its online
accuracy does not fall over 6 tasks (0.55, 0.52, ..., 0.57); at 3e-3 units
die gradually (0.07 after task 0, 0.46 after task 15) and the online
accuracy falls from 0.70 (task 1) to 0.61 (task 15). At width 128: 1e-2
rises over 24 tasks (0.56 -> 0.63), 3e-3 falls (0.64 -> 0.59), 1e-3 holds
(0.59 -> 0.62). Time: unmeasured on a GPU; at the 5,000-10,000 steps/s
expected of one H200 for this population, 40-75 s of training plus
compilation (scripts/gpu_session.sh gives it a budget and checks what
finished).
"""

from deadjax.config import default_config
from deadjax.sweep import product

METHODS = ["none", "activation_reset", "redo", "continual_backprop", "shrink_perturb"]
SEEDS = range(4)
LEARNING_RATE = 3e-3
PLAIN_LEARNING_RATES = [1e-3, 1e-2]   # plain backprop only
NUM_SAMPLES = 75_000                  # -> 60,000 train / 15,000 test
BATCH = 32
TASK_EVERY = 60_000 // BATCH          # one pass over the training set per task
TASKS = 200
DATA_PATH = f"runs/plasticity_gpu/data/mnist1d_{NUM_SAMPLES}.npz"


def get_config():
    c = default_config()
    c.data.name = "arrays"
    c.data.path = DATA_PATH
    c.data.val_fraction = 0.0
    c.data.batch_size = BATCH
    c.data.order = "shuffle"
    c.data.task = "permuted_inputs"
    c.data.task_every = TASK_EVERY
    c.model.widths = (256, 256, 256)
    c.model.activation = "relu"
    c.model.kernel_init = "he_normal"
    c.optim.name = "adam"
    c.optim.learning_rate = LEARNING_RATE
    c.train.steps = TASKS * TASK_EVERY
    c.train.eval_every = TASK_EVERY
    c.train.checkpoint_every = 50 * TASK_EVERY
    c.train.max_population = 64
    c.diagnostics.probe_size = 1024
    c.diagnostics.full_every = 10
    c.interventions.every = 100
    c.interventions.replacement_rate = 1e-3
    return c


def get_sweep():
    main = product({"optim.learning_rate": [LEARNING_RATE]},
                   {"interventions.method": METHODS, "seed": SEEDS})
    plain = product({"optim.learning_rate": PLAIN_LEARNING_RATES},
                    {"interventions.method": ["none"], "seed": SEEDS})
    return main + plain
