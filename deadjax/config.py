"""The experiment config: every field declared once, and its validation.

An experiment file (``experiments/NAME.py``) starts from :func:`default_config`
and changes what it needs. :func:`validate` checks a resolved point before
anything compiles or touches the workdir, and raises :class:`ConfigError` with
one sentence naming the field, the value and what is allowed.

Every field is one :class:`deadjax.fields.Field` in :data:`BASE_FIELDS` below,
or in the entry of the remedy that uses it (``interventions.REMEDIES``);
:func:`all_fields` is the whole list. The default config, the per-member
fields, the hyperparameters a member's state holds, the fields added after
workdirs existed and the run-length fields are all derived from it, so adding
a field is one declaration::

    Field("optim.beta2", 0.999, "Adam's second-moment decay",
          check=real(0.0, 1.0, high_open=True), per_member=True, hparam="beta2",
          added="2026-12-01")

Per-member fields (``per_member=True``) are traced arrays with a leading
member axis, so a sweep over them is one population; every other field is
static: points that differ in one are different groups, each its own compiled
program.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from deadjax import activations, data, diagnostics, initializers, interventions, optim, tasks
from deadjax.errors import ConfigError
from deadjax.fields import Field, allowed, boolean, integer, number, one_of, real, text

__all__ = ["ConfigError", "Field", "BASE_FIELDS", "all_fields", "field", "default_config",
           "validate", "get_field", "set_field", "flatten", "per_member_fields",
           "added_fields", "run_length_fields", "recording_fields", "hparam_fields", "PER_MEMBER_FIELDS",
           "ADDED_FIELDS", "RUN_LENGTH_FIELDS", "INTERVENTIONS", "TASKS",
           "REGRESSION_DATASETS"]

# Registries other modules own, re-exported under their old names.
TASKS = tasks.DATA_TASKS
REGRESSION_DATASETS = data.REGRESSION_DATASETS

ADDED_2026_11_27 = "2026-11-27"   # full evaluations, non-stationary tasks, interventions
ADDED_2026_12_01 = "2026-12-01"   # own datasets: arrays, cifar10
ADDED_SHARPNESS = "2026-12-01"    # the sharpness family's settings


def _widths(f, v):
    if not isinstance(v, (tuple, list)) or any(
            isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in v):
        raise ConfigError(f"{f} = {v!r} is not allowed; it must be a "
                          "tuple of positive integers (() is a linear model).")


def _dormant_taus(f, v):
    if not isinstance(v, (tuple, list)) or not v:
        raise ConfigError(f"{f} = {v!r} is not allowed; "
                          "it must be a non-empty tuple of numbers >= 0.")
    for tau in v:
        number(f, tau, low=0.0)


def _families(f, v):
    for fam in v:
        allowed(f, fam, diagnostics.FAMILY_NAMES)


def _method_index(name: str) -> float:
    return float(interventions.names().index(name))


BASE_FIELDS: tuple[Field, ...] = (
    Field("seed", 0, "the member's seed (init, dropout and batch-order keys)",
          integer(low=0), per_member=True),
    # ---------------------------------------------------------------- data
    Field("data.name", "mnist1d", "dataset: " + ", ".join(data.DATASETS) + " (docs/data.md)",
          one_of(data.DATASETS)),
    Field("data.seed", 0, "seed of synthetic data, the validation split, the probe batch "
          "and the test hold-out of arrays", integer(low=0)),
    Field("data.path", "", "folder with downloaded dataset files (mnist, fashion_mnist, "
          "cifar10), or the file of arrays (.npz, .csv, .parquet)", text()),
    Field("data.label_column", "label", "arrays, CSV and parquet files: the column of class "
          "labels (every other numeric column is a feature)",
          text(empty=False, what="(a column name)"), added=ADDED_2026_12_01),
    Field("data.test_fraction", 0.2, "arrays: share of the examples held out as the test "
          "set when the file has no test split (every CSV and parquet file, a .npz without "
          "x_test, y_test)", real(0.0, 1.0, high_open=True), added=ADDED_2026_12_01),
    Field("data.num_train", 1000, "training examples of the random dataset (and the "
          "regression stream's evaluation sample)", integer(low=2)),
    Field("data.num_test", 1000, "test examples of the random dataset", integer(low=1)),
    Field("data.num_features", 784, "input features of the random dataset (input bits of "
          "the regression stream)", integer(low=1)),
    Field("data.num_classes", 10, "classes of the random dataset", integer(low=2)),
    Field("data.val_fraction", 0.1, "share of training data held out for val/* metrics",
          real(0.0, 1.0, high_open=True)),
    Field("data.batch_size", 128, "examples per training batch; 0 means full batch",
          integer(low=0, what="(0 means full batch)")),
    Field("data.order", "shuffle", "batch order: shuffle (epochs without replacement, per "
          "member), sequential (the MNIST-1D recipe), shared (every member sees the same "
          "batches)", one_of(data.ORDERS)),
    Field("data.standardize", True, "per-feature standardisation with training statistics",
          boolean()),
    Field("data.task", "stationary", "non-stationary variant: " + ", ".join(tasks.DATA_TASKS),
          one_of(tasks.DATA_TASKS), added=ADDED_2026_11_27),
    Field("data.task_every", 1000, "training steps per task (non-stationary data)",
          integer(low=1), added=ADDED_2026_11_27),
    Field("data.flipping_bits", 15, "slowly-changing regression: how many input bits flip, "
          "one every data.task_every steps", added=ADDED_2026_11_27),
    # --------------------------------------------------------------- model
    Field("model.widths", (128, 128), "hidden widths; () is logistic regression", _widths),
    Field("model.activation", "relu", "activation (docs/metrics.md, deadjax.activations)",
          lambda f, v: activations.get(v, field=f)),
    Field("model.leaky_slope", 0.01, "negative slope of leaky_relu", real(),
          per_member=True, hparam="leaky_slope"),
    Field("model.kernel_init", "he_normal", "kernel initialiser (deadjax.initializers)",
          lambda f, v: initializers.check_kernel_init(v, field=f)),
    Field("model.bias_init", "zeros", "bias initialiser: zeros, constant, standard, mean_field",
          lambda f, v: initializers.check_bias_init(v, field=f)),
    Field("model.init_mode", "fan_in", "fan of He and LeCun initialisers: fan_in or fan_out",
          one_of(("fan_in", "fan_out"))),
    Field("model.init_gain", 1.0, "std multiplier of every random kernel initialiser",
          real(0.0, low_open=True)),
    Field("model.bias_value", 0.0, "value of constant biases", real()),
    Field("model.sigma_w", 1.0, "mean-field weight scale: W ~ N(0, sigma_w^2 / fan_in)",
          real(0.0), per_member=True, hparam="sigma_w"),
    Field("model.sigma_b", 0.0, "mean-field bias scale: b ~ N(0, sigma_b^2)",
          real(0.0), per_member=True, hparam="sigma_b"),
    Field("model.norm", "none", "normalisation before the activation: none, batch, layer",
          one_of(("none", "batch", "layer"))),
    Field("model.dropout", 0.0, "inverted dropout rate", real(0.0, 1.0, high_open=True),
          per_member=True, hparam="dropout"),
    Field("model.residual", False, "h_l = h_{l-1} + a_l between hidden layers of equal width",
          boolean()),
    # --------------------------------------------------------------- optim
    Field("optim.name", "adam", "optimiser: " + ", ".join(optim.OPTIMIZERS),
          one_of(optim.OPTIMIZERS)),
    Field("optim.learning_rate", 1e-3, "peak learning rate", real(0.0, low_open=True),
          per_member=True, hparam="learning_rate"),
    Field("optim.weight_decay", 0.0, "decoupled for adamw, an L2 penalty in the loss for "
          "the others", real(0.0), per_member=True, hparam="weight_decay"),
    Field("optim.momentum", 0.9, "momentum of momentum, nesterov and rmsprop",
          real(0.0, 1.0, high_open=True), per_member=True, hparam="momentum"),
    Field("optim.schedule", "constant", "learning-rate schedule: " + ", ".join(optim.SCHEDULES),
          one_of(optim.SCHEDULES)),
    Field("optim.warmup_steps", 0, "linear warm-up steps of warmup_cosine", integer(low=0)),
    Field("optim.clip_norm", 0.0, "global-norm gradient clipping when > 0",
          real(0.0, what="(0 means no clipping)")),
    # --------------------------------------------------------------- train
    Field("train.steps", 1000, "training steps; 0 evaluates the initialisation alone",
          integer(low=0), run_length=True),
    Field("train.eval_every", 100, "steps between evaluations", integer(low=1), recording=True),
    Field("train.checkpoint_every", 1000, "steps between checkpoints: one is written at the "
          "first evaluation at or after each multiple, and at the last step", integer(low=1), recording=True),
    Field("train.keep_checkpoints", 3, "checkpoints kept per chunk", integer(low=1), recording=True),
    Field("train.max_population", 256, "members per compiled chunk", integer(low=1), recording=True),
    Field("train.memory_budget_gb", 0.0, "device memory per chunk; chooses the chunk size "
          "when > 0", real(0.0, what="(0 means chunks of train.max_population members)"), recording=True),
    Field("train.loss", "cross_entropy", "cross_entropy; mse for the regression dataset",
          one_of(("cross_entropy", "mse"))),
    Field("train.precision", "highest", "matmul precision of training: highest (float32), "
          "tf32, bf16", one_of(("highest", "tf32", "bf16"))),
    Field("train.eval_batch_size", 4096, "examples per slice of an evaluation's forward pass",
          integer(low=1), recording=True),
    # --------------------------------------------------------- diagnostics
    Field("diagnostics.enabled", True, "diagnostics at every evaluation", boolean(), recording=True),
    Field("diagnostics.probe_size", 1024, "training inputs of the probe batch", integer(low=1)),
    Field("diagnostics.dormant_taus", (0.0, 0.025, 0.1), "thresholds tau of dormant_ratio",
          _dormant_taus, recording=True),
    Field("diagnostics.dead_threshold", 0.0, "a unit is dead where |phi'| <= this times "
          "sup|phi'| on every probe input (0: exact)", real(0.0, 1.0, high_open=True)),
    Field("diagnostics.saturation_threshold", 0.01, "saturated where |phi'| < this times "
          "sup|phi'|", real(0.0, 1.0, low_open=True, high_open=True), recording=True),
    Field("diagnostics.jacobian_probe_size", 8, "probe inputs of the Jacobian singular "
          "values", integer(low=1), recording=True),
    Field("diagnostics.families", diagnostics.DEFAULT_FAMILIES, "diagnostic families "
          "computed (deadjax.diagnostics.FAMILIES; 'sharpness' is off by default)", _families,
          recording=True),
    Field("diagnostics.histogram_bins", 41, "bins of the stored histograms", integer(low=2), recording=True),
    Field("diagnostics.full_every", 20, "percentiles, Jacobian, rank and histograms every "
          "this many evaluations (and at the first and last)", integer(low=1),
          added=ADDED_2026_11_27, recording=True),
    Field("diagnostics.sharpness_batch", 1024, "sharpness: training examples of the fixed "
          "batch its loss is taken on when data.batch_size > 0 (data.sharpness_indices; "
          "full batch: the whole training set)", integer(low=1), added=ADDED_SHARPNESS,
          recording=True),
    Field("diagnostics.sharpness_iters", 100, "sharpness: at most this many Hessian-vector "
          "products (Lanczos steps) per evaluation", integer(low=1),
          added=ADDED_SHARPNESS, recording=True),
    Field("diagnostics.sharpness_tol", 1e-3, "sharpness: Lanczos stops when the Ritz "
          "residual ||Hy - theta y|| <= this times |theta|",
          real(0.0, 1.0, low_open=True, high_open=True), added=ADDED_SHARPNESS, recording=True),
    # ------------------------------------------------------- interventions
    Field("interventions.method", "none", "remedy applied during training (per member): "
          "none or a name of deadjax.interventions.REMEDIES",
          one_of(interventions.names), per_member=True, hparam="intervention",
          encode=_method_index, added=ADDED_2026_11_27),
    Field("interventions.every", 100, "steps between periodic remedies (all but continual "
          "backprop)", integer(low=1), added=ADDED_2026_11_27),
)


def all_fields() -> tuple[Field, ...]:
    """Every config field: :data:`BASE_FIELDS` and each registered remedy's."""
    return BASE_FIELDS + interventions.remedy_fields()


