import dataclasses
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from deadjax import data, population
from deadjax.config import default_config


_CACHE_OWNER = "DEADJAX_TEST_CACHE_OWNER"


def pytest_configure(config):
    """One JAX persistent compilation cache for the whole test run: the many
    tests that train the same tiny config (in this process, in pytest-xdist's
    workers and in the sweeps the fault and resume tests start as
    subprocesses) compile each program once. The cache is a fresh directory
    per run, removed at its end, so a run never reads another's entries;
    an entry holds the compiled executable of the same HLO and flags, so no
    number depends on it. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep
    one across runs."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="deadjax-tests-jax-cache-")
        os.environ[_CACHE_OWNER] = str(os.getpid())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
    if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)


@pytest.fixture
def without_compilation_cache():
    """For tests that read JAX's compile events: a program found in the
    persistent cache is not compiled, so it sends none."""
    from jax._src import compilation_cache   # reset_cache: no public API for this
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


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
