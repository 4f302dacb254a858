"""The trainer of one group, as pure functions built from its static description.

A group's static fields and data shapes are one frozen, hashable
:class:`GroupSpec`; :func:`make_program` closes over it and returns the
group's :class:`Program`, pure functions of a population's state (every leaf
with a leading member axis):

- ``init(seeds, hparams)``: every member's initial :class:`MemberState`;
- ``step(state, data)``: one training step of every member, then the remedies
  of that step (``interventions.method``: continual backprop every step,
  activation reset, ReDo and shrink-and-perturb every ``interventions.every``
  steps; docs/interventions.md);
- ``evaluate(state, data, full)``: measures every member (performance on each
  split, divergence evidence, the diagnostics of :mod:`deadjax.diagnostics`,
  the costly ones only where ``full``), changing nothing;
- ``observe(state, evidence)``: the one place the carry between evaluations
  is updated (divergence flags, the previous dead masks, born-dead);
- ``train_chunk(state, data, stop, full)``: steps up to ``stop``, then
  evaluate and observe: ``(state, scalars, tables)``; the program a group
  compiles (:func:`compiled`, cached on the spec), with ``stop`` and ``full``
  traced so chunks of any length, and the step-0 evaluation, reuse it;
- ``train_chunk_measured(state, data, stop)`` and ``measure_beside(measured,
  data, start, size)``: the same chunk split in two, the costly diagnostics
  apart (of a block of members), for
  one CPU device, where :class:`Compiled` computes them in worker threads
  while the next chunk trains (:func:`measures_beside`); the same numbers.

Everything is written for one member and vmapped: a member in a population
equals the member alone. Batches and tasks are pure functions of the step and
the member's key (:func:`deadjax.data.training_batch`,
:class:`deadjax.tasks.Tasks`).

A member whose training loss is non-finite is marked diverged at that step and
stops updating: its parameters and statistics stay those that gave the
non-finite loss; the others train on. Parameters are checked for non-finite
values at each evaluation, which marks a member diverged too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
from typing import Any, Callable, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deadjax import (config as config_lib, data as data_lib, diagnostics, interventions,
                     linalg, metrics, models, optim, sharding, tasks)

# The constant that separates the random stream of re-initialised units.
FRESH_STREAM = 0x66726573   # "fres"

MATMUL_PRECISION = {"highest": "float32", "tf32": "tensorfloat32", "bf16": "bfloat16"}


@flax.struct.dataclass
class MemberState:
    """Everything that defines a member at a step (checkpointed whole)."""

    step: jax.Array            # int32: training steps taken
    params: Any
    batch_stats: Any           # BatchNorm running statistics ({} without BatchNorm)
    opt_state: Any             # optax state, per-member hyperparameters inside
    key: jax.Array             # the member's dropout key; step keys are fold_in(key, step)
    data_key: jax.Array        # the member's batch-order key
    hparams: dict              # per-member values (config.hparam_fields), float scalars
    diverged: jax.Array        # bool
    diverged_step: jax.Array   # int32, -1 while finite
    update_ratio: jax.Array    # (L+1,) ||dW_l|| / ||W_l|| of the last step; NaN before any
    prev_dead: tuple           # per hidden layer, bool (width,): dead at the previous evaluation
    has_prev: jax.Array        # bool: an evaluation has happened
    born_dead: jax.Array       # bool: output constant over the probe batch at step 0
    interventions: dict = dataclasses.field(default_factory=dict)
    # ^ interventions.Chain.init(): {} unless the group uses a remedy, else
    # "units_reset" (int32 (L,), cumulative) and each remedy's state
    carry: dict = dataclasses.field(default_factory=dict)
    # ^ diagnostics.init_carries(): what diagnostic families carry from one
    # evaluation to the next, by family ({} without diagnostics)


def measured_view(state: MemberState) -> MemberState:
    """What the costly diagnostics read of a member's state (its network:
    parameters, statistics, hyperparameters, remedies' state), without the
    optimiser state and the diagnostic families' carries."""
    return state.replace(opt_state=None, carry={})


def float_dtype():
    """float64 under ``jax_enable_x64`` (used by the exactness tests), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


# --------------------------------------------------------------------------
# The static description of a group
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Everything a group's program depends on, hashable (the cache key of
    :func:`compiled`): its static config fields (per-member fields at their
    defaults), the data's shapes, and which optional work some member needs
    (dropout masks, the L2 term, each remedy): left out when no member needs
    it, which changes no number."""

    config: ml_collections.FrozenConfigDict
    num_features: int
    num_classes: int
    num_train: int
    has_val: bool
    uses_dropout: bool
    uses_l2: bool
    remedies: tuple[str, ...]


