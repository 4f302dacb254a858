import os

import pytest

from deadjax.config import default_config


def tiny_config(**fields):
    """A config that trains in a second: random data, 2 small layers."""
    c = default_config()
    c.data.name = "random"
    c.data.num_train = 96
    c.data.num_test = 48
    c.data.num_features = 12
    c.data.num_classes = 4
    c.data.val_fraction = 0.25
    c.data.batch_size = 16
    c.model.widths = (10, 8)
    c.train.steps = 20
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.train.max_population = 4
    c.diagnostics.probe_size = 32
    c.diagnostics.jacobian_probe_size = 4
    for dotted, value in fields.items():
        node = c
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture
def tiny():
    return tiny_config
