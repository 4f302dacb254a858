"""A population: P members of one group, trained and evaluated as one program.

Everything here is written for **one member** as pure functions over a
:class:`MemberState`; the population is ``jax.vmap`` over a leading member
axis. :class:`Population` holds a group's static structure (model, optimiser,
dataset shapes) and its two compiled programs:

- ``init(seeds, hparams)``: every member's initial state;
- ``train_chunk(state, data, stop, full)``: a loop of the vmapped training
  step up to step ``stop``, then every member's evaluation and diagnostics
  (the costly ones only where ``full``), in one program. The trip count and
  ``full`` are traced, so chunks of any length reuse it;
- ``evaluate(state, data)``: ``train_chunk`` with no steps to take (the
  evaluation at step 0), the same compiled program.

Within the loop, after each step: the member's intervention
(``interventions.method``: continual backprop every step, activation reset,
ReDo and shrink-and-perturb every ``interventions.every`` steps; masked per
member, docs/interventions.md), and for non-stationary data every step learns
the task of its step (``data.task``, or the slowly-changing regression's
stream; docs/data.md), the evaluation measures the task of the last step.

A member whose training loss is non-finite is marked diverged at that step and
stops updating: its parameters and statistics stay those that gave the
non-finite loss; the others train on. Parameters are checked for non-finite
values at each evaluation, which marks a member diverged too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deadjax import (activations, config as config_lib, data as data_lib, diagnostics,
                     interventions, metrics, models, optim, sharding, tasks)

# Per-member hyperparameters: state key -> config field.
HPARAMS = {
    "learning_rate": "optim.learning_rate",
    "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum",
    "sigma_w": "model.sigma_w",
    "sigma_b": "model.sigma_b",
    "leaky_slope": "model.leaky_slope",
    "dropout": "model.dropout",
}

# Per-member hyperparameters of the interventions, in the state only where the
# group uses an intervention (so states and checkpoints without one keep their
# layout). "intervention" holds the index of interventions.method in
# config.INTERVENTIONS.
INTERVENTION_HPARAMS = {
    "intervention": "interventions.method",
    "redo_tau": "interventions.redo_tau",
    "reset_slope": "interventions.reset_slope",
    "shrink": "interventions.shrink",
    "noise": "interventions.noise",
    "replacement_rate": "interventions.replacement_rate",
    "maturity": "interventions.maturity",
    "utility_decay": "interventions.utility_decay",
}

# Constants that separate the random streams derived from a member's key.
_FRESH_STREAM = 0x66726573   # "fres": re-initialised units
_PERTURB_STREAM = 0x70657274  # "pert": shrink-and-perturb noise

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
    hparams: dict              # per-member values of HPARAMS (float32 scalars)
    diverged: jax.Array        # bool
    diverged_step: jax.Array   # int32, -1 while finite
    update_ratio: jax.Array    # (L+1,) ||dW_l|| / ||W_l|| of the last step; NaN before any
    prev_dead: tuple           # per hidden layer, bool (width,): dead at the previous evaluation
    has_prev: jax.Array        # bool: an evaluation has happened
    born_dead: jax.Array       # bool: output constant over the probe batch at step 0
    interventions: dict = dataclasses.field(default_factory=dict)
    # ^ {} unless the group uses an intervention: "units_reset" (int32 (L,),
    # cumulative), "switched" (activation reset: per layer bool (width,)),
    # "cbp" (continual backprop: interventions.init_cbp_state)


def float_dtype():
    """float64 under ``jax_enable_x64`` (used by the exactness tests), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def hparams_of(points, with_interventions: bool = False) -> dict[str, np.ndarray]:
    """Stacks the per-member hyperparameters of resolved point configs (and
    those of :data:`INTERVENTION_HPARAMS` ``with_interventions``)."""
    fields = dict(HPARAMS, **(INTERVENTION_HPARAMS if with_interventions else {}))

    def value(p, f):
        v = config_lib.get_field(p, f)
        return config_lib.INTERVENTIONS.index(v) if f == "interventions.method" else v

    return {k: np.asarray([value(p, f) for p in points], float_dtype())
            for k, f in fields.items()}


