"""The loop of one population: evaluations every ``train.eval_every`` steps.

The host loop runs once per evaluation interval, never per step or per
member: each iteration calls the compiled ``train_chunk`` (``eval_every``
steps of the vmapped step under ``lax.scan``, then every member's evaluation
and diagnostics) and hands the evaluation to ``on_eval``, which writes results
and summaries. ``on_eval`` owns the device-to-host transfer; the loop owns
neither logging nor diagnostics.
"""

from __future__ import annotations

from typing import Callable

from deadjax.population import MemberState, Population


def evaluation_steps(start: int, total: int, eval_every: int) -> list[int]:
    """The steps after ``start`` at which a run of ``total`` steps evaluates:
    every multiple of ``eval_every``, and ``total`` itself."""
    steps = list(range((start // eval_every + 1) * eval_every, total, eval_every))
    if total > start:
        steps.append(total)
    return steps


def is_full_evaluation(step: int, total: int, config) -> bool:
    """Whether the evaluation at ``step`` computes the costly diagnostics
    (percentiles, Jacobian singular values, effective rank, histograms): at
    step 0, at the last step ``total``, and at every multiple of
    ``eval_every * diagnostics.full_every``. Depends on the step alone, so a
    resumed run evaluates as an uninterrupted one."""
    every = config.train.eval_every * config.diagnostics.full_every
    return step == 0 or step == total or step % every == 0


def run(pop: Population, state: MemberState, data: dict, *, start: int, total: int,
        on_eval: Callable[[int, MemberState, dict, dict], None]) -> MemberState:
    """Trains ``state`` (at step ``start``) to step ``total``.

    At ``start == 0`` the initialisation is evaluated first (step 0).
    ``on_eval(step, state, scalars, histograms)`` is called after each
    evaluation with device arrays (leading member axis); ``histograms`` is
    empty, and the costly diagnostics NaN, where the evaluation is not full
    (:func:`is_full_evaluation`).
    """
    if start == 0:
        state, scalars, hists = pop.evaluate(state, data)
        on_eval(0, state, scalars, hists)
    for stop in evaluation_steps(start, total, pop.config.train.eval_every):
        full = is_full_evaluation(stop, total, pop.config)
        state, scalars, hists = pop.train_chunk(state, data, stop, full)
        on_eval(stop, state, scalars, hists if full else {})
    return state
