"""Memory-aware chunking picks the largest chunk whose estimate fits the budget."""

import jax
import numpy as np

from deadjax import data, memory, population
from tests.conftest import tiny_config


def _pop(**fields):
    cfg = tiny_config(**fields)
    return population.spec_for([cfg], data.load(cfg))


def test_estimate_counts_the_state_three_times_at_least():
    pop = _pop()
    program = population.make_program(pop)
    hp = program.hparams_of([pop.config])
    state = jax.eval_shape(program.init, jax.ShapeDtypeStruct((1,), np.int32),
                           jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), hp))
    state_bytes = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert memory.member_bytes(pop) >= 3 * state_bytes


def test_chunk_size_fits_the_budget():
    per = memory.member_bytes(_pop())
    budget_gb = 10.5 * per / 2**30
    size, note = memory.chunk_size(_pop(train__memory_budget_gb=budget_gb,
                                        train__max_population=1000))
    assert size == 10 and "10 members" in note
    size, _ = memory.chunk_size(_pop(train__memory_budget_gb=1e-9))
    assert size == 1
    size, note = memory.chunk_size(_pop(train__memory_budget_gb=100.0, train__max_population=7))
    assert size == 7 and "capped" in note
    size, _ = memory.chunk_size(_pop())  # budget 0: train.max_population
    assert size == 4