def group_interventions(points) -> tuple[str, ...]:
    """The interventions some member of ``points`` uses, in registry order."""
    used = {config_lib.get_field(p, "interventions.method") for p in points}
    return tuple(m for m in config_lib.INTERVENTIONS[1:] if m in used)


def _dense_names(num_hidden: int) -> list[str]:
    return [f"Dense_{l}" for l in range(num_hidden + 1)]


class Population:
    """The static structure of a group and its compiled programs."""

    def __init__(self, config, dataset: data_lib.Dataset, *, uses_dropout: bool | None = None,
                 uses_l2: bool | None = None, methods: tuple[str, ...] | None = None):
        self.config = config
        # Whether any member has a dropout rate / an L2 weight decay above 0
        # (runner.population_for asks the whole group; by default the config
        # says); when not, the program omits them, which changes no number.
        self.uses_dropout = (config.model.dropout > 0) if uses_dropout is None else uses_dropout
        self.uses_l2 = ((config.optim.weight_decay > 0) if uses_l2 is None else uses_l2) \
            and config.optim.name != "adamw"
        # The interventions compiled in: those some member of the group uses
        # (runner.population_for asks the whole group; by default the config).
        self.methods = group_interventions([config]) if methods is None else tuple(methods)
        self.num_classes = dataset.num_classes
        self.regression = config.data.name in config_lib.REGRESSION_DATASETS
        self.task = config.data.name if self.regression else config.data.task
        self.task_every = int(config.data.task_every)
        if self.task != "stationary":
            self.task_key = tasks.task_key(config.data.seed, self.task)
        if self.regression:
            self.teacher = data_lib.regression_teacher(config)
        self.num_features = dataset.x_train.shape[1]
        self.num_train = dataset.x_train.shape[0]
        self.model = models.from_config(config, self.num_classes)
        self.widths = tuple(config.model.widths)
        self.activation = activations.get(config.model.activation)
        self.tx = optim.make(config)
        self.precision = MATMUL_PRECISION[config.train.precision]
        self.shared_key = jax.random.PRNGKey(config.data.seed)
        self.has_val = dataset.x_val.shape[0] > 0
        # Every output has a leading member axis, sharded over all devices; fixing
        # the output sharding keeps the program's signature identical from call
        # to call (init's output, or a chunk's, feeds the next chunk).
        members = sharding.members()
        self.init = jax.jit(jax.vmap(self._init_member), out_shardings=members)
        self.chunk_program = jax.jit(self._train_chunk, donate_argnums=0,
                                     out_shardings=(members, members, members))

    # ------------------------------------------------------------------ init
    def hparams_of(self, points) -> dict[str, np.ndarray]:
        """The per-member hyperparameters this population's state holds."""
        return hparams_of(points, with_interventions=bool(self.methods))

    def _init_member(self, seed, hparams) -> MemberState:
        key = jax.random.PRNGKey(seed)
        init_key, dropout_key, data_key = jax.random.split(key, 3)
        x = jnp.zeros((1, self.num_features), float_dtype())
        variables = self.model.init({"params": init_key}, x, hparams, train=False)
        params = variables["params"]
        opt_state = optim.init(self.tx, params, {k: hparams[k] for k in
                                                 ("learning_rate", "weight_decay", "momentum")})
        return MemberState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables.get("batch_stats", {}), opt_state=opt_state,
            key=dropout_key, data_key=data_key, hparams=hparams,
            diverged=jnp.zeros((), bool), diverged_step=jnp.full((), -1, jnp.int32),
            update_ratio=jnp.full((len(self.widths) + 1,), jnp.nan, float_dtype()),
            prev_dead=tuple(jnp.zeros((w,), bool) for w in self.widths),
            has_prev=jnp.zeros((), bool), born_dead=jnp.zeros((), bool),
            interventions=self._init_interventions())

    def _init_interventions(self) -> dict:
        if not self.methods:
            return {}
        out = {"units_reset": jnp.zeros((len(self.widths),), jnp.int32)}
        if "activation_reset" in self.methods:
            out["switched"] = tuple(jnp.zeros((w,), bool) for w in self.widths)
        if "continual_backprop" in self.methods:
            out["cbp"] = interventions.init_cbp_state(self.widths)
        return out

    # ----------------------------------------------------------------- model
    def apply_model(self, state, x, params=None, **kwargs):
        """``model.apply`` for one member: its variables, hyperparameters and
        (activation reset) switched units."""
        switched = state.interventions.get("switched") if state.interventions else None
        return self.model.apply(self._variables(state, params), x, state.hparams,
                                switched=switched, **kwargs)

    def loss(self, outputs, targets):
        """The training loss: cross-entropy of the logits, or (regression) the
        mean squared error of the single output."""
        if self.regression:
            return metrics.mse(outputs[:, 0], targets)
        return metrics.cross_entropy(outputs, targets)

    # ----------------------------------------------------------------- tasks
    def task_at(self, step):
        """The task the training step ``step`` (0-based) learns: ``step //
        data.task_every`` (0 for a stationary dataset)."""
        if self.task == "stationary":
            return jnp.zeros((), jnp.int32)
        return tasks.task_index(step, self.task_every)

    def evaluated_task(self, step):
        """The task an evaluation after ``step`` steps measures: the task of
        the last step taken (task 0 at step 0)."""
        return self.task_at(jnp.maximum(step - 1, 0))

    def task_view(self, data: dict, task) -> dict:
        """``data`` as task ``task`` presents it: permuted input features,
        permuted class labels, or (slowly-changing regression) the evaluation
        samples with task ``task``'s flipping bits and the teacher's targets."""
        if self.task == "stationary":
            return data
        out = dict(data)
        xs = [k for k in data if k.startswith("x_")] + ["probe_x"]
        ys = {"probe_x": "probe_y", **{k: "y_" + k[2:] for k in xs if k != "probe_x"}}
        if self.task == "permuted_inputs":
            perm = tasks.input_permutation(self.task_key, task, self.num_features)
            for k in xs:
                out[k] = data[k][:, perm]
        elif self.task == "shuffled_labels":
            labels = tasks.label_permutation(self.task_key, task, self.num_classes)
            for k in xs:
                out[ys[k]] = labels[data[ys[k]]]
        else:
            for k in xs:
                out[k], out[ys[k]] = self._regression_relabel(data[k], task)
        return out

    # -------------------------------------------------------------- training
    def _variables(self, state, params=None):
        v = {"params": state.params if params is None else params}
        if state.batch_stats:
            v["batch_stats"] = state.batch_stats
        return v

    def _batch(self, state: MemberState, data: dict, task):
        """One member's training batch at its step, as task ``task`` presents it."""
        cfg = self.config
        if self.regression:
            key = state.data_key if cfg.data.order != "shared" else self.shared_key
            return self._regression_batch(jax.random.fold_in(key, state.step), task)
        idx = data_lib.batch_indices(
            state.step, num_train=self.num_train, batch_size=cfg.data.batch_size,
            order=cfg.data.order, member_key=state.data_key, shared_key=self.shared_key)
        x, y = data["x_train"][idx], data["y_train"][idx]
        if self.task == "permuted_inputs":
            x = x[:, tasks.input_permutation(self.task_key, task, self.num_features)]
        elif self.task == "shuffled_labels":
            y = tasks.label_permutation(self.task_key, task, self.num_classes)[y]
        return x, y

    def _train_step(self, state: MemberState, data: dict, task, with_ratio: bool = True):
        """One member's step: ``(the trained state, whether it is finite, the
        batch's loss and accuracy before the update, the unit activations)``.

        The caller keeps the old parameters where the step is not finite. Work
        no member of the group needs is left out of the program: dropout masks
        when every rate is 0 and the L2 term when every weight decay is 0
        (both are exact identities then), the update-to-weight norms on
        all but a chunk's last step (``with_ratio``), and the activations
        unless continual backprop needs them (``()`` then).
        """
        cfg = self.config
        x, y = self._batch(state, data, task)
        dropout_key = jax.random.fold_in(state.key, state.step) if self.uses_dropout else None
        capture = "continual_backprop" in self.methods

        def loss_fn(params):
            out, mutated = self.apply_model(
                state, x, params, train=True, dropout_key=dropout_key,
                mutable=["batch_stats"], capture=capture)
            logits, cap = out if capture else (out, {"post": ()})
            loss = self.loss(logits, y)
            objective = loss
            if self.uses_l2:
                objective = loss + optim.l2_penalty(params, state.hparams["weight_decay"],
                                                    cfg.optim.name)
            # Flax keeps running statistics in float32 whatever the compute dtype.
            stats = jax.tree.map(lambda new, old: new.astype(old.dtype),
                                 mutated.get("batch_stats", {}), state.batch_stats)
            return objective, (stats, loss, logits, tuple(cap["post"]))

        (_, (batch_stats, loss, logits, acts)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ratio = state.update_ratio
        if with_ratio:
            ratio = jnp.stack([
                jnp.linalg.norm(updates[n]["kernel"]) / jnp.linalg.norm(state.params[n]["kernel"])
                for n in _dense_names(len(self.widths))])
        # A step whose loss is non-finite is not taken. The parameters are not
        # checked here: a pass over them costs ~8% of a step on a CPU, and
        # non-finite parameters make the next step's loss non-finite (or, where a
        # bounded activation absorbs an infinity, are caught at the evaluation).
        finite = jnp.isfinite(loss)
        acc = (jnp.full((), jnp.nan, loss.dtype) if self.regression
               else metrics.accuracy(logits, y))
        trained = state.replace(params=params, batch_stats=batch_stats,
                                opt_state=opt_state, update_ratio=ratio)
        return trained, finite, loss, acc, acts

    def _population_step(self, state: MemberState, data: dict, with_ratio: bool = True):
        """Every member's step: ``(state, per-member batch loss, accuracy)``.
        Members already diverged, or whose step is not finite, keep their
        parameters and statistics. Then the interventions of the step:
        continual backprop at every step, the others every
        ``interventions.every`` steps."""
        task = self.task_at(state.step[0])  # all members share the step
        with jax.default_matmul_precision(self.precision):
            trained, finite, loss, acc, acts = jax.vmap(
                lambda s: self._train_step(s, data, task, with_ratio))(state)
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
        if "continual_backprop" in self.methods:
            state = self._continual_backprop(state, acts)
        periodic = [m for m in self.methods if m != "continual_backprop"]
        if periodic:
            every = self.config.interventions.every
            state = jax.lax.cond(state.step[0] % every == 0,
                                 lambda s: self._periodic_interventions(s, data),
                                 lambda s: s, state)
        return state, loss, acc

    # --------------------------------------------------------- interventions
    def _uses(self, state: MemberState, method: str):
        """Per member: whether it uses ``method`` (and has not diverged)."""
        code = config_lib.INTERVENTIONS.index(method)
        return (state.hparams["intervention"] == code) & ~state.diverged

    def _fresh_params(self, state: MemberState):
        """A new draw of one member's initialiser (its own sigma_w, sigma_b),
        from a key of the member and the step: the parameters re-initialised
        units take."""
        key = jax.random.fold_in(jax.random.fold_in(state.key, _FRESH_STREAM), state.step)
        x = jnp.zeros((1, self.num_features), float_dtype())
        return self.model.init({"params": key}, x, state.hparams, train=False)["params"]

    def _continual_backprop(self, state: MemberState, acts):
        """Continual backprop (Dohare et al. 2024) after every step, for the
        members that use it: utilities and ages updated every step; the units
        chosen are re-initialised (with a fresh draw of the initialiser, the
        costly part) only at steps where some member replaces one."""
        on = self._uses(state, "continual_backprop")

        def select(s, a, use):
            hp = s.hparams
            cbp, replaced = interventions.cbp_select(
                s.params, s.interventions["cbp"], a, replacement_rate=hp["replacement_rate"],
                maturity=hp["maturity"], decay=hp["utility_decay"])
            cbp = jax.tree.map(lambda n, o: jnp.where(use, n, o), cbp, s.interventions["cbp"])
            replaced = tuple(r & use for r in replaced)
            inter = self._count(dict(s.interventions, cbp=cbp), replaced)
            return s.replace(interventions=inter), replaced

        state, replaced = jax.vmap(select)(state, acts, on)
        return self._reinitialise(state, replaced)

    def _reinitialise(self, state: MemberState, masks):
        """Every member's units of ``masks`` (per layer, leading member axis)
        re-initialised (:func:`deadjax.interventions.replace_units` with a
        fresh draw of the member's initialiser), under a population-level
        ``lax.cond``: the draw and the passes over parameters and optimiser
        state are made only where some member has a unit to re-initialise."""
        def replace(s):
            def member(m, r):
                params, opt_state = interventions.replace_units(
                    m.params, m.opt_state, self._fresh_params(m), r)
                return m.replace(params=params, opt_state=opt_state)
            return jax.vmap(member)(s, masks)

        return jax.lax.cond(jnp.any(jnp.stack([r.any() for r in masks])), replace,
                            lambda s: s, state)

    def _count(self, inter: dict, units) -> dict:
        """``inter`` with the units of ``units`` (per-layer masks) counted."""
        counts = jnp.stack([u.sum(dtype=jnp.int32) for u in units])
        return dict(inter, units_reset=inter["units_reset"] + counts)

    def _periodic_interventions(self, state: MemberState, data: dict):
        """Activation reset, ReDo and shrink-and-perturb, for the members that
        use them, on the probe batch of the task just trained on."""
        probe = {k: data[k] for k in ("probe_x", "probe_y")}
        probe_x = self.task_view(probe, self.evaluated_task(state.step[0]))["probe_x"]
        cfg = self.config

        def member(s):
            _, cap = self.apply_model(s, probe_x, capture=True)
            hp = s.hparams
            recycle = tuple(jnp.zeros((w,), bool) for w in self.widths)
            if "activation_reset" in self.methods:
                use = self._uses(s, "activation_reset")
                dead = [metrics.dead_units(d, self.activation.max_derivative,
                                           cfg.diagnostics.dead_threshold) for d in cap["dphi"]]
                newly = tuple(d & ~w & use for d, w in zip(dead, s.interventions["switched"]))
                switched = tuple(w | n for w, n in zip(s.interventions["switched"], newly))
                s = s.replace(interventions=self._count(
                    dict(s.interventions, switched=switched), newly))
            if "redo" in self.methods:  # interventions.redo, its re-initialisation below
                use = self._uses(s, "redo")
                recycle = tuple(metrics.dormant_units(h, hp["redo_tau"]) & use
                                for h in cap["post"])
                s = s.replace(interventions=self._count(s.interventions, recycle))
            if "shrink_perturb" in self.methods:
                use = self._uses(s, "shrink_perturb")
                key = jax.random.fold_in(jax.random.fold_in(s.key, _PERTURB_STREAM), s.step)
                params = interventions.shrink_perturb(s.params, key, hp["shrink"], hp["noise"])
                s = s.replace(params=jax.tree.map(lambda n, o: jnp.where(use, n, o),
                                                  params, s.params))
            return s, recycle

        with jax.default_matmul_precision("float32"):
            state, recycle = jax.vmap(member)(state)
        if "redo" in self.methods:
            state = self._reinitialise(state, recycle)
        return state

    # -------------------------------------------------------------- regression
    def _regression_batch(self, key, task):
        """``data.batch_size`` fresh examples of task ``task`` of the
        slowly-changing regression (:func:`deadjax.tasks.regression_batch`;
        the network sees the ``m`` bits, not the constant bias bit)."""
        x, y = tasks.regression_batch(self.task_key, self.teacher, key, task,
                                      self.config.data.batch_size,
                                      self.config.data.flipping_bits)
        return x[:, :-1].astype(float_dtype()), y.astype(float_dtype())

    def _regression_relabel(self, x, task):
        """A stored sample ``x`` (``m`` bits) with task ``task``'s flipping bits
        and the teacher's targets."""
        f = self.config.data.flipping_bits
        bits = tasks.flipping_bits(self.task_key, task, self.num_features, f).astype(x.dtype)
        x = x.at[:, :f].set(jnp.broadcast_to(bits, (x.shape[0], f)))
        full = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
        return x, tasks.teacher_output(self.teacher, full).astype(x.dtype)

    # ------------------------------------------------------------ evaluation
    def _logits(self, state, x):
        """Eval-mode logits of one member, in slices of ``train.eval_batch_size``."""
        size = self.config.train.eval_batch_size
        apply = lambda xs: self.apply_model(state, xs)
        n = x.shape[0]
        if n <= size:
            return apply(x)
        k = -(-n // size)
        padded = jnp.concatenate([x, jnp.zeros((k * size - n, x.shape[1]), x.dtype)])
        out = jax.lax.map(apply, padded.reshape(k, size, x.shape[1]))
        return out.reshape(k * size, -1)[:n]

    def _evaluate_member(self, state: MemberState, data: dict):
        splits = ["train", "test"] + (["val"] if self.has_val else [])
        scalars = {}
        for split in splits:
            logits = self._logits(state, data[f"x_{split}"])
            labels = data[f"y_{split}"]
            scalars[f"{split}/loss"] = self.loss(logits, labels)
            if self.regression:
                scalars[f"{split}/r2"] = metrics.r2(logits[:, 0], labels)
                continue
            scalars[f"{split}/accuracy"] = metrics.accuracy(logits, labels)
            if split != "train":
                scalars[f"{split}/f1_macro"] = metrics.f1_macro(logits, labels, self.num_classes)
                scalars[f"{split}/auc_roc"] = metrics.auc_roc_ovr(logits, labels, self.num_classes)
        finite_params = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                           for p in jax.tree.leaves(state.params)]))
        newly = ~finite_params & ~state.diverged
        state = state.replace(diverged=state.diverged | newly,
                              diverged_step=jnp.where(newly, state.step, state.diverged_step))
        probe = {}
        if self.config.diagnostics.enabled:
            probe = diagnostics.probe_pass(self, state, data["probe_x"], data["probe_y"])
            diag, dead = diagnostics.diagnose(self, state, probe)
            born_dead = jnp.where(state.has_prev, state.born_dead, diag["output_constant"] > 0)
            state = state.replace(prev_dead=dead, born_dead=born_dead)
            diag["born_dead"] = born_dead.astype(jnp.float32)
            scalars.update(diag)
        state = state.replace(has_prev=jnp.ones((), bool))
        if state.interventions:
            counts = state.interventions["units_reset"]
            for l in range(len(self.widths)):
                scalars[f"units_reset/layer_{l}"] = counts[l]
            scalars["units_reset/all"] = counts.sum()
        scalars["diverged"] = state.diverged.astype(jnp.float32)
        scalars["diverged_step"] = state.diverged_step
        return state, scalars, probe

    def _full_diagnostics(self, state, probe):
        """Every member's costly diagnostics (:func:`diagnostics.diagnose_full`)."""
        return jax.vmap(lambda s, p: diagnostics.diagnose_full(self, s, p))(state, probe)

    def _evaluate_population(self, state, data, full):
        """Every member's evaluation, on the task of the last step taken; the
        costly diagnostics only where ``full`` (a population-level
        ``lax.cond``, so they are skipped, not masked), NaN and empty
        histograms otherwise."""
        task = self.evaluated_task(state.step[0])
        data = self.task_view(data, task)
        with jax.default_matmul_precision("float32"):
            state, scalars, probe = jax.vmap(self._evaluate_member, in_axes=(0, None))(
                state, data)
            if not self.config.diagnostics.enabled:
                return state, scalars, {}
            shapes = jax.eval_shape(self._full_diagnostics, state, probe)

            def skipped(*_):
                return jax.tree.map(
                    lambda x: jnp.full(x.shape, jnp.nan if jnp.issubdtype(x.dtype, jnp.floating)
                                       else 0, x.dtype), shapes)

            costly, hists = jax.lax.cond(full, self._full_diagnostics, skipped, state, probe)
        return state, {**scalars, **costly}, hists

    def _task_scalars(self, state):
        """The evaluated task's index, for non-stationary data."""
        if self.task == "stationary":
            return {}
        return {"task": jnp.broadcast_to(self.evaluated_task(state.step[0]), state.step.shape)}

    def _train_chunk(self, state, data, stop, full):
        # The trip count is traced, so one program serves every chunk length,
        # including 0: the evaluation at step 0 (all members share a step).
        n = stop - state.step[0]

        # The online metrics: each batch's loss and accuracy before its update,
        # summed over the chunk (Dohare et al. 2024 report these for streams).
        dtype = float_dtype()
        zero = jnp.zeros(state.step.shape, dtype)

        def body(_, carry, with_ratio=False):
            s, loss, acc = carry
            s, batch_loss, batch_acc = self._population_step(s, data, with_ratio)
            return s, loss + batch_loss.astype(dtype), acc + batch_acc.astype(dtype)

        # All steps but the last skip the update norms; the last one (if any)
        # records them for update_ratio/layer_L.
        carry = jax.lax.fori_loop(0, jnp.maximum(n - 1, 0), body, (state, zero, zero))
        state, loss, acc = jax.lax.cond(n > 0, lambda c: body(0, c, with_ratio=True),
                                        lambda c: c, carry)
        state, scalars, hists = self._evaluate_population(state, data, full)
        online = {"train/online_loss": loss / n}
        if not self.regression:
            online["train/online_accuracy"] = acc / n
        return state, {**scalars, **online, **self._task_scalars(state)}, hists

    def train_chunk(self, state, data, stop, full=True):
        """Trains every member to step ``stop``, then evaluates them:
        ``(state, scalars, histograms)``. ``full``: whether this evaluation
        computes the costly diagnostics too (:func:`diagnostics.diagnose_full`).
        ``stop`` and ``full`` are traced: one compiled program
        (``chunk_program``) serves every call."""
        return self.chunk_program(state, data, jnp.asarray(stop, jnp.int32),
                                  jnp.asarray(full, bool))

    def evaluate(self, state, data, full=True):
        """Every member's evaluation at its current step, without training:
        ``train_chunk`` with no steps to take (the same compiled program)."""
        step = int(jax.device_get(state.step[0]))  # a host int: the same signature as every chunk
        return self.train_chunk(state, data, step, full)


def device_data(dataset: data_lib.Dataset, probe_idx: np.ndarray) -> dict:
    """The arrays every program reads, on the default device."""
    d = {f"{k}_{s}": jnp.asarray(getattr(dataset, f"{k}_{s}"))
         for s in ("train", "val", "test") for k in ("x", "y")}
    d["probe_x"] = jnp.asarray(dataset.x_train[probe_idx])
    d["probe_y"] = jnp.asarray(dataset.y_train[probe_idx])
    return d