def static_config(config) -> ml_collections.FrozenConfigDict:
    """``config`` with every per-member field at its default: what a group's
    members share."""
    c = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    for name in config_lib.per_member_fields():
        config_lib.set_field(c, name, config_lib.field(name).default)
    return ml_collections.FrozenConfigDict(c)


def spec_for(members: Sequence, dataset: data_lib.Dataset) -> GroupSpec:
    """The :class:`GroupSpec` of a group whose members have the resolved
    configs ``members`` (they share every static field) on ``dataset``."""
    first = members[0]
    return GroupSpec(
        config=static_config(first),
        num_features=int(dataset.x_train.shape[1]), num_classes=int(dataset.num_classes),
        num_train=int(dataset.x_train.shape[0]), has_val=bool(dataset.x_val.shape[0] > 0),
        uses_dropout=any(c.model.dropout > 0 for c in members),
        uses_l2=any(c.optim.weight_decay > 0 for c in members)
        and first.optim.name != "adamw",
        remedies=interventions.used_by([c.interventions.method for c in members]))


def hparams_of(configs: Sequence, with_remedies: bool) -> dict[str, np.ndarray]:
    """The per-member hyperparameters of resolved point configs, stacked:
    ``{hparam: (P,) array}`` for :func:`deadjax.config.hparam_fields`."""
    return {f.hparam: np.asarray([f.value_for_state(config_lib.get_field(c, f.name))
                                  for c in configs], float_dtype())
            for f in config_lib.hparam_fields(with_remedies)}


# --------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------

class Evidence(NamedTuple):
    """What an evaluation found that the carry is updated from (per member):
    whether the parameters are finite, the dead masks, whether the output is
    constant over the probe batch, and the diagnostic families' new carries
    (None without diagnostics)."""
    finite_params: jax.Array
    dead: tuple | None
    output_constant: jax.Array | None
    carry: dict | None = None


class Program(NamedTuple):
    """A group's pure functions (see the module docstring)."""
    spec: GroupSpec
    init: Callable
    step: Callable
    evaluate: Callable
    observe: Callable
    train_chunk: Callable
    train_chunk_measured: Callable   # train_chunk less the costly diagnostics, + what it measured
    measure_beside: Callable         # the costly diagnostics of a measured network alone
    periodic: Callable     # the periodic remedies alone: (state, data) -> state
    apply: Callable        # one member's model: (state, x, params=None, **kw) -> outputs
    hparams_of: Callable   # resolved configs -> the hparams ``init`` takes


