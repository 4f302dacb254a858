import dataclasses
import os

import jax
import numpy as np
import pytest

from deadjax import data, population
from deadjax.config import default_config


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test file, its compiled programs are released: every
    executable holds memory mappings (about 1,600 per group), and one process
    running the whole suite must stay below Linux's vm.max_map_count."""
    yield
    population.compiled.cache_clear()
    jax.clear_caches()


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


def compiled_for(base, members=None, **spec_fields):
    """The compiled programs of a group whose static fields are ``base``'s
    (its optional work decided by ``members``, default ``[base]``), with
    ``spec_fields`` replacing fields of its GroupSpec (e.g. ``remedies=``)."""
    spec = population.spec_for(members or [base], data.load(base))
    return population.compiled(dataclasses.replace(spec, **spec_fields))


def init_members(compiled, configs, seeds=None):
    """The initial state of ``configs``' members (seeds from the configs)."""
    seeds = [c.seed for c in configs] if seeds is None else seeds
    return compiled.init(np.asarray(seeds, np.int32), compiled.program.hparams_of(configs))


def device_data(config):
    """The device data a group of ``config`` reads."""
    return data.device_data(data.load(config), data.probe_indices(config))
