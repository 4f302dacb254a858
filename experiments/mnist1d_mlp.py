"""The default job: the MNIST-1D MLP baseline of Greydanus (2020), over 4 seeds.

    python scripts/sweep.py --config experiments/mnist1d_mlp.py --workdir runs/mnist1d_mlp

The recipe is the MNIST-1D authors' own (github.com/greydanus/mnist1d,
``models.py`` ``MLPBase`` and ``train.py`` ``get_model_args``): 40 -> 256 ->
256 -> 10 ReLU with a residual connection around the second hidden layer
(``h = h + relu(linear2(h))``), PyTorch's default ``nn.Linear``
initialisation (U[-1/sqrt(fan_in), 1/sqrt(fan_in)] for weights and biases:
deadjax's ``standard``), Adam at learning rate 1e-2 without weight decay,
batches of 100 taken in order (``bix = step*100 % 4000``), 8000 steps, raw
inputs (no standardisation) and all 4000 training examples (no validation
split).

Expected: final test accuracy about 0.68 (mean over seeds; 68.0% for these
4 seeds, 68.4% over 8), the published MLP figure being 68% (Greydanus 2020,
"Scaling down deep learning", and the repository's README: logistic
regression 32%, MLP 68%). About three quarters of the second layer's units
are dead from step 500 on. Time: 38.7 s on 2 CPU cores.
"""

from deadjax.config import default_config
from deadjax.sweep import product


def get_config():
    c = default_config()
    c.data.name = "mnist1d"
    c.data.val_fraction = 0.0
    c.data.standardize = False
    c.data.batch_size = 100
    c.data.order = "sequential"
    c.model.widths = (256, 256)
    c.model.residual = True
    c.model.activation = "relu"
    c.model.kernel_init = "standard"
    c.model.bias_init = "standard"
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-2
    c.train.steps = 8000
    c.train.eval_every = 500
    c.train.checkpoint_every = 1000
    c.diagnostics.probe_size = 1024
    return c


def get_sweep():
    return product({"seed": range(4)})