def make_program(spec: GroupSpec) -> Program:
    """The pure functions of the group ``spec`` describes."""
    cfg = spec.config
    widths = tuple(cfg.model.widths)
    model = models.from_config(cfg, spec.num_classes)
    tx = optim.make(cfg)
    precision = MATMUL_PRECISION[cfg.train.precision]
    regression = cfg.train.loss == "mse"
    task_plan = tasks.for_data(cfg, spec.num_features, spec.num_classes)
    batches = data_lib.BatchPlan.of(cfg, spec.num_train)
    remedies = interventions.chain(spec.remedies, cfg, widths)
    sharpness = cfg.diagnostics.enabled and "sharpness" in cfg.diagnostics.families
    # The sharpness batch: None is the whole training split (data.sharpness_indices).
    sharpness_idx = data_lib.sharpness_indices(cfg, spec.num_train) if sharpness else None

    def training_objective(params, batch_stats, hparams, model_kwargs, x, y):
        """One member's training objective on ``(x, y)`` as its optimiser
        descends it (the sharpness family's loss): the loss in training mode
        (BatchNorm normalises with the batch's own statistics; the running
        statistics it would update are dropped), plus the L2 term where the
        group has one, without dropout."""
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        logits, _ = model.apply(variables, x, hparams, train=True, mutable=["batch_stats"],
                                **model_kwargs)
        total = loss_of(logits, y)
        if spec.uses_l2:
            total = total + optim.l2_penalty(params, hparams["weight_decay"], cfg.optim.name)
        return total

    diag = diagnostics.Context.of(cfg, objective=training_objective)
    dense_names = [f"Dense_{l}" for l in range(len(widths) + 1)]
    # update_ratio/layer_L is reported by the gradients family only.
    reports_ratio = cfg.diagnostics.enabled and "gradients" in cfg.diagnostics.families

    # ------------------------------------------------------------- one member
    def apply(state, x, params=None, **kwargs):
        """``model.apply`` for one member: its variables, hyperparameters and
        whatever its remedies change in the forward pass."""
        variables = {"params": state.params if params is None else params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        return model.apply(variables, x, state.hparams,
                           **remedies.model_kwargs(state.interventions), **kwargs)

    def loss_of(outputs, targets):
        """The training loss: cross-entropy of the logits, or (regression) the
        mean squared error of the single output."""
        if regression:
            return metrics.mse(outputs[:, 0], targets)
        return metrics.cross_entropy(outputs, targets)

    def init_member(seed, hparams) -> MemberState:
        init_key, dropout_key, data_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        x = jnp.zeros((1, spec.num_features), float_dtype())
        variables = model.init({"params": init_key}, x, hparams, train=False)
        params = variables["params"]
        opt_state = optim.init(tx, params, {k: hparams[k] for k in optim.HYPERPARAMS})
        return MemberState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables.get("batch_stats", {}), opt_state=opt_state,
            key=dropout_key, data_key=data_key, hparams=hparams,
            diverged=jnp.zeros((), bool), diverged_step=jnp.full((), -1, jnp.int32),
            update_ratio=jnp.full((len(widths) + 1,), jnp.nan, float_dtype()),
            prev_dead=tuple(jnp.zeros((w,), bool) for w in widths),
            has_prev=jnp.zeros((), bool), born_dead=jnp.zeros((), bool),
            interventions=remedies.init(),
            carry=diagnostics.init_carries(diag, params) if cfg.diagnostics.enabled else {})

    def train_step(state: MemberState, batch, with_ratio):
        """One member's step on ``batch``: ``(the trained state, whether it is
        finite, the batch's loss and accuracy before the update, the unit
        activations)``. The caller keeps the old parameters where the step is
        not finite. Left out where no member needs them (exact identities
        then): dropout masks, the L2 term, the activations (``()`` unless an
        every-step remedy reads them), and the update-to-weight norms: under a
        ``lax.cond`` on ``with_ratio`` (a traced bool, true on a chunk's last
        step), never when no diagnostic reports them."""
        x, y = batch
        dropout_key = jax.random.fold_in(state.key, state.step) if spec.uses_dropout else None
        capture = remedies.every_step

        def objective(params):
            out, mutated = apply(state, x, params, train=True, dropout_key=dropout_key,
                                 mutable=["batch_stats"], capture=capture)
            logits, cap = out if capture else (out, {"post": ()})
            loss = loss_of(logits, y)
            total = loss
            if spec.uses_l2:
                total = loss + optim.l2_penalty(params, state.hparams["weight_decay"],
                                                cfg.optim.name)
            # Flax keeps running statistics in float32 whatever the compute dtype.
            stats = jax.tree.map(lambda new, old: new.astype(old.dtype),
                                 mutated.get("batch_stats", {}), state.batch_stats)
            return total, (stats, loss, logits, tuple(cap["post"]))

        (_, (batch_stats, loss, logits, acts)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ratio = state.update_ratio
        if reports_ratio:
            ratio = jax.lax.cond(with_ratio, lambda: jnp.stack(
                [jnp.linalg.norm(updates[n]["kernel"]) / jnp.linalg.norm(state.params[n]["kernel"])
                 for n in dense_names]).astype(ratio.dtype), lambda: ratio)
        # A step whose loss is non-finite is not taken. The parameters are not
        # checked here: a pass over them costs ~8% of a step on a CPU, and
        # non-finite parameters make the next step's loss non-finite (or, where a
        # bounded activation absorbs an infinity, are caught at the evaluation).
        finite = jnp.isfinite(loss)
        acc = (jnp.full((), jnp.nan, loss.dtype) if regression
               else metrics.accuracy(logits, y))
        trained = state.replace(params=params, batch_stats=batch_stats,
                                opt_state=opt_state, update_ratio=ratio)
        return trained, finite, loss, acc, acts

    # ---------------------------------------------------------------- remedies
    def fresh_params(state: MemberState):
        """A new draw of one member's initialiser (its own sigma_w, sigma_b),
        from a key of the member and the step: what re-initialised units take."""
        key = jax.random.fold_in(jax.random.fold_in(state.key, FRESH_STREAM), state.step)
        x = jnp.zeros((1, spec.num_features), float_dtype())
        return model.init({"params": key}, x, state.hparams, train=False)["params"]

    def reinitialise(state, masks):
        """Every member's units of ``masks`` re-initialised
        (:func:`deadjax.interventions.replace_units`), under a population-level
        ``lax.cond``: the fresh draw and the passes over parameters and
        optimiser state are made only where some member has a unit to
        re-initialise."""
        def replace(s):
            def member(m, r):
                params, opt_state = interventions.replace_units(m.params, m.opt_state,
                                                                fresh_params(m), r)
                return m.replace(params=params, opt_state=opt_state)
            return jax.vmap(member)(s, masks)

        return jax.lax.cond(jnp.any(jnp.stack([r.any() for r in masks])), replace,
                            lambda s: s, state)

    def apply_remedies(state, observation: Callable, rows, every_step: bool):
        """Every member's remedies of one kind (every step, or periodic), on
        what ``observation(member state, its row of rows)`` shows them (an
        :class:`interventions.Observation`), then the re-initialisations."""
        def member(s, row):
            m = interventions.Member(s.params, s.opt_state, s.hparams, s.key, s.step)
            inter, params, reinit = remedies.update(s.interventions, observation(s, row), m,
                                                    s.diverged, every_step)
            return s.replace(interventions=inter, params=params), reinit

        state, reinit = jax.vmap(member)(state, rows)
        return state if reinit is None else reinitialise(state, reinit)

    def on_batch(s, acts):
        """What an every-step remedy sees: the activations of the step's batch."""
        return interventions.Observation(acts, ())

    def periodic_remedies(state, data):
        """The periodic remedies, on the probe batch of the task just trained on."""
        probe_x, _ = task_plan.present(*data["probe"], task_plan.evaluated(state.step[0]))

        def on_probe(s, _):
            _, cap = apply(s, probe_x, capture=True)
            return interventions.Observation(tuple(cap["post"]), tuple(cap["dphi"]))

        with jax.default_matmul_precision("float32"):
            return apply_remedies(state, on_probe, None, every_step=False)

    # ------------------------------------------------------------ population
    def init(seeds, hparams) -> MemberState:
        return jax.vmap(init_member)(seeds, hparams)

    def step(state: MemberState, data: dict, with_ratio=True, periodic=True):
        """Every member's step: ``(state, per-member batch loss, accuracy)``.
        Members already diverged, or whose step is not finite, keep their
        parameters and statistics. Then the remedies of the step: the
        every-step ones, and the periodic ones where the step is a multiple of
        ``interventions.every`` and ``periodic`` (a traced bool: a chunk's last
        step leaves them to after its evaluation)."""
        t = task_plan.at(state.step[0])  # all members share the step

        def member(s):
            batch = data_lib.training_batch(batches, task_plan, data["train"], s.step,
                                            s.data_key, t, float_dtype())
            return train_step(s, batch, with_ratio)

        with jax.default_matmul_precision(precision):
            trained, finite, loss, acc, acts = jax.vmap(member)(state)
        update = finite & ~state.diverged
        newly_diverged = ~finite & ~state.diverged

        def pick(new, old):
            mask = update.reshape(update.shape + (1,) * (new.ndim - 1))
            return jnp.where(mask, new, old)

        # Parameters and statistics stay as they were before the failed step; the
        # optimiser state of a diverged member is left as that step made it (it
        # is never used again), which saves a pass over twice the parameters.
        state = state.replace(params=jax.tree.map(pick, trained.params, state.params),
                              batch_stats=jax.tree.map(pick, trained.batch_stats,
                                                       state.batch_stats),
                              opt_state=trained.opt_state,
                              update_ratio=pick(trained.update_ratio, state.update_ratio))
        state = state.replace(
            step=state.step + 1,
            diverged=state.diverged | newly_diverged,
            diverged_step=jnp.where(newly_diverged, state.step, state.diverged_step))
        if remedies.every_step:
            state = apply_remedies(state, on_batch, acts, every_step=True)
        if remedies.periodic:
            state = jax.lax.cond(periodic & is_periodic_step(state),
                                 lambda s: periodic_remedies(s, data), lambda s: s, state)
        return state, loss, acc

    def is_periodic_step(state):
        """Whether the periodic remedies act after the step just taken."""
        return (state.step[0] > 0) & (state.step[0] % cfg.interventions.every == 0)

    # ------------------------------------------------------------ evaluation
    def logits_of(state, x):
        """Eval-mode outputs of one member, in slices of ``train.eval_batch_size``."""
        size = cfg.train.eval_batch_size
        n = x.shape[0]
        if n <= size:
            return apply(state, x)
        k = -(-n // size)
        padded = jnp.concatenate([x, jnp.zeros((k * size - n, x.shape[1]), x.dtype)])
        out = jax.lax.map(lambda xs: apply(state, xs), padded.reshape(k, size, x.shape[1]))
        return out.reshape(k * size, -1)[:n]

    def measure_member(state: MemberState, splits: dict):
        """One member's performance on every split, changing nothing:
        ``(scalars, whether its parameters are finite)``."""
        scalars = {}
        for split in ["train", "test"] + (["val"] if spec.has_val else []):
            x, labels = splits[split]
            outputs = logits_of(state, x)
            scalars[f"{split}/loss"] = loss_of(outputs, labels)
            if regression:
                scalars[f"{split}/r2"] = metrics.r2(outputs[:, 0], labels)
                continue
            scalars[f"{split}/accuracy"] = metrics.accuracy(outputs, labels)
            if split != "train":
                scalars[f"{split}/f1_macro"] = metrics.f1_macro(outputs, labels,
                                                                spec.num_classes)
                scalars[f"{split}/auc_roc"] = metrics.auc_roc_ovr(outputs, labels,
                                                                  spec.num_classes)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                    for p in jax.tree.leaves(state.params)]))
        return scalars, finite

    def probe_of(state: MemberState, splits: dict, with_loss_inputs=True) -> diagnostics.Probe:
        """One member's probe pass and what the diagnostics read of its state
        (with the sharpness family's loss inputs where it is chosen and
        ``with_loss_inputs``: they read the optimiser state, which the
        network a full evaluation measured beside training does not keep)."""
        logits, cap, gparams, deltas = diagnostics.probe_pass(
            lambda p, x, **kw: apply(state, x, p, **kw), loss_of, state.params, widths,
            *splits["probe"])
        loss_inputs = None
        if sharpness and with_loss_inputs:
            x, labels = splits["sharpness"]
            loss_inputs = diagnostics.LossInputs(
                x, labels, state.hparams, remedies.model_kwargs(state.interventions),
                optim.current_learning_rate(cfg, state.opt_state))
        return diagnostics.Probe(logits, cap, gparams, deltas, state.params,
                                 state.batch_stats, state.update_ratio, state.prev_dead,
                                 state.has_prev, state.carry, loss_inputs)

    def costly_member(state: MemberState, splits: dict):
        """One member's costly diagnostics (:func:`deadjax.diagnostics.measure_full`
        of its own probe pass): ``(full scalars, histograms)``."""
        return diagnostics.measure_full(probe_of(state, splits, with_loss_inputs=False), diag)

    def diagnose_member(state: MemberState, splits: dict, full):
        """One member's diagnostics, changing nothing: ``(scalars, (full
        scalars, histograms), the families' new carries, dead masks)``. The
        costly ones (:func:`deadjax.diagnostics.measure_full`) only where
        ``full``, a scalar shared by every member, so the ``lax.cond`` on it
        is a real branch (skipped, not masked) inside the per-member loop and
        under ``vmap`` alike; NaN and empty histograms otherwise
        (:func:`skipped`). ``full`` may also be a Python bool: ``False``
        leaves them out of the program, ``({}, {})`` (:func:`measure_beside`
        computes them in a program of their own, and :class:`Compiled` fills
        in the placeholders of evaluations that are not full)."""
        probe = probe_of(state, splits)
        values, carry = diagnostics.measure(probe, diag)
        if full is False:
            measured = {}, {}
        else:
            costly_part = diagnostics.for_full(probe)
            costly = lambda p: diagnostics.measure_full(p, diag)
            shapes = jax.eval_shape(costly, costly_part)
            measured = jax.lax.cond(full, costly, lambda _: skipped(shapes, jnp),
                                    costly_part)
        return values, measured, carry, diagnostics.dead_masks(probe, diag)

    # The diagnostics run member by member on CPU: each device takes its own
    # members in turn (sharding.map_members), so one member's probe arrays
    # stay in cache through every family and through the XLA loops of
    # deadjax.linalg. Measured at 1,024 members of 40-64-64-10 with 1,024
    # probe inputs: an evaluation with the default diagnostics 3.8 s instead
    # of 4.6 s vmapped over all members (a full one 10.0 s instead of ~11),
    # against 3.3 s without. Accelerators batch every member.
    per_member = sharding.map_members if linalg.use_xla_solvers() else jax.vmap

    def splits_of(state: MemberState, data: dict) -> dict:
        """Every split as the task of the last step taken presents it, and
        the sharpness family's batch where it is chosen. That batch is
        gathered here, outside the per-member map: a gather of the replicated
        data inside shard_map's manual mesh is refused."""
        t = task_plan.evaluated(state.step[0])
        splits = {name: task_plan.present(x, y, t) for name, (x, y) in data.items()}
        if sharpness:
            x, labels = splits["train"]
            if sharpness_idx is not None:
                x, labels = x[sharpness_idx], labels[sharpness_idx]
            splits["sharpness"] = (x, labels)
        return splits

    def evaluate(state: MemberState, data: dict, full):
        """Every member's measurements on the task of the last step taken:
        ``(scalars, histograms, evidence)``; the costly diagnostics only where
        ``full`` (:func:`diagnose_member`)."""
        splits = splits_of(state, data)
        with jax.default_matmul_precision("float32"):
            scalars, finite = jax.vmap(measure_member, in_axes=(0, None))(state, splits)
            if not cfg.diagnostics.enabled:
                return scalars, {}, Evidence(finite, None, None)
            values, (full_scalars, hists), carry, dead = per_member(
                lambda s: diagnose_member(s, splits, full))(state)
        scalars = {**scalars, **values, **full_scalars}
        return scalars, hists, Evidence(finite, dead, scalars["output_constant"] > 0, carry)

    def measure_beside(state: MemberState, data: dict, start, size: int):
        """The costly diagnostics alone of members ``start`` to ``start +
        size`` (``size`` static), ``(full scalars, histograms)``: what
        ``evaluate(state, data, True)`` adds to ``evaluate(state, data,
        False)``, member for member the same numbers, as a program of its
        own (:class:`Compiled` runs it beside the next chunk's training on
        CPU). ``state`` is the network an evaluation measured
        (``train_chunk_measured``'s last output), all members: the block is
        sliced here, so every block runs the one compiled program."""
        block = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), state)
        splits = splits_of(block, data)
        with jax.default_matmul_precision("float32"):
            return per_member(lambda s: costly_member(s, splits))(block)

    def observe_member(state: MemberState, evidence: Evidence) -> MemberState:
        newly = ~evidence.finite_params & ~state.diverged
        state = state.replace(diverged=state.diverged | newly,
                              diverged_step=jnp.where(newly, state.step, state.diverged_step))
        if evidence.dead is not None:
            born_dead = jnp.where(state.has_prev, state.born_dead, evidence.output_constant)
            state = state.replace(prev_dead=evidence.dead, born_dead=born_dead,
                                  carry=evidence.carry)
        return state.replace(has_prev=jnp.ones((), bool))

    def observe(state: MemberState, evidence: Evidence) -> MemberState:
        """The carry after an evaluation: members with non-finite parameters
        marked diverged at this step, the dead masks kept for the next
        evaluation's persistent/revived, born-dead set at the first, the
        diagnostic families' carries replaced by their new ones."""
        return jax.vmap(observe_member)(state, evidence)

    def report_member(state: MemberState) -> dict:
        """The scalars read off the observed state."""
        out = {}
        if cfg.diagnostics.enabled:
            out["born_dead"] = state.born_dead.astype(jnp.float32)
        if state.interventions:
            counts = state.interventions["units_reset"]
            for l in range(len(widths)):
                out[f"units_reset/layer_{l}"] = counts[l]
            out["units_reset/all"] = counts.sum()
        out["diverged"] = state.diverged.astype(jnp.float32)
        out["diverged_step"] = state.diverged_step
        return out

    # --------------------------------------------------------------- a chunk
    def chunk_with_measured(state: MemberState, data: dict, stop, full):
        """:func:`train_chunk`, and the network its evaluation measured (the
        state before a periodic remedy due at ``stop``, without the optimiser
        state and the families' carries): ``(state, scalars, tables,
        measured)``."""
        n = stop - state.step[0]
        # The online metrics: each batch's loss and accuracy before its update,
        # summed over the chunk (Dohare et al. 2024 report these for streams).
        dtype = float_dtype()
        zero = jnp.zeros(state.step.shape, dtype)

        def body(i, carry):
            s, loss, acc = carry
            # Only the last step records the update norms (update_ratio/layer_L)
            # and leaves its periodic remedies to after the evaluation.
            last = i == n - 1
            s, batch_loss, batch_acc = step(s, data, with_ratio=last, periodic=~last)
            return s, loss + batch_loss.astype(dtype), acc + batch_acc.astype(dtype)

        state, loss, acc = jax.lax.fori_loop(0, jnp.maximum(n, 0), body, (state, zero, zero))
        scalars, hists, evidence = evaluate(state, data, full)
        measured = measured_view(state)
        # Per unit, for the lifelines table: dead at this evaluation, and the
        # step of each unit's last reset (read before this step's remedies).
        units = {}
        if evidence.dead is not None:
            units["dead"] = evidence.dead
        with jax.default_matmul_precision("float32"):
            state = observe(state, evidence)
        if remedies.periodic:
            state = jax.lax.cond((n > 0) & is_periodic_step(state),
                                 lambda s: periodic_remedies(s, data), lambda s: s, state)
        if state.interventions:
            units["last_reset"] = state.interventions["last_reset"]
        with jax.default_matmul_precision("float32"):
            scalars = {**scalars, **jax.vmap(report_member)(state)}
        scalars["train/online_loss"] = loss / n
        if not regression:
            scalars["train/online_accuracy"] = acc / n
        if task_plan.kind != "stationary":
            scalars["task"] = jnp.broadcast_to(task_plan.evaluated(state.step[0]),
                                               state.step.shape)
        return state, scalars, {"histograms": hists, "units": units}, measured

    def train_chunk(state: MemberState, data: dict, stop, full):
        """Every member trained to step ``stop`` (all members share the step;
        ``stop`` equal to it evaluates only), then evaluated and observed:
        ``(state, scalars, tables)``: ``tables["histograms"]`` (at full
        evaluations; :func:`deadjax.diagnostics.measure_full`) and
        ``tables["units"]`` (per hidden layer, each unit's dead flag at this
        evaluation, and with remedies the step of its last reset), what the
        histogram and unit-lifeline tables are written from.

        A periodic remedy due at ``stop`` acts after the evaluation: the
        evaluation measures the network it acts on, and the ``units_reset``
        counts reported with it include that application (the state returned,
        and checkpointed, is after it, as in an uninterrupted run)."""
        return chunk_with_measured(state, data, stop, full)[:3]

    def train_chunk_measured(state: MemberState, data: dict, stop):
        """:func:`train_chunk` without the costly diagnostics (their scalars
        and histograms left out: :class:`Compiled` adds them, computed by
        :func:`measure_beside` or as :func:`skipped` placeholders), and the
        network its evaluation measured: ``(state, scalars, tables,
        measured)``."""
        return chunk_with_measured(state, data, stop, False)

    return Program(spec=spec, init=init, step=step, evaluate=evaluate, observe=observe,
                   train_chunk=train_chunk, train_chunk_measured=train_chunk_measured,
                   measure_beside=measure_beside, periodic=periodic_remedies, apply=apply,
                   hparams_of=lambda configs: hparams_of(configs, bool(spec.remedies)))