def field(name: str) -> Field:
    """The declaration of one field; KeyError for an unknown name."""
    for f in all_fields():
        if f.name == name:
            return f
    raise KeyError(name)


def per_member_fields() -> tuple[str, ...]:
    return tuple(f.name for f in all_fields() if f.per_member)


def added_fields() -> tuple[str, ...]:
    return tuple(f.name for f in all_fields() if f.added)


def run_length_fields() -> tuple[str, ...]:
    return tuple(f.name for f in all_fields() if f.run_length)


def recording_fields() -> tuple[str, ...]:
    """Fields that change what is recorded, not what is trained (``Field.recording``)."""
    return tuple(f.name for f in all_fields() if f.recording)


def hparam_fields(with_remedies: bool) -> tuple[Field, ...]:
    """The per-member fields a member's state holds in ``MemberState.hparams``.

    The ``interventions.*`` ones are there only in groups where some member
    uses a remedy, so groups without one keep their state and checkpoints."""
    return tuple(f for f in all_fields() if f.hparam is not None
                 and (with_remedies or f.section != "interventions"))


# Derived lists under the names other modules and older code use.
# (Code that must see remedies registered later calls the functions.)
PER_MEMBER_FIELDS = per_member_fields()
ADDED_FIELDS = added_fields()
RUN_LENGTH_FIELDS = run_length_fields()
INTERVENTIONS = interventions.names()


