"""Memory-aware chunking: how many members of a group fit a memory budget.

With ``train.memory_budget_gb > 0`` a group's chunk size is the largest
number of members whose estimated device memory fits the budget (never more
than ``train.max_population``). The estimate is built from shapes alone:

- the member's state (parameters, optimiser state, batch statistics, keys),
  from ``jax.eval_shape`` of its initialisation, counted three times (the
  state, its donated successor, and gradients/updates in flight);
- the training step's activations: for each of the batch's examples, every
  hidden layer's affine output, pre-activation, activation and mask, twice
  (forward values kept for the backward pass, and their gradients);
- the evaluation: logits of the largest split slice and the probe batch's
  captured layers, deltas and Jacobians.

The data are shared by all members and are not counted per member. The
estimate is deliberately generous (about 1.5x); it is reported in the log.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from deadjax import population

SAFETY = 1.5


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def member_bytes(spec: population.GroupSpec) -> int:
    """Estimated device bytes of one member of the group ``spec`` describes."""
    cfg = spec.config
    program = population.make_program(spec)
    seeds = jax.ShapeDtypeStruct((1,), np.int32)
    hp = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                      program.hparams_of([cfg]))
    state = jax.eval_shape(program.init, seeds, hp)
    itemsize = 4
    widths = sum(cfg.model.widths)
    batch = cfg.data.batch_size or spec.num_train
    train = 2 * 4 * batch * (widths + spec.num_classes) * itemsize
    rows = min(cfg.train.eval_batch_size, max(spec.num_train, 1))
    probe = cfg.diagnostics.probe_size if cfg.diagnostics.enabled else 0
    jac = (cfg.diagnostics.jacobian_probe_size * max((w * w for w in cfg.model.widths),
                                                     default=0)
           if cfg.diagnostics.enabled else 0)
    evaluate = (rows * (widths + spec.num_classes) + 6 * probe * widths + 4 * jac) * itemsize
    return int(SAFETY * (3 * _tree_bytes(state) + train + evaluate))


def chunk_size(spec: population.GroupSpec) -> tuple[int, str]:
    """(members per chunk, a sentence saying how it was chosen)."""
    cfg = spec.config.train
    if cfg.memory_budget_gb <= 0:
        return cfg.max_population, f"chunks of at most {cfg.max_population} members " \
                                   "(train.max_population)"
    per = member_bytes(spec)
    fits = max(1, math.floor(cfg.memory_budget_gb * 2**30 / per))
    size = min(fits, cfg.max_population)
    return size, (f"chunks of {size} members: about {per / 2**20:.2f} MiB per member "
                  f"against a budget of {cfg.memory_budget_gb:g} GiB"
                  + (" (capped by train.max_population)" if fits > cfg.max_population else ""))