# --------------------------------------------------------------------------
# Compiled programs, once per group and process
# --------------------------------------------------------------------------

def skipped(shapes, xp=np):
    """The costly diagnostics of an evaluation that is not full, shaped as
    ``shapes`` (a pytree of shapes and dtypes): NaN scalars, and histograms
    with NaN ranges and no counts (every integer 0)."""
    return jax.tree.map(lambda x: xp.full(x.shape, np.nan if jnp.issubdtype(x.dtype, jnp.floating)
                                          else 0, x.dtype), shapes)


class Evaluation:
    """One evaluation's outputs, ``(scalars, tables)`` of :func:`make_program`'s
    ``train_chunk``, of which the costly diagnostics may still be computing
    beside the next chunk (:meth:`Compiled.start`), or still to be filled
    with their placeholders (``costly``: a function giving them). :meth:`result`
    waits for them and returns the whole evaluation, as ``train_chunk``
    would."""

    def __init__(self, scalars: dict, tables: dict, beside: Sequence = (),
                 costly: Callable | None = None):
        self._scalars, self._tables, self._beside = scalars, tables, list(beside)
        self._costly = costly

    def result(self) -> tuple[dict, dict]:
        if self._beside:
            # Each part is a contiguous block of members: joined in order.
            parts = [jax.device_get(f.result()) for f in self._beside]
            self._costly = lambda: jax.tree.map(lambda *a: np.concatenate(a), *parts)
            self._beside = []
        if self._costly is not None:
            full_scalars, hists = self._costly()
            self._scalars = {**self._scalars, **full_scalars}
            self._tables = {**self._tables, "histograms": hists}
            self._costly = None
        return self._scalars, self._tables