def default_config() -> ml_collections.ConfigDict:
    """Every config field with its default (DESIGN.md, "Config fields")."""
    c = ml_collections.ConfigDict()
    for f in all_fields():
        node = c
        for part in f.section.split(".") if f.section else ():
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        node[f.name.rsplit(".", 1)[-1]] = f.default
    return c


# --------------------------------------------------------------------------
# Access by dotted name
# --------------------------------------------------------------------------

def get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """``config['a.b']`` for a dotted name; KeyError if it does not exist."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets ``config['a.b'] = value``; ConfigError if the field does not exist."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"{dotted} is not a config field; known sections are "
                              f"{', '.join(sorted(k for k in config.keys()))}.")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"{dotted} is not a config field; fields of "
                          f"{'.'.join(parents) or 'the config'} are "
                          f"{', '.join(sorted(node.keys()))}.")
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        with node.unlocked():
            node[leaf] = value
    except TypeError:  # ConfigDict keeps each field's type
        raise ConfigError(f"{dotted} = {value!r} is not allowed; it must be "
                          f"{_kind(old)}, not {_kind(value)}.") from None


def _kind(value) -> str:
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
             tuple: "a tuple", list: "a tuple"}
    return names.get(type(value), f"a {type(value).__name__}")


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf field."""
    out: dict[str, Any] = {}
    for key in config.keys():
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _data_rules(c) -> None:
    d = c.data
    if d.name in REGRESSION_DATASETS:
        number("data.num_features", d.num_features, low=2, integer=True,
               what=f"(input bits of {d.name})")
        number("data.flipping_bits", d.flipping_bits, low=1, high=d.num_features,
               integer=True, what="(at most data.num_features)")
        if d.task != "stationary":
            raise ConfigError(f"data.task = {d.task!r} is not allowed for data.name = "
                              f"{d.name!r}, which changes by itself; use 'stationary'.")
        if d.batch_size == 0:
            raise ConfigError(f"data.batch_size = 0 is not allowed for data.name = "
                              f"{d.name!r}; a stream has no full batch (use 1 or more).")
    if d.name in data.FILE_DATASETS and not d.path:
        raise ConfigError(f"data.path = {d.path!r} is not allowed for data.name = "
                          f"{d.name!r}; give {data.path_wanted(d.name)}.")
    if d.name == "arrays":
        data.arrays_format(d.path)        # the suffix says how the file is read


