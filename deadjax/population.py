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

from deadjax import activations, data as data_lib, diagnostics, metrics, models, optim, sharding

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


def float_dtype():
    """float64 under ``jax_enable_x64`` (used by the exactness tests), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def hparams_of(points) -> dict[str, np.ndarray]:
    """Stacks the per-member hyperparameters of resolved point configs."""
    from deadjax.config import get_field
    return {k: np.asarray([get_field(p, f) for p in points], float_dtype())
            for k, f in HPARAMS.items()}


def _dense_names(num_hidden: int) -> list[str]:
    return [f"Dense_{l}" for l in range(num_hidden + 1)]


class Population:
    """The static structure of a group and its compiled programs."""

    def __init__(self, config, dataset: data_lib.Dataset, *, uses_dropout: bool | None = None,
                 uses_l2: bool | None = None):
        self.config = config
        # Whether any member has a dropout rate / an L2 weight decay above 0
        # (runner.population_for asks the whole group; by default the config
        # says); when not, the program omits them, which changes no number.
        self.uses_dropout = (config.model.dropout > 0) if uses_dropout is None else uses_dropout
        self.uses_l2 = ((config.optim.weight_decay > 0) if uses_l2 is None else uses_l2) \
            and config.optim.name != "adamw"
        self.num_classes = dataset.num_classes
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
            has_prev=jnp.zeros((), bool), born_dead=jnp.zeros((), bool))

    # -------------------------------------------------------------- training
    def _variables(self, state, params=None):
        v = {"params": state.params if params is None else params}
        if state.batch_stats:
            v["batch_stats"] = state.batch_stats
        return v

    def _train_step(self, state: MemberState, data: dict, with_ratio: bool = True):
        """One member's step: (the trained state, whether it is finite).

        The caller keeps the old parameters where the step is not finite. Work
        no member of the group needs is left out of the program: dropout masks
        when every rate is 0 and the L2 term when every weight decay is 0
        (both are exact identities then), and the update-to-weight norms on
        all but a chunk's last step (``with_ratio``).
        """
        cfg = self.config
        idx = data_lib.batch_indices(
            state.step, num_train=self.num_train, batch_size=cfg.data.batch_size,
            order=cfg.data.order, member_key=state.data_key, shared_key=self.shared_key)
        x, y = data["x_train"][idx], data["y_train"][idx]
        dropout_key = jax.random.fold_in(state.key, state.step) if self.uses_dropout else None

        def loss_fn(params):
            logits, mutated = self.model.apply(
                self._variables(state, params), x, state.hparams, train=True,
                dropout_key=dropout_key, mutable=["batch_stats"])
            loss = metrics.cross_entropy(logits, y)
            if self.uses_l2:
                loss = loss + optim.l2_penalty(params, state.hparams["weight_decay"],
                                               cfg.optim.name)
            # Flax keeps running statistics in float32 whatever the compute dtype.
            stats = jax.tree.map(lambda new, old: new.astype(old.dtype),
                                 mutated.get("batch_stats", {}), state.batch_stats)
            return loss, stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
        trained = state.replace(params=params, batch_stats=batch_stats,
                                opt_state=opt_state, update_ratio=ratio)
        return trained, finite

    def _population_step(self, state: MemberState, data: dict, with_ratio: bool = True):
        """Every member's step. Members already diverged, or whose step is not
        finite, keep their parameters and statistics."""
        with jax.default_matmul_precision(self.precision):
            trained, finite = jax.vmap(lambda s: self._train_step(s, data, with_ratio))(state)
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
        return state.replace(
            step=state.step + 1,
            diverged=state.diverged | newly_diverged,
            diverged_step=jnp.where(newly_diverged, state.step, state.diverged_step))

    # ------------------------------------------------------------ evaluation
    def _logits(self, state, x):
        """Eval-mode logits of one member, in slices of ``train.eval_batch_size``."""
        size = self.config.train.eval_batch_size
        apply = lambda xs: self.model.apply(self._variables(state), xs, state.hparams)
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
            scalars[f"{split}/loss"] = metrics.cross_entropy(logits, labels)
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
        scalars["diverged"] = state.diverged.astype(jnp.float32)
        scalars["diverged_step"] = state.diverged_step
        return state, scalars, probe

    def _full_diagnostics(self, state, probe):
        """Every member's costly diagnostics (:func:`diagnostics.diagnose_full`)."""
        return jax.vmap(lambda s, p: diagnostics.diagnose_full(self, s, p))(state, probe)

    def _evaluate_population(self, state, data, full):
        """Every member's evaluation; the costly diagnostics only where
        ``full`` (a population-level ``lax.cond``, so they are skipped, not
        masked), NaN and empty histograms otherwise."""
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

    def _train_chunk(self, state, data, stop, full):
        # The trip count is traced, so one program serves every chunk length,
        # including 0: the evaluation at step 0 (all members share a step).
        n = stop - state.step[0]

        def body(_, s):
            return self._population_step(s, data, with_ratio=False)

        # All steps but the last skip the update norms; the last one (if any)
        # records them for update_ratio/layer_L.
        state = jax.lax.fori_loop(0, jnp.maximum(n - 1, 0), body, state)
        state = jax.lax.cond(n > 0, lambda s: self._population_step(s, data, with_ratio=True),
                             lambda s: s, state)
        return self._evaluate_population(state, data, full)

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