def measures_beside(spec: GroupSpec) -> bool:
    """Whether a group's costly diagnostics run in a program of their own,
    beside the next chunk's training: on a CPU, with one device and one
    process (several devices already run members in parallel, and programs
    launched from two threads could reach a multi-process job's collectives
    in different orders)."""
    return (bool(spec.config.diagnostics.enabled) and linalg.use_xla_solvers()
            and jax.device_count() == 1 and jax.process_count() == 1)


def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # not on Linux
        return os.cpu_count() or 1


def beside_parts(population: int) -> int:
    """Blocks of members the costly diagnostics are split into, one per
    thread: the largest divisor of ``population`` not above the host's cores
    (equal blocks share one compiled program)."""
    return max(d for d in range(1, min(host_cores(), population) + 1) if population % d == 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Compiled:
    """A group's jitted programs: ``init``, ``chunk`` (``train_chunk``, the
    state donated) and, where the costly diagnostics run beside training
    (:func:`measures_beside`), ``chunk_measured`` (``train_chunk_measured``)
    and ``beside`` (``measure_beside``). Every chunk output has a leading
    member axis sharded over all devices; fixing the output sharding keeps
    the program's signature identical from call to call (init's output, or a
    chunk's, feeds the next chunk).

    On a CPU the diagnostics are loops of small steps that keep one core busy
    (:mod:`deadjax.linalg`), while a chunk's training leaves part of the
    others idle; programs launched from different threads run at the same
    time. So there a full evaluation's costly diagnostics are computed by
    their own program, on the network the evaluation measured, in worker
    threads (one block of members each, :func:`beside_parts`), while the
    next chunk trains."""
    program: Program
    init: Callable
    chunk: Callable
    chunk_measured: Callable | None = None
    beside: Callable | None = None
    pool: concurrent.futures.ThreadPoolExecutor | None = None
    _beside_programs: dict = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def spec(self) -> GroupSpec:
        return self.program.spec

    def start(self, state, data, stop, full=True) -> tuple[Any, Evaluation]:
        """Dispatches the training of every member to step ``stop`` (a host
        int; the current step evaluates only) and its evaluation, full or
        not: ``(state, evaluation)``; nothing waits for the device. Where
        the costly diagnostics run beside training they start now, in the
        worker threads."""
        stop = jnp.asarray(stop, jnp.int32)
        if self.beside is None:
            state, scalars, tables = self.chunk(state, data, stop, jnp.asarray(full, bool))
            return state, Evaluation(scalars, tables)
        size = jax.tree.leaves(state)[0].shape[0]
        k = size // beside_parts(size)
        # jax_enable_x64 may be set for this thread only (jax.enable_x64):
        # the workers trace under the caller's setting.
        x64 = float_dtype() == jnp.float64
        # The first call compiles the chunk here, before any worker compiles
        # the costly program: the chunk compiled while another program
        # compiles beside it runs slower, with the same HLO (measured at
        # 1,024 members of the sweep benchmark's group: 40 steps and an
        # evaluation 10.3 s instead of 8.3 s, in two runs each).
        state, scalars, tables, measured = self.chunk_measured(state, data, stop)
        if not full:
            shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                                 sharding=a.sharding), measured)
            return state, Evaluation(scalars, tables, costly=functools.partial(
                self._placeholders, shapes, k, data, x64))
        return state, Evaluation(scalars, tables, [
            self.pool.submit(self._measure, measured, i, k, data, x64)
            for i in range(0, size, k)])

    def _placeholders(self, measured, k: int, data, x64: bool):
        """:func:`skipped` costly diagnostics for every member of
        ``measured``, shaped as the costly program's output (compiled here
        if no full evaluation compiled it yet; the last one always does)."""
        blocks = self._program_for(measured, k, data, x64).out_info
        size = jax.tree.leaves(measured)[0].shape[0]
        return skipped(jax.tree.map(
            lambda b: jax.ShapeDtypeStruct((size,) + b.shape[1:], b.dtype), blocks))

    def _program_for(self, measured, k: int, data, x64: bool):
        """``beside`` compiled for blocks of ``k`` members of ``measured``,
        once per population and block size (and float width), from the
        shapes alone: the worker compiles while the evaluation that computes
        ``measured`` still runs."""
        key = (jax.tree.leaves(measured)[0].shape[0], k, x64)
        with self._lock, jax.enable_x64(x64):
            if key not in self._beside_programs:
                shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
                    a.shape, a.dtype, sharding=a.sharding), measured)
                start = jax.ShapeDtypeStruct((), jnp.int32)
                self._beside_programs[key] = self.beside.lower(shapes, data, start,
                                                               k).compile()
            return self._beside_programs[key]

    def _measure(self, measured, i: int, k: int, data, x64: bool):
        """``beside`` on members ``i`` to ``i + k`` of ``measured``."""
        program = self._program_for(measured, k, data, x64)
        return program(measured, data, np.int32(i))

    def train_chunk(self, state, data, stop, full=True):
        """Trains every member to step ``stop`` (a host int; the current step
        evaluates only), then evaluates them: ``(state, scalars, tables)``
        (:func:`make_program`'s ``train_chunk``), waited for where the costly
        diagnostics run beside. ``full``: whether this evaluation computes
        the costly diagnostics too."""
        state, evaluation = self.start(state, data, stop, full)
        return (state, *evaluation.result())