def _train_rules(c) -> None:
    t = c.train
    wanted = "mse" if c.data.name in REGRESSION_DATASETS else "cross_entropy"
    if t.loss != wanted:
        raise ConfigError(f"train.loss = {t.loss!r} is not allowed for data.name = "
                          f"{c.data.name!r}; its targets need {wanted!r}.")


def _intervention_rules(c) -> None:
    v = c.interventions
    if v.method != "none" and not c.model.widths:
        raise ConfigError(f"interventions.method = {v.method!r} is not allowed for "
                          "model.widths = (); a linear model has no hidden units.")


def _model_rules(c) -> None:
    initializers.check_kernel_init_for(c.model.kernel_init,
                                       activations.canonical(c.model.activation))


# Checks that involve several fields, run after the fields of their section.
SECTION_RULES = {"data": _data_rules, "model": _model_rules, "train": _train_rules,
                 "interventions": _intervention_rules}


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of one resolved point, section by section in
    declaration order (each field's own check, then the section's rules);
    raises ConfigError on the first bad one."""
    sections: dict[str, list[Field]] = {}
    for f in all_fields():
        sections.setdefault(f.section.split(".")[0], []).append(f)
    for section, fields in sections.items():
        for f in fields:
            if f.check is not None:
                f.check(f.name, get_field(config, f.name))
        if section in SECTION_RULES:
            SECTION_RULES[section](config)