# Groups whose compiled programs a process keeps. Each group's executables
# hold about 1,600 memory mappings (XLA:CPU's LLVM JIT maps every compiled
# kernel's code and data apart; 1,650 measured for a tiny two-layer group), and
# Linux lets a process have vm.max_map_count of them (65,530 by default): a
# process that kept every group died after about 40 groups, LLVM failing with
# "Cannot allocate memory" and then a segmentation fault. A sweep runs its
# groups one after another, so the last few are all a rerun needs.
COMPILED_GROUPS = 4


@functools.lru_cache(maxsize=COMPILED_GROUPS)
def compiled(spec: GroupSpec) -> Compiled:
    """The jitted programs of ``spec``, built once per process and kept for
    the last :data:`COMPILED_GROUPS` groups: every chunk of the group, and a
    rerun in the same process, reuses them; an older group's programs are
    released (and compiled again if it comes back)."""
    program = make_program(spec)
    members = sharding.members()
    beside = {}
    if measures_beside(spec):
        beside = dict(chunk_measured=jax.jit(program.train_chunk_measured, donate_argnums=0,
                                             out_shardings=(members,) * 4),
                      beside=jax.jit(program.measure_beside, static_argnums=3),
                      pool=concurrent.futures.ThreadPoolExecutor(
                          host_cores(), thread_name_prefix="deadjax-diagnostics"))
    return Compiled(program=program,
                    init=jax.jit(program.init, out_shardings=members),
                    chunk=jax.jit(program.train_chunk, donate_argnums=0,
                                  out_shardings=(members, members, members)), **beside)
